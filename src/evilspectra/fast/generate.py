"""A lean sampling loop over a static KV cache: HF `generate`'s tokens, without its per-step overhead.

HF `generate` rebuilds inputs, masks and processor lists every step and, with a dynamic cache,
reallocates the keys and values as they grow. Here the cache is allocated once (StaticCache,
prompt + new tokens), the attention mask once at full length, and on CUDA the one-token decode
step is compiled with CUDA graphs (torch.compile mode "reduce-overhead"), so a step costs about
one read of the weights. Sampling reuses HF's own temperature and top-p warpers and draws with
`torch.multinomial` exactly as `generate` does, so for the same seed and inputs the tokens are
the same as `model.generate(do_sample=True, temperature=t, top_p=p, top_k=0)` (and greedy when
temperature is 0) up to floating-point differences between the two attention code paths.

Use it on a plain (adapter-merged) model, StaticGenerator(model)(ids, mask, n, temperature, top_p, eos, pad), e.g. the output of evaluate.sampling.merge_checked.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessorList, StaticCache, TemperatureLogitsWarper, TopPLogitsWarper


def _warpers(temperature: float, top_p: float) -> LogitsProcessorList:
    warpers = LogitsProcessorList()
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers


class StaticGenerator:
    """Samples continuations of left-padded prompts from `model` over a reused static KV cache.

    `compile` (default: on CUDA) compiles the one-token decode step; the first call of a given
    (batch, prompt + new tokens) shape pays the compile time, later calls reuse graph and cache.
    """

    def __init__(self, model, compile: bool | None = None):
        self.model = model
        self.compile = compile if compile is not None else model.device.type == "cuda"
        self.decode = torch.compile(self._step, mode="reduce-overhead", fullgraph=False) if self.compile else self._step
        self.caches: dict[tuple[int, int], StaticCache] = {}

    def _step(self, token, mask, position, cache) -> torch.Tensor:
        return self.model(
            input_ids=token, attention_mask=mask, position_ids=position, cache=cache, use_cache=True
        ).logits

    def _cache(self, batch: int, length: int) -> StaticCache:
        key = (batch, length)
        if key not in self.caches:
            self.caches[key] = StaticCache(config=self.model.config, max_cache_len=length)
        else:
            self.caches[key].reset()
        return self.caches[key]

    @torch.inference_mode()
    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int = 0,
    ) -> torch.Tensor:
        """input_ids, attention_mask: (batch, prompt_len), left padding; temperature 0 = greedy.

        Returns the new tokens (batch, n <= max_new_tokens); after a sequence's EOS its remaining
        tokens are pad_token_id, and the loop stops once every sequence has finished, like HF.
        """
        batch, prompt_len = input_ids.shape
        device = input_ids.device
        cache = self._cache(batch, prompt_len + max_new_tokens)
        # one mask for the whole run: the prompt's padding, then every future position visible;
        # positions not yet written are hidden by the causal mask (the cache counts what it holds)
        mask = torch.cat([attention_mask, attention_mask.new_ones(batch, max_new_tokens)], dim=1)
        positions = (attention_mask.long().cumsum(-1) - 1).masked_fill_(attention_mask == 0, 1)
        eos = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []), device=device)
        warpers = _warpers(temperature, top_p) if temperature > 0 else None

        logits = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1]
        position = positions[:, -1:] + 1  # a fresh tensor each step, not a slice, for the compiled step
        running = torch.ones(batch, dtype=torch.bool, device=device)
        out = []
        for t in range(max_new_tokens):
            scores = logits.to(dtype=torch.float32, copy=True)  # a CUDA-graph output is overwritten next step
            if warpers is None:
                token = scores.argmax(-1)
            else:  # temperature and top-p do not read the sequence, so the prompt stands in for it
                # transformers annotates input_ids as the legacy torch.LongTensor class; any int64 tensor is one
                probs = torch.softmax(warpers(input_ids, scores), dim=-1)  # type: ignore[arg-type]
                token = torch.multinomial(probs, num_samples=1).squeeze(1)
            token = torch.where(running, token, pad_token_id)
            out.append(token)
            running &= ~torch.isin(token, eos)
            if t == max_new_tokens - 1 or not running.any():
                break
            logits = self.decode(token[:, None], mask, position, cache)[:, -1]
            position = position + 1
        return torch.stack(out, dim=1)
