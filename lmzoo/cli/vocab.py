"""`lmzoo vocab extend`: the Chinese-LLaMA vocabulary extension (lmzoo.train.vocab).

    lmzoo vocab extend --model llama-dir --corpus zh.txt [--corpus more/] --add 20000 --out llama-zh
        (llama-dir: a SentencePiece tokenizer.model, LLaMA 1/2; or a byte-level BPE tokenizer.json, LLaMA 3 / Qwen)
    lmzoo pretrain --from llama-zh --data zh.txt --out runs/zh ...     # then continue pretraining
"""

from __future__ import annotations

from pathlib import Path

import typer

from lmzoo.cli import app

vocab_app = typer.Typer(help="Vocabulary tools (extend a SentencePiece or byte-level BPE vocabulary with Chinese tokens).",
                        no_args_is_help=True)
app.add_typer(vocab_app, name="vocab")


@vocab_app.command("extend")
def extend(
    model: Path = typer.Option(..., "--model", "-m", help="HF checkpoint directory with a SentencePiece "
                                "tokenizer.model or a byte-level BPE tokenizer.json."),
    corpus: list[str] = typer.Option(..., "--corpus", help="Chinese text: text / JSONL files or directories (repeatable)."),
    add: int = typer.Option(20000, "--add", help="How many new pieces to append (Chinese-LLaMA: ~20k)."),
    out: Path = typer.Option(..., "--out", help="Where to write the extended checkpoint + tokenizer."),
    held_out: float = typer.Option(0.05, "--held-out", help="Fraction of documents kept out of training, to measure "
                                   "tokens per Chinese character before/after."),
) -> None:
    """Train Chinese pieces on the corpus, append them to the vocabulary, grow the embeddings (new rows
    = mean of their old sub-token rows) and save a checkpoint lmzoo and transformers load."""
    from lmzoo.errors import ConfigError
    from lmzoo.tokenizer import load_tokenizer
    from lmzoo.train.corpus import _documents, corpus_files
    from lmzoo.train.vocab import ANSI, base_vocabulary, extend_vocab, tokens_per_char

    base_vocabulary(model)  # a tokenizer it can extend, before reading the corpus
    if not 0 <= held_out < 1:
        raise ConfigError(f"--held-out must be in [0, 1), got {held_out}")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty; choose a new directory")
    docs = [ANSI.sub("", d) for f in corpus_files(corpus) for d in _documents(f)]
    n_held = int(len(docs) * held_out)
    train, held = (docs[:-n_held], docs[-n_held:]) if n_held else (docs, [])
    typer.echo(f"lmzoo: {len(train)} documents to learn pieces from, {len(held)} held out", err=True)
    ext = extend_vocab(model, train, n_add=add, out_dir=out)
    typer.echo(f"lmzoo: added {len(ext.added)} pieces ({ext.old_size} -> {ext.new_size}), e.g. "
               f"{' '.join(ext.added[:8])}; saved {out}", err=True)
    if held:
        before, after = tokens_per_char(load_tokenizer(model), held), tokens_per_char(load_tokenizer(out), held)
        typer.echo(f"lmzoo: held-out Chinese text: {before:.3f} -> {after:.3f} tokens per character "
                   f"({after / before - 1:+.1%})", err=True)
