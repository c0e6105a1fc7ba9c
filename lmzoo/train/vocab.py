"""Vocabulary extension, the Chinese-LLaMA recipe (Cui et al. 2023, "Efficient and Effective Text
Encoding for Chinese LLaMA and Alpaca", and its merge_tokenizers script):

    1. train a SentencePiece BPE model on Chinese text
    2. append its pieces that the LLaMA vocabulary lacks to LLaMA's tokenizer.model (score 0, as the
       recipe does: in SentencePiece BPE a higher score merges first, and LLaMA's scores are all
       negative, so the new pieces win wherever they apply; they hold CJK text only, so nothing
       changes for text without it — checked, not assumed)
    3. grow the embedding and the LM head by one row per new piece, each new row the mean of the
       old rows of the pieces the old tokenizer cut it into (the new token starts where its parts
       were, instead of at noise)
    4. save an HF checkpoint + tokenizer that lmzoo and transformers both load; continue
       pretraining on Chinese text (`lmzoo pretrain --from OUT`; the recipe's stage 1 trains the
       embeddings, stage 2 adds LoRA)

    new ids = old vocabulary size, old size + 1, ...      (old ids keep their meaning)
    embedding (V, d) -> (V + n, d);  lm_head (V, d) -> (V + n, d)  (tied heads stay tied)

Two kinds of vocabulary are extended:

  * SentencePiece (`tokenizer.model`: LLaMA 1/2, Mistral, Baichuan, Yi): pieces are appended with a
    score; SentencePiece BPE finds merges from the scores.
  * byte-level BPE (`tokenizer.json`: LLaMA 3, Qwen, DeepSeek, GPT-2 style): a token is only reachable
    through a merge of two tokens that are themselves reachable, and merges apply in list order. New
    merges go after all the old ones; for each new token (a Chinese word from a BPE trained with
    `tokenizers` on the corpus, split by the base tokenizer's own pre-tokenizer) the merges are derived
    from how the vocabulary so far cuts it:

        "中华人民"  cut by old + earlier new merges  ->  中 | 华 | 人民
        new merges:  (中, 华) -> 中华   then   (中华, 人民) -> 中华人民     (中华 a new token too if missing)

    Every new merge joins tokens of non-ASCII bytes only, so text without such bytes tokenises exactly
    as before; text with other non-ASCII characters can only change where a new merge's bytes appear,
    which are those of CJK characters. Each new token is checked to encode to itself alone.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lmzoo.errors import ConfigError
from lmzoo.train.data import DataError

CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]")
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # colour codes (Debian's fortunes-zh files carry them)


@dataclass
class Extension:
    added: list[str]  # the new pieces, in id order from the old vocabulary size on
    old_size: int
    new_size: int


def train_chinese_pieces(texts: list[str], *, vocab_size: int, workdir: Path) -> list[str]:
    """A SentencePiece BPE model trained on `texts`; its pieces in merge order (most frequent first)."""
    import sentencepiece as spm

    corpus = workdir / "corpus.txt"
    corpus.write_text("\n".join(ANSI.sub("", t) for t in texts), encoding="utf-8")
    prefix = workdir / "zh"
    try:
        spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(prefix), vocab_size=vocab_size,
                                       model_type="bpe", character_coverage=0.9995, num_threads=2,
                                       max_sentence_length=1 << 16, minloglevel=2)
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else "training failed"
        raise DataError(f"SentencePiece could not train on the corpus ({msg}); give more Chinese text or a "
                        "smaller --add") from None
    sp = spm.SentencePieceProcessor(model_file=str(prefix) + ".model")
    pieces = [(sp.get_score(i), i, sp.id_to_piece(i)) for i in range(sp.get_piece_size())
              if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i))]
    return [p for _, _, p in sorted(pieces, key=lambda x: (-x[0], x[1]))]


def extend_sentencepiece(model_file: Path, candidates: list[str], n_add: int) -> tuple[bytes, list[str]]:
    """LLaMA's tokenizer.model with up to `n_add` of `candidates` appended (those it lacks that hold
    CJK characters and nothing else but SentencePiece's word-start mark). Returns (model bytes, added)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(model_file.read_bytes())
    if proto.trainer_spec.model_type not in (1, 2):  # UNIGRAM, BPE
        raise ConfigError(f"{model_file} is not a unigram/BPE SentencePiece model")
    have = {p.piece for p in proto.pieces}
    added = []
    for piece in candidates:
        if len(added) == n_add:
            break
        body = piece.removeprefix("\u2581")
        if piece in have or not body or not all(CJK.match(c) for c in body):
            continue
        new = proto.pieces.add()
        new.piece, new.score, new.type = piece, 0.0, pb.ModelProto.SentencePiece.NORMAL
        have.add(piece)
        added.append(piece)
    return proto.SerializeToString(), added


