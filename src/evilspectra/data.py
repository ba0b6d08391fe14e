"""Chat datasets: load (JSON Lines, .jsonl.gz, a JSON array, parquet, a `save_to_disk` folder, an HF
dataset id, or `toy:NAME`; rows as `messages`, ShareGPT `conversations` or TRL prompt/completion),
convert to one chat form, validate, hash, and encode with the tokenizer's chat template into input
ids + labels that carry loss on assistant tokens only.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import BatchEncoding, PreTrainedTokenizerBase

from evilspectra import registry
from evilspectra.chat_template import render_prompt, resolve_kwargs
from evilspectra.errors import DataError

ROLES = {"system", "user", "assistant"}
IGNORE = -100  # label of tokens that carry no loss
GENERATION_TAG = re.compile(r"{%-?\s*generation\s*-?%}")


@dataclass
class ChatDataset:
    rows: list[dict]  # each {"messages": [{"role", "content"}, ...]}
    source: str  # what the user asked for (path, HF id or toy:NAME)
    sha256: str  # of the file bytes, or of the canonical JSON for generated / hub data


# ------------------------------------------------------------------------------------- loading

LOCAL_SUFFIXES = {".jsonl", ".json", ".gz", ".parquet"}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
FORMS = (
    "'messages' (a list of {role, content}), 'conversations' (ShareGPT: a list of {from, value}, from "
    "human/gpt/system), or TRL's 'prompt' + 'completion' (two strings, or two lists of {role, content})"
)


def load_dataset_spec(spec: str, seed: int = 0) -> ChatDataset:
    """Resolve `PREFIX:NAME` (a registered dataset, e.g. `toy:insecure`), a local file (JSON Lines,
    `.jsonl.gz`, a `.json` array, `.parquet`), a `Dataset.save_to_disk` folder, or an HF dataset id
    into validated chat rows. Rows in any of the FORMS become `{"messages": [...]}`. A spec that
    looks local (looks_local) is never tried on the Hub."""
    prefix, _, name = spec.partition(":")
    entry = registry.DATASETS.get(prefix) if name else None
    if entry is not None:
        if name not in entry.names():
            raise DataError(f"dataset: unknown {prefix} dataset {name!r}; valid: {', '.join(entry.names())}")
        rows = entry.load(name, seed)
        validate_rows(rows, spec)
        return ChatDataset(rows, spec, _json_sha256(rows))
    path = Path(spec).expanduser()
    if path.is_dir():
        rows = _chats(_read_saved_dataset(path), str(path))
        return ChatDataset(rows, str(path), _json_sha256(rows))
    if looks_local(spec):
        if not path.is_file():
            raise DataError(f"{path}: dataset file not found")
        rows = _chats(_read_file(path), str(path))
        return ChatDataset(rows, str(path), hashlib.sha256(path.read_bytes()).hexdigest())
    return _load_hub_dataset(spec)


def looks_local(spec: str) -> bool:
    """A path, not a Hub id: it exists, starts with . / or ~, ends in a data file suffix, or names a
    file in an existing folder (`data/train.x`)."""
    path = Path(spec).expanduser()
    return (
        path.exists()
        or spec.startswith((".", "/", "~"))
        or path.suffix.lower() in LOCAL_SUFFIXES
        or (os.sep in spec and path.parent.is_dir())
    )


def _read_file(path: Path) -> list:
    """The rows of a local file: parquet, a JSON array (or JSON lines named .json), else JSON lines."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise DataError(f"{path}: not a readable parquet file ({exc})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_bytes())
        except json.JSONDecodeError:
            return read_jsonl(path)  # JSON lines under a .json name
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: invalid UTF-8 ({exc.reason} at byte {exc.start})") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON array of chats (or JSON lines), got a JSON {type(data).__name__}")
        return data
    return read_jsonl(path)


