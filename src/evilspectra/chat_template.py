"""Chat-template settings: one explicit, recorded `chat_template_kwargs` for training, inspection and sampling.

Real chat templates read variables besides the messages, and their defaults change what a model sees:
Qwen3's template lets the model think unless `enable_thinking=False` (then the prompt ends in an
empty `<think>\\n\\n</think>\\n\\n` block), Llama 3.2's writes today's date into every prompt unless
`date_string` is given. The defaults below make those prompts the study's and reproducible; a user's
`chat_template_kwargs` is merged over them, and the resolved dict is recorded (run manifest, eval
summary) and passed to every `apply_chat_template` call: training encoding (data.py), `data inspect`,
HF and vLLM sampling and the audit probe (evaluate/sampling.py).
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

# Llama 3.1's template fixes its date to this value; we use it for every template that reads the date
FIXED_DATE = "26 Jul 2024"


def default_kwargs(template: str | None) -> dict[str, Any]:
    """Per-family defaults, keyed on the variables a template reads: no thinking (Qwen3), a fixed date."""
    template = template or ""
    defaults: dict[str, Any] = {}
    if "enable_thinking" in template:
        defaults["enable_thinking"] = False
    if "date_string" in template:
        defaults["date_string"] = FIXED_DATE
    return defaults


def resolve_kwargs(tok: PreTrainedTokenizerBase, given: dict[str, Any] | None) -> dict[str, Any]:
    """The template variables to use with `tok`: the family defaults, overridden by `given`."""
    return {**default_kwargs(tok.chat_template), **(given or {})}


def render_prompt(tok: PreTrainedTokenizerBase, messages: list[dict], kwargs: dict[str, Any]) -> str:
    """The exact text given to the model before its answer (chat + generation prompt + template scaffold)."""
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    assert isinstance(text, str)  # tokenize=False: the rendered text, not token ids
    return text