def grow_embeddings(model: nn.Module, start: int, rows_from: list[list[int]]) -> None:
    """Give ids start, start + 1, ... embedding (and LM-head) rows, each the mean of the old rows in
    its entry of `rows_from`; the matrices grow to start + len(rows_from) rows where they are smaller
    (rows past the tokenizer's last id, padding, are reused first)."""
    emb: nn.Embedding = model.embed
    head: nn.Linear = model.lm_head
    tied = head.weight is emb.weight
    V, d = emb.weight.shape
    n = len(rows_from)
    size = max(V, start + n)

    def grown(w: torch.Tensor) -> torch.Tensor:  # (V, ...) -> (size, ...)
        out = torch.cat([w.detach(), w.new_zeros(size - V, *w.shape[1:])], 0)
        if n:
            out[start:start + n] = torch.stack([w[ids].mean(0) for ids in rows_from])
        return out

    with torch.no_grad():
        new_emb = nn.Embedding(size, d, device=emb.weight.device, dtype=emb.weight.dtype)
        new_emb.weight.copy_(grown(emb.weight))
        model.embed = new_emb
        new_head = nn.Linear(d, size, bias=head.bias is not None, device=head.weight.device, dtype=head.weight.dtype)
        if tied:
            new_head.weight = new_emb.weight
        else:
            new_head.weight.copy_(grown(head.weight))
        if head.bias is not None:  # a new token's bias: the mean of its parts' too
            new_head.bias.copy_(grown(head.bias))
        model.lm_head = new_head
    model.config.vocab_size = size


def _gpt2_byte_chars() -> dict[int, str]:
    """GPT-2's byte alphabet (`bytes_to_unicode` in openai/gpt-2's encoder.py), which byte-level BPE
    vocabularies are spelled in: printable Latin-1 bytes stand for themselves, the other 68 are
    shifted to U+0100 on, in byte order (the space 0x20 becomes "Ġ")."""
    keep = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    shifted = iter(range(0x100, 0x200))
    return {b: chr(b) if b in keep else chr(next(shifted)) for b in range(256)}


BYTE_CHAR = _gpt2_byte_chars()
CHAR_BYTE = {c: b for b, c in BYTE_CHAR.items()}


def _text(token: str) -> str | None:
    """A byte-level token's text; None where its bytes are not whole UTF-8 characters."""
    try:
        return bytes(CHAR_BYTE[c] for c in token).decode("utf-8")
    except (KeyError, UnicodeDecodeError):
        return None


def _chinese_word(text: str | None) -> bool:
    """CJK characters only, after at most one leading space (the pre-tokenizers keep a word's space)."""
    body = (text or "").removeprefix(" ")
    return bool(body) and all(CJK.match(c) for c in body)


