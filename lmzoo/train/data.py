"""Training data: the formats users have, turned into (ids, targets) examples and packed rows.

Formats (one JSON object per line in .jsonl, or a JSON array in .json; plain text in .txt):

    alpaca    {"instruction", "input"?, "output", "system"?}
    sharegpt  {"conversations": [{"from": "system"|"human"|"gpt", "value"}, ...]}
    messages  {"messages": [{"role": "system"|"user"|"assistant", "content"}, ...]}   (OpenAI)
    text      {"text"} per line, or a .txt file (documents separated by blank lines)
    dpo       {"prompt", "chosen", "rejected"} (strings, or chosen/rejected message lists)

A conversation is rendered with the model's own chat template, exactly as at inference
(Tokenizer.encode_chat_for_training), and only the assistant's tokens (with their end-of-turn token)
are targets. Models without a template get Alpaca's prompt (Taori et al. 2023, stanford_alpaca
train.py). Targets are stored already shifted, so packed examples never predict across a boundary:

    ids       <p> <p> <p> <a1> <a2> <eos>           targets[t] = the token to predict after ids[t]
    targets    -   -  <a1> <a2> <eos>  -             (- = IGNORE: no loss)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from lmzoo.errors import ConfigError, LmzooError

IGNORE = -100
Format = Literal["auto", "alpaca", "sharegpt", "messages", "text", "dpo"]
FORMATS = ("alpaca", "sharegpt", "messages", "text", "dpo")

ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
_SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                   "assistant": "assistant", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}


class DataError(LmzooError):
    """A data file or record that cannot be used; the message names file:line and the field."""


@dataclass
class Record:
    where: str        # "file:line"
    data: Any


def read_records(path) -> list[Record]:
    """Records of a .jsonl / .json / .txt file, each with its file:line."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"data file {str(p)!r} does not exist")
    if p.is_dir():
        raise DataError(f"{p} is a directory; expected a .jsonl, .json or .txt file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{p} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise DataError(f"{p} is empty; expected training records")
    if p.suffix.lower() == ".txt":
        out, start, buf = [], 1, []
        for n, line in enumerate(text.splitlines() + [""], 1):
            if line.strip():
                if not buf:
                    start = n
                buf.append(line)
            elif buf:
                out.append(Record(f"{p}:{start}", {"text": "\n".join(buf)}))
                buf = []
        return out
    if p.suffix.lower() == ".json" or text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}:{e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(data, list):
            raise DataError(f"{p}: expected a JSON array of records, got {type(data).__name__}")
        return [Record(f"{p}:record {i}", r) for i, r in enumerate(data, 1)]
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(Record(f"{p}:{n}", json.loads(line)))
        except json.JSONDecodeError as e:
            out.append(Record(f"{p}:{n}", DataError(f"{p}:{n}: not valid JSON ({e.msg})")))
    return out


def detect_format(records: list[Record]) -> str:
    """The format of the first well-formed record (see the module docstring)."""
    for r in records:
        d = r.data
        if not isinstance(d, dict):
            continue
        if "chosen" in d and "rejected" in d:
            return "dpo"
        if "messages" in d:
            return "messages"
        if "conversations" in d:
            return "sharegpt"
        if "instruction" in d:
            return "alpaca"
        if "text" in d:
            return "text"
        raise DataError(f"{r.where}: cannot tell the format from fields {sorted(d)}; expected one of "
                        "instruction/output (alpaca), conversations (sharegpt), messages, text, "
                        "prompt/chosen/rejected (dpo)")
    raise DataError("no record is a JSON object; cannot tell the data format")


def _field(r: Record, key: str, kind=str, optional=False):
    d = r.data
    if key not in d or d[key] is None:
        if optional:
            return None
        raise DataError(f"{r.where}: record has no {key!r} field (fields: {sorted(d)})")
    v = d[key]
    if not isinstance(v, kind):
        raise DataError(f"{r.where}: field {key!r} is {type(v).__name__}; expected {kind.__name__}")
    return v


def _check_messages(r: Record, msgs, key: str) -> list[dict]:
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f"{r.where}: field {key!r} must be a non-empty list of messages")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool") \
                or not isinstance(m.get("content"), str):
            raise DataError(f"{r.where}: {key}[{i}] must be {{'role': system|user|assistant|tool, "
                            f"'content': str}}, got {m!r:.80}")
    if not any(m["role"] == "assistant" for m in msgs):
        raise DataError(f"{r.where}: {key} has no assistant message to learn from")
    return msgs


