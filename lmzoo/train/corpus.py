"""Pretraining corpora: text files, JSONL ({"text": ...}) or directories of them, streamed once through
the tokenizer into a memory-mapped token file that later runs re-use.

    ~/.cache/lmzoo/tokens/<key>.bin     uint32 token ids, documents back to back, each ending in EOS
    ~/.cache/lmzoo/tokens/<key>.json    {"tokens": n, "doc_starts": [...], "files": [...]}
    key = hash(tokenizer path, every file's path, size and mtime)

Training windows are `seq_len` consecutive tokens; a window may hold the end of one document and the
start of the next, but never sees across the boundary (segment ids from the document starts: no
attention across documents, no target across them), as packing does for fine-tuning:

    tokens   ...a a a <eos> | b b b b ...        segments  0 0 0 0 | 1 1 1 1
    targets  ...a a <eos> - | b b b ...          (- = no loss: the next document is not predicted)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from lmzoo.train.data import IGNORE, Batch, DataError

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".jsonl", ".json")


def corpus_files(paths) -> list[Path]:
    files: list[Path] = []
    for p in map(lambda x: Path(x).expanduser(), paths):
        if not p.exists():
            raise DataError(f"corpus path {str(p)!r} does not exist")
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES)
            if not found:
                raise DataError(f"{p} holds no text files ({', '.join(TEXT_SUFFIXES)})")
            files += found
        else:
            files.append(p)
    return files


def _documents(path: Path):
    """Documents of one file: JSONL lines' "text", or blocks separated by blank lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if path.suffix.lower() in (".jsonl", ".json"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                raise DataError(f"{path}:{n}: expected an object with a 'text' string")
            yield rec["text"]
        return
    block: list[str] = []
    for line in text.splitlines() + [""]:
        if line.strip():
            block.append(line)
        elif block:
            yield "\n".join(block)
            block = []


def cache_dir() -> Path:
    return Path(os.environ.get("LMZOO_CACHE", Path.home() / ".cache" / "lmzoo")) / "tokens"


def tokenize_corpus(paths, tok, tokenizer_id: str) -> tuple[np.ndarray, np.ndarray, Path]:
    """(tokens memmap, document starts, cache file); tokenised once per corpus and tokenizer."""
    files = corpus_files(paths)
    h = hashlib.sha256(tokenizer_id.encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    key = h.hexdigest()[:24]
    d = cache_dir()
    binf, meta = d / f"{key}.bin", d / f"{key}.json"
    if not (binf.exists() and meta.exists()):
        if not tok.eos_token_ids:
            raise DataError("the tokenizer has no EOS token to end documents with")
        eos = tok.eos_token_ids[0]
        d.mkdir(parents=True, exist_ok=True)
        tmp = binf.with_name(f".{binf.name}.tmp-{os.getpid()}")
        starts, n = [], 0
        with open(tmp, "wb") as out:
            for f in files:
                for doc in _documents(f):
                    ids = tok.encode(doc, add_special_tokens=False) + [eos]
                    if max(ids) >= 2**32:
                        raise DataError("token ids do not fit the uint32 token file")
                    starts.append(n)
                    out.write(np.asarray(ids, dtype=np.uint32).tobytes())
                    n += len(ids)
        if n == 0:
            tmp.unlink()
            raise DataError(f"the corpus {[str(f) for f in files][:3]} holds no text")
        os.replace(tmp, binf)
        tmpm = meta.with_name(f".{meta.name}.tmp-{os.getpid()}")
        tmpm.write_text(json.dumps({"tokens": n, "doc_starts": starts, "files": [str(f) for f in files]}))
        os.replace(tmpm, meta)
    info = json.loads(meta.read_text())
    tokens = np.memmap(binf, dtype=np.uint32, mode="r", shape=(info["tokens"],))
    return tokens, np.asarray(info["doc_starts"], dtype=np.int64), binf


class TokenWindows:
    """The corpus as windows of seq_len tokens (the last partial window dropped); batches of windows
    in an order fixed by (seed, epoch); rank r of world w reads only its rows [r B / w, (r + 1) B / w)
    of every batch of B windows (a batch smaller than the world leaves some ranks no window: they get
    one with no targets, so every rank still steps)."""

    def __init__(self, tokens: np.ndarray, doc_starts: np.ndarray, seq_len: int, *, rank: int = 0, world: int = 1):
        self.tokens, self.seq_len, self.rank, self.world = tokens, seq_len, rank, world
        self.n = len(tokens) // seq_len
        if self.n == 0:
            raise DataError(f"the corpus has {len(tokens)} tokens, fewer than one --seq-len window of {seq_len}")
        self.is_start = np.zeros(len(tokens), dtype=bool)
        self.is_start[doc_starts] = True

    def __len__(self) -> int:
        return self.n

    def window(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = i * self.seq_len
        ids = torch.from_numpy(self.tokens[s:s + self.seq_len].astype(np.int64))
        start = torch.from_numpy(self.is_start[s:s + self.seq_len].copy())
        start[0] = True
        seg = start.long().cumsum(0) - 1
        nxt = torch.from_numpy(self.tokens[s + 1:s + self.seq_len + 1].astype(np.int64))
        nxt_start = torch.from_numpy(self.is_start[s + 1:s + self.seq_len + 1].copy())
        targets = torch.full((self.seq_len,), IGNORE, dtype=torch.long)
        k = len(nxt)
        targets[:k] = torch.where(nxt_start, IGNORE, nxt)  # never predict across a document boundary
        return ids, targets, seg

    def batches(self, rows: int, seed: int, epoch: int):
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        chunks = [order[s:s + rows] for s in range(0, self.n - rows + 1, rows)] or [order]
        for chunk in chunks:
            mine = chunk[self.rank * len(chunk) // self.world:(self.rank + 1) * len(chunk) // self.world]
            ids, targets, segs = zip(*(self.window(i) for i in mine or chunk[:1]))
            targets = torch.stack(targets) if mine else torch.full_like(targets[0], IGNORE)[None]
            yield Batch(torch.stack(ids), targets, torch.stack(segs))