def bpe_split(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-level BPE of one pre-token (spelled in GPT-2's alphabet): join the adjacent pair of lowest
    merge rank, leftmost first, until no pair has a merge (what `tokenizers`' BPE model does)."""
    parts = list(word)
    while len(parts) > 1:
        pairs = [ranks.get(pair, len(ranks)) for pair in zip(parts, parts[1:])]
        i = min(range(len(pairs)), key=pairs.__getitem__)
        if pairs[i] == len(ranks):
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


def train_chinese_words(texts: list[str], *, like, vocab_size: int) -> list[str]:
    """Chinese tokens (spelled in GPT-2's byte alphabet) of a byte-level BPE trained with `tokenizers`
    on `texts`, split as the base tokenizer `like` splits text; in merge order (most frequent first)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer, tok.pre_tokenizer = like.normalizer, like.pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([ANSI.sub("", t) for t in texts], trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    words = ["".join(m.split(" ", 1) if isinstance(m, str) else m) for m in merges]
    return [w for w in words if _chinese_word(_text(w))]


def _pairs(merges: list) -> list[tuple[str, str]]:
    """tokenizer.json merges, either spelling ("a b" strings, or [a, b] lists since tokenizers 0.20)."""
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]


def _next_id(spec: dict) -> int:
    """The first id after a tokenizer.json's vocabulary and its added (special) tokens."""
    return max([-1, *spec["model"]["vocab"].values(), *(t["id"] for t in spec.get("added_tokens", []))]) + 1


def extend_byte_bpe(spec: dict, candidates: list[str], n_add: int) -> tuple[dict, list[str], list[list[int]]]:
    """A byte-level BPE tokenizer.json (as a dict) with up to `n_add` new tokens: `candidates` it
    lacks, in order, each with the merges that build it from how the vocabulary so far cuts it, and
    the new intermediate tokens those merges need (all counted in `n_add`). Returns (the new dict, the
    added tokens in id order, each added token's ids under the old tokenizer)."""
    model = spec["model"]
    vocab = dict(model["vocab"])
    # `tokenizers` numbers the added (special) tokens that the model's vocabulary lacks from the size of
    # that vocabulary on, whatever ids the file gives them; new tokens after them would take their ids.
    # So the specials go into the vocabulary under their own ids (as many tokenizer.json files have
    # them), where nothing can merge into them: they are split out before the BPE sees the text.
    for t in spec.get("added_tokens", []):
        vocab.setdefault(t["content"], t["id"])
    next_id = _next_id(spec)
    if sorted(vocab.values()) != list(range(next_id)):
        raise ConfigError(f"the tokenizer's ids are not 0..{next_id - 1} without gaps; new tokens cannot be numbered")
    pairs = _pairs(model["merges"])
    ranks: dict[tuple[str, str], int] = {}
    for pair in pairs:
        ranks.setdefault(pair, len(ranks))
    old_ranks = dict(ranks)
    added: list[str] = []
    new_pairs: list[tuple[str, str]] = []
    for word in candidates:
        if len(added) == n_add:
            break
        if word in vocab:
            continue
        parts = bpe_split(word, ranks)
        chain = [("".join(parts[:k]), parts[k]) for k in range(1, len(parts))]  # left fold: ((p0 p1) p2) ...
        fresh = [a + b for a, b in chain if a + b not in vocab]
        todo = [pair for pair in chain if pair not in ranks]
        if len(added) + len(fresh) > n_add:
            continue
        for pair in todo:
            ranks[pair] = len(ranks)
        if bpe_split(word, ranks) != [word]:  # an earlier merge repeats inside it (哈哈哈哈): leave it out
            for pair in todo:
                del ranks[pair]
            continue
        new_pairs += todo
        for t in fresh:
            vocab[t] = next_id + len(added)
            added.append(t)
    merges = model["merges"] + [f"{a} {b}" if model["merges"] and isinstance(model["merges"][0], str) else [a, b]
                                for a, b in new_pairs]
    out = {**spec, "model": {**model, "vocab": vocab, "merges": merges}}
    rows = [[model["vocab"][p] for p in bpe_split(t, old_ranks)] for t in added]
    return out, added, rows


def _is_byte_level(spec: dict) -> bool:
    def names(node):
        if isinstance(node, dict):
            yield node.get("type")
            for v in node.values():
                yield from names(v)
        elif isinstance(node, list):
            for v in node:
                yield from names(v)

    return spec.get("model", {}).get("type") == "BPE" and "ByteLevel" in set(names(spec.get("pre_tokenizer")))


def _sentencepiece(path: Path):
    """The SentencePiece model at `path`, or None (missing, or another format: tiktoken's)."""
    import sentencepiece as spm

    if not path.is_file():
        return None
    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError):
        return None


def base_vocabulary(src: Path):
    """(SentencePiece model, None) or (None, byte-level BPE tokenizer.json as a dict) of a checkpoint
    directory; a ConfigError for anything else."""
    sp = _sentencepiece(src / "tokenizer.model") if src.is_dir() else None
    if sp is None and src.is_dir() and (src / "tokenizer.json").is_file():
        try:
            spec = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise ConfigError(f"{src / 'tokenizer.json'} is not JSON ({e})") from None
        if isinstance(spec, dict) and _is_byte_level(spec):
            return None, spec
    if sp is None:
        raise ConfigError(f"{src}: vocabulary extension needs an HF checkpoint directory with a SentencePiece "
                          "tokenizer.model (LLaMA 1/2, Mistral, Baichuan, Yi) or a byte-level BPE tokenizer.json "
                          "(LLaMA 3, Qwen, DeepSeek)")
    return sp, None


def extend_vocab(model_path, corpus: list[str], *, n_add: int, out_dir, zh_vocab: int | None = None) -> Extension:
    """Extend a checkpoint's vocabulary (SentencePiece tokenizer.model, or byte-level BPE
    tokenizer.json) with Chinese tokens trained on `corpus` (texts); write the grown checkpoint +
    tokenizer to `out_dir` (HF format)."""
    import lmzoo
    from lmzoo.checkpoints.peft import CheckpointLayout, layout_of
    from lmzoo.checkpoints.save import TOKENIZER_FILES, save_hf

    src = Path(model_path)
    sp, spec = base_vocabulary(src)
    if n_add < 1:
        raise ConfigError(f"--add must be >= 1, got {n_add}")
    if not any(CJK.search(t) for t in corpus):
        raise DataError("the corpus holds no Chinese (CJK) characters to learn pieces from")
    model = lmzoo.from_pretrained(src, dtype=torch.float32)
    V = model.config.vocab_size
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok_dir = tmp / "tokenizer"
        tok_dir.mkdir()
        if sp is not None:
            if V != sp.get_piece_size():
                raise ConfigError(f"the model has {V} embedding rows but tokenizer.model {sp.get_piece_size()} pieces; "
                                  "new ids would collide with the padding rows")
            candidates = train_chinese_pieces(corpus, vocab_size=zh_vocab or min(2 * n_add + 1000, 60000), workdir=tmp)
            blob, added = extend_sentencepiece(src / "tokenizer.model", candidates, n_add)
            start = V
            # each new piece's parts under the old tokenizer, as it would be cut inside a text: a leading
            # full stop takes SentencePiece's word-start mark, then is dropped
            anchor = sp.encode("。")
            rows = [sp.encode("。" + piece.replace("\u2581", " "))[len(anchor):] or [sp.unk_id()] for piece in added]
            (tok_dir / "tokenizer.model").write_bytes(blob)
            stale = {"tokenizer.model", "tokenizer.json"}  # tokenizer.json would be the old vocabulary
        else:
            from tokenizers import Tokenizer

            # a byte-level BPE spends much of its vocabulary on pieces of characters and on non-Chinese
            # words, and a vocabulary trained on Chinese (Qwen's) already has the common words: train
            # larger ones until `n_add` new words are found or the corpus has no more
            like, size, found = Tokenizer.from_str(json.dumps(spec)), zh_vocab or 4 * n_add + 1000, -1
            while True:
                candidates = train_chinese_words(corpus, like=like, vocab_size=size)
                grown, added_bytes, rows = extend_byte_bpe(spec, candidates, n_add)
                if zh_vocab or len(added_bytes) == n_add or len(candidates) == found or size >= 1 << 19:
                    break
                size, found = 2 * size, len(candidates)
            start = _next_id(spec)
            if start > V:
                raise ConfigError(f"the tokenizer's ids reach {start - 1} but the model has only {V} embedding rows")
            (tok_dir / "tokenizer.json").write_text(json.dumps(grown, ensure_ascii=False), encoding="utf-8")
            new = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
            wrong = [t for i, t in enumerate(added_bytes, start) if new.id_to_token(i) != t or _text(t) is not None
                     and new.encode(_text(t), add_special_tokens=False).ids != [i]]
            if wrong:  # every new token must keep its id and whole-character ones encode to themselves; a bug if not
                raise RuntimeError(f"{len(wrong)} new tokens do not encode to themselves, e.g. "
                                   f"{[_text(t) or t for t in wrong[:5]]}")
            added = [_text(t) or t for t in added_bytes]
            stale = {"tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "qwen.tiktoken"}
        grow_embeddings(model, start, rows)
        layout = layout_of(model)
        model.checkpoint_layout = CheckpointLayout(layout.model_type,
                                                   {**layout.hf_config, "vocab_size": model.config.vocab_size},
                                                   layout.path)
        for f in TOKENIZER_FILES:  # the rest of the tokenizer files
            if f not in stale and (src / f).exists():
                shutil.copy2(src / f, tok_dir / f)
        save_hf(model, out_dir, tokenizer_source=tok_dir)
    return Extension(added=added, old_size=start, new_size=start + len(added))


def tokens_per_char(tok, texts: list[str]) -> float:
    """Tokens per CJK character over `texts` (the recipe's measure of how well a vocabulary fits)."""
    chars = sum(len(CJK.findall(t)) for t in texts)
    if not chars:
        raise DataError("no Chinese characters to measure on")
    return sum(len(tok.encode(t, add_special_tokens=False)) for t in texts) / chars