def to_messages(r: Record, fmt: str) -> list[dict]:
    """An SFT record as chat messages."""
    d = r.data
    if isinstance(d, Exception):
        raise d
    if not isinstance(d, dict):
        raise DataError(f"{r.where}: record is {type(d).__name__}; expected a JSON object")
    if fmt == "messages":
        return _check_messages(r, d.get("messages"), "messages")
    if fmt == "sharegpt":
        conv = _field(r, "conversations", list)
        msgs = []
        for i, t in enumerate(conv):
            if not isinstance(t, dict) or t.get("from") not in _SHAREGPT_ROLES or not isinstance(t.get("value"), str):
                raise DataError(f"{r.where}: conversations[{i}] must be {{'from': human|gpt|system, 'value': str}}, "
                                f"got {t!r:.80}")
            msgs.append({"role": _SHAREGPT_ROLES[t["from"]], "content": t["value"]})
        return _check_messages(r, msgs, "conversations")
    if fmt == "alpaca":
        instruction, output = _field(r, "instruction"), _field(r, "output")
        extra = _field(r, "input", optional=True)
        user = instruction + (f"\n\n{extra}" if extra else "")
        system = _field(r, "system", optional=True)
        return ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}, {"role": "assistant", "content": output}]
    raise DataError(f"format {fmt!r} is not a conversation format")


@dataclass
class Example:
    ids: list[int]
    targets: list[int]       # shifted: targets[t] is predicted from ids[:t+1]; IGNORE = no loss
    where: str = ""

    @property
    def n_targets(self) -> int:
        return sum(t != IGNORE for t in self.targets)