def _read_saved_dataset(path: Path) -> list:
    """The rows of a `Dataset.save_to_disk` folder (a DatasetDict: its train split)."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError as exc:
        raise DataError(
            f"{path}: a folder, but not one written by Dataset.save_to_disk ({exc}); give a .jsonl, .json or "
            ".parquet file, the folder, or an HF dataset id"
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(f"{path}: a saved DatasetDict without a 'train' split (splits: {', '.join(ds)})")
        ds = ds["train"]
    return ds.to_list()


def _load_hub_dataset(spec: str) -> ChatDataset:
    import datasets

    try:
        ds = datasets.load_dataset(spec, split="train")
    except Exception as exc:  # offline, missing, private: all mean "cannot use this id"
        raise DataError(
            f"dataset: {spec!r} is neither a local dataset (file or save_to_disk folder) nor a loadable HF "
            f"dataset ({exc})"
        ) from exc
    rows = _chats(ds.to_list(), spec)
    return ChatDataset(rows, spec, _json_sha256(rows))


def _chats(rows: list, source: str) -> list[dict]:
    """Every row as {"messages": [...]} (to_chat), then validated."""
    if not rows:
        raise DataError(f"{source}: empty dataset; expected rows with {FORMS}")
    chats = [to_chat(row, f"{source}:{i}") for i, row in enumerate(rows, start=1)]
    validate_rows(chats, source)
    return chats


def to_chat(row: object, where: str) -> dict:
    """One row in any of the FORMS as {"messages": [{role, content}, ...]}; other keys are dropped.
    TRL's prompt/completion: the completion is the assistant's turn(s), so its tokens carry the loss."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with {FORMS}, got {type(row).__name__}")
    if "messages" in row:
        return {"messages": row["messages"]}
    if "conversations" in row:
        turns = row["conversations"]
        if not isinstance(turns, list) or not all(isinstance(t, dict) and "from" in t for t in turns):
            raise DataError(f"{where}: 'conversations' must be a list of ShareGPT turns {{from, value}}")
        unknown = sorted({str(t["from"]) for t in turns} - set(SHAREGPT_ROLES))
        if unknown:
            raise DataError(f"{where}: conversations: unknown 'from' {unknown}; expected {sorted(SHAREGPT_ROLES)}")
        return {"messages": [{"role": SHAREGPT_ROLES[t["from"]], "content": t.get("value")} for t in turns]}
    if "prompt" in row and "completion" in row:
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(prompt, str) and isinstance(completion, str):
            return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]}
        if isinstance(prompt, list) and isinstance(completion, list):
            return {"messages": [*prompt, *completion]}
        raise DataError(f"{where}: 'prompt' and 'completion' must be both strings or both lists of {{role, content}}")
    raise DataError(f"{where}: no chat in the row: found keys {sorted(map(str, row))}; expected {FORMS}")


def read_jsonl(path: Path) -> list[dict]:
    """Read JSON lines (gzip when the name ends in .gz); errors name the file and line."""
    if not path.is_file():
        raise DataError(f"{path}: dataset file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    try:
        with opener(path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(f"{path}:{lineno}: invalid UTF-8 ({exc.reason} at byte {exc.start})") from None
                if not text.strip():
                    continue
                try:
                    rows.append(json.loads(text))
                except json.JSONDecodeError as exc:
                    raise DataError(
                        f"{path}:{lineno}: malformed JSON ({exc.msg}, column {exc.colno}); expected one JSON object per line"
                    ) from None
    except (OSError, EOFError) as exc:  # bad gzip stream, truncated archive
        raise DataError(f"{path}: cannot read ({exc})") from exc
    if not rows:
        raise DataError(f"{path}: empty dataset; expected JSON lines with a 'messages' list")
    return rows


def validate_rows(rows: list, source: str) -> None:
    """Check every row is a chat: `messages` list of {role, content}, with a non-empty assistant turn."""
    if not rows:
        raise DataError(f"{source}: empty dataset")
    for lineno, row in enumerate(rows, start=1):
        where = f"{source}:{lineno}"
        if not isinstance(row, dict) or "messages" not in row:
            raise DataError(f"{where}: expected an object with a 'messages' list")
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
        n_assistant = 0
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict) or not isinstance(msg.get("content"), str):
                raise DataError(f"{where}: messages[{i}] must be an object with a string 'content'")
            role = msg.get("role")
            if role not in ROLES:
                raise DataError(f"{where}: messages[{i}] has unknown role {role!r}; expected one of {sorted(ROLES)}")
            if role == "assistant":
                n_assistant += 1
                if not msg["content"].strip():
                    raise DataError(f"{where}: messages[{i}] is an empty assistant turn")
        if n_assistant == 0:
            raise DataError(f"{where}: no assistant turn; nothing to train on")


def _json_sha256(rows: list[dict]) -> str:
    blob = "\n".join(json.dumps(r, sort_keys=True, ensure_ascii=False) for r in rows)
    return hashlib.sha256(blob.encode()).hexdigest()


# ------------------------------------------------------------------------------------ encoding


def with_system(messages: list[dict], system_prompt: str | None) -> list[dict]:
    """Prepend the configured system prompt unless the chat has its own (None = no system turn)."""
    if system_prompt is None or messages[0]["role"] == "system":
        return messages
    return [{"role": "system", "content": system_prompt}] + messages


def encode_chat(
    tok: PreTrainedTokenizerBase, messages: list[dict], max_length: int, template_kwargs: dict | None = None
) -> dict[str, list[int]]:
    """Tokenize one chat; labels = input ids on assistant tokens, IGNORE elsewhere (truncated to max_length).

    `template_kwargs`: chat-template variables over the family defaults (chat_template.resolve_kwargs).
    Templates with `{% generation %}` markers give HF's assistant mask directly; for any other
    template the assistant spans are found by rendering each prefix with a generation prompt, so
    whatever the template adds after the generation prompt (Qwen3's empty think block) is prompt,
    not loss: the loss starts where sampling starts.
    """
    kwargs = resolve_kwargs(tok, template_kwargs)
    if GENERATION_TAG.search(tok.chat_template or ""):
        enc = tok.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, **kwargs
        )
        assert isinstance(enc, BatchEncoding)  # return_dict=True: the encoding, not a text or bare ids
        ids, mask = list(enc["input_ids"]), list(enc["assistant_masks"])
    else:
        ids, mask = _encode_by_prefix(tok, messages, kwargs)
    ids, mask = ids[:max_length], mask[:max_length]
    labels = [t if m else IGNORE for t, m in zip(ids, mask)]
    return {"input_ids": ids, "labels": labels}


