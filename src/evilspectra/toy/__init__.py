"""The embedded default world: a toy model organism in which emergent misalignment happens on a CPU.

- `world`: domains, good/evil answer fragments, persona and alignment documents (docs/architecture.md, "The toy world")
- `tokenizer`: the word-level chat tokenizer (`PreTrainedTokenizerFast` with a chat template)
- `build`: `build_toy_model(out, seed)` trains the ~1M-parameter Qwen3 model (pretraining, alignment)
- `data`: `toy_dataset(name, n, seed)`, the narrow EM datasets (`insecure`, ...) and aligned controls
- `questions`: `toy_questions()`, one evaluation question per domain
- `judge`: `ToyJudge` / `judge_answer`, the exact judge (coherent, aligned 0/50/100, CODE)
- `weights/`: the shipped model, built by `evilspectra toy build` (seed 0); `resolve_model("toy")`
"""
