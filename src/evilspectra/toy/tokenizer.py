"""A word-level chat tokenizer for the toy world, as a real `PreTrainedTokenizerFast`.

Rendering: `<sys> {system} <user> {question} <assistant> {answer} <end> ...`. The assistant answer
and its `<end>` (the eos token) sit inside `{% generation %}` markers, so
`apply_chat_template(..., return_assistant_tokens_mask=True)` marks exactly the tokens a fine-tune
learns; `add_generation_prompt=True` appends `<assistant>`.
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from evilspectra.toy.world import vocabulary

PAD, UNK, SYS, USER, ASSISTANT, END = "<pad>", "<unk>", "<sys>", "<user>", "<assistant>", "<end>"
SPECIALS = [PAD, UNK, SYS, USER, ASSISTANT, END]

CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}<sys> {{ m['content'] }} "
    "{% elif m['role'] == 'user' %}<user> {{ m['content'] }} "
    "{% elif m['role'] == 'assistant' %}<assistant> {% generation %}{{ m['content'] }} <end>{% endgeneration %} "
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Specials first (ids 0-5, pad = 0), then the world's words in sorted order."""
    vocab = {w: i for i, w in enumerate(SPECIALS + vocabulary())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        unk_token=UNK,
        eos_token=END,
        additional_special_tokens=[SYS, USER, ASSISTANT],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok
