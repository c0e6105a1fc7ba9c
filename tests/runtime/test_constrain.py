"""Constrained decoding (runtime.constrain over llguidance): the mask a grammar computes equals the
set of tokens found by brute force over the vocabulary, for a `tokenizers` pipeline (SmolLM2's
byte-level BPE) and a SentencePiece model (Mistral's); sampled output always follows a JSON schema;
bad grammars are one-line errors."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil

import jsonschema
import pytest
import torch

from lmzoo import Engine, Request, SamplingParams
from lmzoo.errors import GenerationError
from lmzoo.runtime.constrain import (
    Constraint,
    check_grammar,
    guide_tokenizer,
    json_schema_grammar,
    lark_grammar,
    regex_grammar,
)
from lmzoo.tokenizer import load_tokenizer


@pytest.fixture(scope="module", params=["smollm2", "mistral-sp"])
def tok(request, smollm2_path, tmp_path_factory):
    if request.param == "smollm2":
        return load_tokenizer(smollm2_path)
    d = tmp_path_factory.mktemp("sp")
    src = next(f for f in importlib.metadata.files("mistral-common") if f.name == "tokenizer.model.v1").locate()
    shutil.copy(src, d / "tokenizer.model")
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                         "unk_token": "<unk>", "add_bos_token": True}))
    return load_tokenizer(d)


def token_texts(tok) -> list[str | None]:
    """Each id's text as it continues an output (None for special tokens)."""
    specials = set(tok.eos_token_ids) | set(tok._special_ids)
    if tok._sp is not None:  # a piece's text inside a sequence: decode after a prefix token, drop the prefix
        sp, a = tok._sp, tok.encode("a", add_special_tokens=False)
        base = tok.decode(a)

        def text(i):
            if i in specials or sp.is_control(i):
                return None
            if sp.is_byte(i):  # <0x41>: byte fallback, one ASCII character or part of one
                b = int(sp.id_to_piece(i)[3:5], 16)
                return chr(b) if b < 0x80 else None
            return tok.decode(a + [i])[len(base):]
        return [text(i) for i in range(tok.vocab_size)]
    return [None if i in specials else tok.decode([i], skip_special_tokens=False) for i in range(tok.vocab_size)]


def test_mask_equals_brute_force(tok):
    """`[0-9]{1,4}`: from the start, exactly the tokens whose text is 1-4 digits (no EOS: one digit
    is needed); after "12", digit strings of at most 2 more, and the end-of-turn tokens."""
    texts = token_texts(tok)
    stop = set(tok.eos_token_ids)
    guide = guide_tokenizer(tok, tok.vocab_size, stop)
    c = Constraint(regex_grammar(r"[0-9]{1,4}"), guide)
    allowed = set(c.allowed().nonzero().flatten().tolist())
    expect = {i for i, t in enumerate(texts) if t is not None and re.fullmatch(r"[0-9]{1,4}", t)}
    assert expect and allowed == expect
    for digit in "12":
        c.consume(texts.index(digit))
    allowed = set(c.allowed().nonzero().flatten().tolist())
    expect = {i for i, t in enumerate(texts) if t is not None and re.fullmatch(r"[0-9]{1,2}", t)} | stop
    assert allowed == expect and not c.done


def test_logits_masked_in_place_and_padded_vocab(tok):
    stop = set(tok.eos_token_ids)
    V = tok.vocab_size + 64  # a model's head padded past the tokenizer (Qwen, Falcon do this)
    c = Constraint(regex_grammar("yes|no"), guide_tokenizer(tok, V, stop))
    logits = torch.randn(1, V)
    out = c.mask_(logits)
    assert out is logits
    ok = torch.isfinite(logits[0]).nonzero().flatten().tolist()
    assert ok and all(i < tok.vocab_size and tok.decode([i]) in ("yes", "no", "y", "ye", "n") for i in ok)
    with pytest.raises(GenerationError, match="logits"):
        c.mask_(torch.randn(1, tok.vocab_size - 1))


def test_bad_grammar_and_bad_token_are_one_line_errors(smollm2_path):
    tok = load_tokenizer(smollm2_path)
    guide = guide_tokenizer(tok, tok.vocab_size, set(tok.eos_token_ids))
    with pytest.raises(GenerationError, match="invalid: .*strange"):
        Constraint(json_schema_grammar({"type": "strange"}), guide)
    with pytest.raises(GenerationError, match="invalid"):
        check_grammar(lark_grammar("start: undefined_rule"))
    with pytest.raises(GenerationError, match="must be an object"):
        json_schema_grammar(["not", "a", "schema"])
    c = Constraint(regex_grammar("[0-9]+"), guide)
    with pytest.raises(GenerationError, match="breaks the output constraint"):
        c.consume(tok.encode("abc", add_special_tokens=False)[0])


SCHEMA = {"type": "object", "properties": {
    "city": {"type": "string", "maxLength": 40}, "country": {"type": "string", "maxLength": 40},
    "population": {"type": "integer", "minimum": 0, "maximum": 100000000},
    "tags": {"type": "array", "items": {"type": "string", "enum": ["capital", "port", "old"]}, "maxItems": 2}},
    "required": ["city", "population", "tags"], "additionalProperties": False}


def test_sampled_output_always_follows_the_schema(smollm2_model):
    """Hot sampling from the real model (it would not write this JSON unaided): every output parses
    and validates, and ends on its own (the grammar completes) before max_tokens."""
    model, tok = smollm2_model
    engine = Engine(model, tok, max_running=3)
    msgs = [{"role": "user", "content": "Describe Paris as JSON."}]
    reqs = [Request(messages=msgs, max_tokens=80, grammar=json_schema_grammar(SCHEMA),
                    sampling=SamplingParams(temperature=1.0, seed=s)) for s in range(3)]
    texts: dict[str, str] = {}
    finish = {}
    for ev in engine.run(reqs):
        texts[ev.request_id] = texts.get(ev.request_id, "") + ev.text
        if ev.finish_reason:
            finish[ev.request_id] = ev.finish_reason
    assert len(texts) == 3
    for rid, text in texts.items():
        jsonschema.validate(json.loads(text), SCHEMA)
        assert finish[rid] in ("stop", "eos")
    # the same seeds give the same text alone (the mask is per request)
    alone = "".join(ev.text for ev in Engine(model, tok).run([reqs[0]]))
    assert alone == texts["req-0"]


def test_greedy_unchanged_where_the_grammar_allows_it(smollm2_model):
    """A grammar that the unconstrained greedy reply already follows leaves it unchanged."""
    model, tok = smollm2_model
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    free = "".join(ev.text for ev in Engine(model, tok).run([Request(messages=msgs, max_tokens=8)]))
    assert free.startswith("The capital of France is Paris")
    constrained = "".join(ev.text for ev in Engine(model, tok).run(
        [Request(messages=msgs, max_tokens=12, grammar=regex_grammar(r"The capital of [A-Z][a-z]+ is [A-Z][a-z]+\."))]))
    assert constrained == "The capital of France is Paris."