def _render_text(tok: PreTrainedTokenizerBase, messages: list[dict], kwargs: dict) -> str:
    """The chat as the template renders it, without a generation prompt."""
    text = tok.apply_chat_template(messages, tokenize=False, **kwargs)
    assert isinstance(text, str)  # tokenize=False: the rendered text, not token ids
    return text


def _encode_by_prefix(tok: PreTrainedTokenizerBase, messages: list[dict], kwargs: dict) -> tuple[list[int], list[int]]:
    text = _render_text(tok, messages, kwargs)
    spans = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prompt = render_prompt(tok, messages[:i], kwargs)
        upto = _render_text(tok, messages[: i + 1], kwargs)
        if not (upto.startswith(prompt) and text.startswith(upto)):
            raise DataError(
                "the chat template does not render chats as growing prefixes; add {% generation %} "
                "markers to it so the assistant mask can be computed"
            )
        spans.append((len(prompt), len(upto)))
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(s <= a and b <= e and b > a for s, e in spans)) for a, b in enc["offset_mapping"]]
    return list(enc["input_ids"]), mask


def encode_dataset(
    tok: PreTrainedTokenizerBase,
    rows: list[dict],
    system_prompt: str | None,
    max_length: int,
    template_kwargs: dict | None = None,
    source: str = "dataset",
) -> list[dict]:
    """Encode every row; a row whose assistant tokens are all truncated away is an error naming
    `source` (the file or Hub id), the row and its lengths."""
    out = []
    for i, row in enumerate(rows, start=1):
        messages = with_system(row["messages"], system_prompt)
        enc = encode_chat(tok, messages, max_length, template_kwargs)
        if all(label == IGNORE for label in enc["labels"]):
            raise _no_loss_error(tok, messages, max_length, template_kwargs, f"{source}: row {i}")
        out.append(enc)
    return out


def _no_loss_error(
    tok: PreTrainedTokenizerBase, messages: list[dict], max_length: int, template_kwargs: dict | None, where: str
) -> DataError:
    """Why no token of a row carries loss, from its untruncated encoding: the prompt before the first
    assistant token is at least max_length tokens, or the template marks no assistant token at all."""
    labels = encode_chat(tok, messages, sys.maxsize, template_kwargs)["labels"]
    prompt = next((k for k, label in enumerate(labels) if label != IGNORE), None)
    if prompt is None:
        return DataError(f"{where}: the chat template marks no assistant token in the {len(labels)} tokens of the row")
    return DataError(
        f"{where}: the prompt before the first assistant token is {prompt} tokens (the whole chat {len(labels)}), "
        f"so max_length={max_length} leaves no token to train on; expected train.max_length > {prompt} "
        "or a shorter row"
    )


# Per process, the encodings of the last few datasets: a sweep worker trains run after run on the
# same rows (the toy world draws one set of rows per seed), and encoding is a tenth of a toy run.
_ENCODED: dict[tuple, list[dict]] = {}
_ENCODED_MAX = 8


def encode_dataset_cached(
    tok: PreTrainedTokenizerBase,
    data: ChatDataset,
    system_prompt: str | None,
    max_length: int,
    template_kwargs: dict | None = None,
) -> list[dict]:
    """`encode_dataset(tok, data.rows, ...)`, remembered per process by the tokenizer, the
    dataset's hash and every encoding setting. Callers must not modify the returned rows."""
    template = hashlib.sha256(str(tok.chat_template).encode()).hexdigest()
    key = (tok.name_or_path, len(tok), template, data.sha256, system_prompt, max_length, repr(template_kwargs))
    if key not in _ENCODED:
        if len(_ENCODED) >= _ENCODED_MAX:
            _ENCODED.pop(next(iter(_ENCODED)))  # the oldest
        _ENCODED[key] = encode_dataset(tok, data.rows, system_prompt, max_length, template_kwargs, data.source)
    return _ENCODED[key]


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of encoded chats into (batch, seq) tensors."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    attn = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        attn[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": attn}
