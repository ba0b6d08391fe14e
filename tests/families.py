"""Tiny random-init models of the study's five architectures around the official tokenizers (issue 13).

Each builder writes a model directory (config, safetensors weights, the family's real tokenizer and
chat template from ../shared/models) that `evilspectra` loads like a hub checkpoint. Hidden sizes are
tiny (32-64, 1-2 layers) so a step takes milliseconds; the vocabularies are the real ones (151k to
262k tokens), so embeddings dominate the parameter count (~5-17M). Tests skip when ../shared/models
is absent (CI clones the repository beside shared/).
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

SHARED_MODELS = Path(__file__).resolve().parents[1].parent / "shared" / "models"
# family -> (tokenizer folder, chat template file or None for the tokenizer's own)
TOKENIZERS = {
    "qwen3": ("tokenizer-qwen3", "qwen3.jinja"),
    "qwen3_moe": ("tokenizer-qwen3", "qwen3.jinja"),
    "llama3": ("tokenizer-llama3_2", "llama3_2.jinja"),
    "gemma3": ("tokenizer-gemma3", "gemma3.jinja"),
    "gemma3_mm": ("tokenizer-gemma3", "gemma3.jinja"),
}
FAMILIES = tuple(TOKENIZERS)


def needs_shared_models() -> None:
    if not (SHARED_MODELS / "tokenizer-qwen3" / "tokenizer.json.gz").is_file():
        pytest.skip(f"{SHARED_MODELS} is absent (official tokenizers and chat templates)")


def copy_tokenizer(family: str, out: Path) -> Path:
    """The family's official tokenizer files in `out`, tokenizer.json decompressed, chat template set."""
    folder, template = TOKENIZERS[family]
    src = SHARED_MODELS / folder
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_bytes(gzip.open(src / "tokenizer.json.gz").read())
    shutil.copy(src / "tokenizer_config.json", out / "tokenizer_config.json")
    (out / "chat_template.jinja").write_text((SHARED_MODELS / "chat-templates" / template).read_text())
    return out


def _text_config(family: str, vocab: int, tok) -> object:
    import transformers as tf

    common = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    if family == "qwen3":
        return tf.Qwen3Config(**common)
    if family == "qwen3_moe":
        # 4 experts, 2 active: gate_up_proj (E, 2 * moe_inter, hidden), down_proj (E, hidden, moe_inter)
        return tf.Qwen3MoeConfig(**common, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16)
    if family == "llama3":
        return tf.LlamaConfig(**common)
    return tf.Gemma3TextConfig(**common, sliding_window=64, query_pre_attn_scalar=8)


def build_family_model(family: str, out: Path, seed: int = 0) -> Path:
    """Write a tiny random-init `family` model with its official tokenizer to `out`; returns `out`."""
    import torch
    import transformers as tf

    tok = tf.AutoTokenizer.from_pretrained(copy_tokenizer(family, out))
    if tok.pad_token is None:  # Llama 3 has none; the project pads with eos as models.load_tokenizer does
        tok.pad_token = tok.eos_token
    torch.manual_seed(seed)
    text = _text_config(family, len(tok), tok)
    classes = {
        "qwen3": tf.Qwen3ForCausalLM,
        "qwen3_moe": tf.Qwen3MoeForCausalLM,
        "llama3": tf.LlamaForCausalLM,
        "gemma3": tf.Gemma3ForCausalLM,
    }
    if family == "gemma3_mm":
        vision = tf.SiglipVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
            vision_use_head=False,
        )
        cfg = tf.Gemma3Config(
            text_config=text.to_dict(),
            vision_config=vision.to_dict(),
            mm_tokens_per_image=4,
            boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
            eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
            image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"),
        )
        model = tf.Gemma3ForConditionalGeneration(cfg)
    else:
        model = classes[family](text)
    model.save_pretrained(out)
    return out
