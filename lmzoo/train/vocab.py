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

Only SentencePiece vocabularies (`tokenizer.model`: LLaMA 1/2, Mistral, Baichuan, Yi) are extended
here; byte-level BPE `tokenizer.json` vocabularies would need merges derived for each new token.
"""

from __future__ import annotations

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


def grow_embeddings(model: nn.Module, rows_from: list[list[int]]) -> None:
    """Append one embedding (and LM-head) row per entry of `rows_from`: the mean of those old rows."""
    emb: nn.Embedding = model.embed
    head: nn.Linear = model.lm_head
    tied = head.weight is emb.weight
    V, d = emb.weight.shape
    n = len(rows_from)

    def grown(w: torch.Tensor) -> torch.Tensor:
        new = torch.stack([w[ids].mean(0) for ids in rows_from]) if n else w.new_zeros(0, w.shape[1])
        return torch.cat([w.detach(), new.to(w.dtype)], 0)

    with torch.no_grad():
        new_emb = nn.Embedding(V + n, d, device=emb.weight.device, dtype=emb.weight.dtype)
        new_emb.weight.copy_(grown(emb.weight))
        model.embed = new_emb
        new_head = nn.Linear(d, V + n, bias=head.bias is not None, device=head.weight.device, dtype=head.weight.dtype)
        if tied:
            new_head.weight = new_emb.weight
        else:
            new_head.weight.copy_(grown(head.weight))
        if head.bias is not None:  # a new token's bias: the mean of its parts' too
            new_head.bias.copy_(torch.cat([head.bias, torch.stack([head.bias[ids].mean() for ids in rows_from])])
                                if n else head.bias)
        model.lm_head = new_head
    model.config.vocab_size = V + n


def extend_vocab(model_path, corpus: list[str], *, n_add: int, out_dir, zh_vocab: int | None = None) -> Extension:
    """Extend a SentencePiece-vocabulary checkpoint with Chinese pieces trained on `corpus` (texts);
    write the grown checkpoint + tokenizer to `out_dir` (HF format)."""
    import sentencepiece as spm

    import lmzoo
    from lmzoo.checkpoints.peft import CheckpointLayout, layout_of
    from lmzoo.checkpoints.save import TOKENIZER_FILES, save_hf

    src = Path(model_path)
    sp_file = src / "tokenizer.model"
    if not (src.is_dir() and sp_file.is_file()):
        raise ConfigError(f"{src}: vocabulary extension needs an HF checkpoint directory with a SentencePiece "
                          "tokenizer.model (LLaMA 1/2, Mistral, Baichuan, Yi)")
    if n_add < 1:
        raise ConfigError(f"--add must be >= 1, got {n_add}")
    if not any(CJK.search(t) for t in corpus):
        raise DataError("the corpus holds no Chinese (CJK) characters to learn pieces from")
    old = spm.SentencePieceProcessor(model_file=str(sp_file))
    model = lmzoo.from_pretrained(src, dtype=torch.float32)
    V = model.config.vocab_size
    if V != old.get_piece_size():
        raise ConfigError(f"the model has {V} embedding rows but tokenizer.model {old.get_piece_size()} pieces; "
                          "new ids would collide with the padding rows")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        candidates = train_chinese_pieces(corpus, vocab_size=zh_vocab or min(2 * n_add + 1000, 60000), workdir=tmp)
        blob, added = extend_sentencepiece(sp_file, candidates, n_add)
        # each new piece's parts under the old tokenizer, as it would be cut inside a text: a leading
        # full stop takes SentencePiece's word-start mark, then is dropped
        anchor = old.encode("。")
        rows = []
        for piece in added:
            ids = old.encode("。" + piece.replace("\u2581", " "))[len(anchor):]
            rows.append(ids or [old.unk_id()])
        grow_embeddings(model, rows)
        layout = layout_of(model)
        model.checkpoint_layout = CheckpointLayout(layout.model_type, {**layout.hf_config, "vocab_size": V + len(added)},
                                                   layout.path)
        tok_dir = tmp / "tokenizer"
        tok_dir.mkdir()
        (tok_dir / "tokenizer.model").write_bytes(blob)
        for f in TOKENIZER_FILES:  # the rest of the tokenizer files; tokenizer.json would be the old vocabulary
            if f not in ("tokenizer.model", "tokenizer.json") and (src / f).exists():
                shutil.copy2(src / f, tok_dir / f)
        save_hf(model, out_dir, tokenizer_source=tok_dir)
    return Extension(added=added, old_size=V, new_size=V + len(added))


def tokens_per_char(tok, texts: list[str]) -> float:
    """Tokens per CJK character over `texts` (the recipe's measure of how well a vocabulary fits)."""
    chars = sum(len(CJK.findall(t)) for t in texts)
    if not chars:
        raise DataError("no Chinese characters to measure on")
    return sum(len(tok.encode(t, add_special_tokens=False)) for t in texts) / chars