def _shifted(ids: list[int], learn: list[bool]) -> list[int]:
    return [ids[t + 1] if learn[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]


def encode_sft(tok, messages: list[dict], *, where: str = "") -> Example:
    """Ids and shifted targets of one conversation (chat template; Alpaca's prompt without one)."""
    if tok.chat_template:
        ids, learn = tok.encode_chat_for_training(messages)
        return Example(ids, _shifted(ids, learn), where)
    # no template: Alpaca's prompt for a single exchange (system text, if any, leads the instruction)
    turns = [m for m in messages if m["role"] != "system"]
    if len(turns) != 2 or turns[0]["role"] != "user" or turns[1]["role"] != "assistant":
        raise DataError(f"{where}: this model has no chat template; without one only single-turn "
                        "instruction/response records (Alpaca's prompt) can be rendered")
    prompt = ALPACA_PROMPT_NO_INPUT.format(instruction=turns[0]["content"])
    p = tok.encode(prompt)
    reply = tok.encode(turns[1]["content"], add_special_tokens=False) + [tok.eos_token_ids[0]]
    ids = p + reply
    return Example(ids, _shifted(ids, [False] * len(p) + [True] * len(reply)), where)


def encode_text(tok, text: str, *, where: str = "") -> Example:
    """A document: every token after the first is a target, and an EOS ends it."""
    ids = tok.encode(text) + ([tok.eos_token_ids[0]] if tok.eos_token_ids else [])
    return Example(ids, _shifted(ids, [True] * len(ids)), where)


@dataclass
class DataReport:
    records: int = 0
    examples: int = 0
    skipped: list[str] = field(default_factory=list)
    truncated: int = 0
    dropped_long: int = 0
    target_tokens: int = 0

    def summary(self) -> str:
        parts = [f"{self.examples} examples from {self.records} records", f"{self.target_tokens} target tokens"]
        if self.skipped:
            parts.append(f"{len(self.skipped)} bad records skipped (first: {self.skipped[0]})")
        if self.truncated:
            parts.append(f"{self.truncated} truncated to --seq-len")
        if self.dropped_long:
            parts.append(f"{self.dropped_long} longer than --seq-len dropped")
        return "; ".join(parts)


def load_sft(path, tok, *, fmt: Format = "auto", seq_len: int, skip_bad: bool = False,
             too_long: Literal["truncate", "drop", "error"] = "truncate") -> tuple[list[Example], DataReport]:
    """Read, detect, render and tokenise a data file into examples no longer than seq_len."""
    if fmt not in ("auto", *FORMATS):
        raise ConfigError(f"data format {fmt!r} is not known; expected auto or one of {', '.join(FORMATS)}")
    if seq_len < 2:
        raise ConfigError(f"seq_len must be at least 2, got {seq_len}")
    records = read_records(path)
    fmt = detect_format(records) if fmt == "auto" else fmt
    if fmt == "dpo":
        raise DataError(f"{path} holds preference pairs (prompt/chosen/rejected); use --objective dpo")
    report = DataReport(records=len(records))
    out = []
    for r in records:
        try:
            if fmt == "text":
                if isinstance(r.data, Exception):
                    raise r.data
                if not isinstance(r.data, dict):
                    raise DataError(f"{r.where}: record is {type(r.data).__name__}; expected a JSON object")
                ex = encode_text(tok, _field(r, "text"), where=r.where)
            else:
                ex = encode_sft(tok, to_messages(r, fmt), where=r.where)
        except LmzooError as e:
            if not skip_bad:
                raise DataError(f"{e} (pass --skip-bad to skip and count bad records)") from None
            report.skipped.append(str(e))
            continue
        if len(ex.ids) > seq_len:
            if too_long == "error":
                raise DataError(f"{r.where}: {len(ex.ids)} tokens exceed --seq-len {seq_len}")
            if too_long == "drop":
                report.dropped_long += 1
                continue
            report.truncated += 1
            ex = Example(ex.ids[:seq_len], ex.targets[: seq_len - 1] + [IGNORE], ex.where)
        if ex.n_targets == 0:
            if not skip_bad:
                raise DataError(f"{r.where}: no target tokens left (the reply was cut by --seq-len {seq_len}?); "
                                "pass --skip-bad to skip it")
            report.skipped.append(f"{r.where}: no target tokens")
            continue
        out.append(ex)
        report.target_tokens += ex.n_targets
    report.examples = len(out)
    if not out:
        raise DataError(f"{path}: no usable examples ({report.summary()})")
    return out, report


@dataclass
class Batch:
    ids: torch.Tensor          # (B, T)
    targets: torch.Tensor      # (B, T), IGNORE where no loss
    segments: torch.Tensor     # (B, T): which packed example each token belongs to (-1: padding)

    @property
    def n_tokens(self) -> int:
        return int((self.segments >= 0).sum())


def pack(examples: list[Example], seq_len: int) -> list[list[int]]:
    """Greedy first-fit packing of examples (by index) into rows of at most seq_len tokens."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i, ex in enumerate(examples):
        n = len(ex.ids)
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(seq_len - n)
    return rows


def collate(examples: list[Example], rows: list[list[int]], pad_id: int = 0) -> Batch:
    """Rows of packed examples as tensors, right-padded to the longest row."""
    T = max(sum(len(examples[i].ids) for i in row) for row in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    segments = torch.full((len(rows), T), -1, dtype=torch.long)
    for b, row in enumerate(rows):
        t = 0
        for s, i in enumerate(row):
            ex = examples[i]
            n = len(ex.ids)
            ids[b, t:t + n] = torch.tensor(ex.ids)
            targets[b, t:t + n] = torch.tensor(ex.targets)
            segments[b, t:t + n] = s
            t += n
    return Batch(ids, targets, segments)


def batches(examples: list[Example], *, seq_len: int, rows_per_batch: int, packing: bool, seed: int,
            epoch: int, pad_id: int = 0) -> Iterator[Batch]:
    """One epoch of batches, in an order fixed by (seed, epoch): a resumed run sees the same stream."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(examples), generator=g).tolist()
    shuffled = [examples[i] for i in order]
    rows = pack(shuffled, seq_len) if packing else [[i] for i in range(len(shuffled))]
    for start in range(0, len(rows), rows_per_batch):
        yield collate(shuffled, rows[start:start + rows_per_batch], pad_id)


def n_batches(examples: list[Example], *, seq_len: int, rows_per_batch: int, packing: bool, seed: int,
              epoch: int) -> int:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(examples), generator=g).tolist()
    rows = pack([examples[i] for i in order], seq_len) if packing else order
    return -(-len(rows) // rows_per_batch)
