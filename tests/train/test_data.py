"""Training data: formats, chat rendering identical to inference, prompt masking, packing."""

from __future__ import annotations

import json

import pytest

from lmzoo.train.data import (
    IGNORE,
    DataError,
    Example,
    batches,
    collate,
    detect_format,
    load_sft,
    pack,
    read_records,
    to_messages,
)

CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Italy? 🍕"},
        {"role": "assistant", "content": "Rome, of course."}]


@pytest.fixture(scope="module")
def tok(smollm2_path):
    from lmzoo.tokenizer import load_tokenizer

    return load_tokenizer(smollm2_path)


@pytest.fixture(scope="module")
def hf_tok(smollm2_path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(smollm2_path.parent), gguf_file=smollm2_path.name)


def test_conversation_ids_equal_transformers_chat_template(tok, hf_tok):
    ids, learn = tok.encode_chat_for_training(CONV)
    ref = hf_tok.apply_chat_template(CONV, tokenize=True, return_dict=True)["input_ids"]
    assert ids == ref
    # each learned span is one assistant reply followed by its end-of-turn token, and nothing else
    spans, cur = [], []
    for t, keep in zip(ids, learn):
        if keep:
            cur.append(t)
        elif cur:
            spans.append(cur)
            cur = []
    assert [tok.decode(s, skip_special_tokens=False) for s in spans] == ["Paris.<|im_end|>", "Rome, of course.<|im_end|>"]


def test_prompt_is_what_inference_sends(tok):
    """The tokens before each reply are exactly the prompt the engine builds for that conversation."""
    ids, learn = tok.encode_chat_for_training(CONV)
    for i in (2, 4):
        prompt = tok.encode_chat(CONV[:i])
        assert ids[: len(prompt)] == prompt and learn[len(prompt)] and not learn[len(prompt) - 1]


def _write(tmp_path, name, lines):
    p = tmp_path / name
    p.write_text("\n".join(json.dumps(x) if not isinstance(x, str) else x for x in lines) + "\n")
    return p


def test_formats_become_the_same_conversation(tmp_path):
    alpaca = _write(tmp_path, "a.jsonl", [{"instruction": "Capital of France?", "input": "", "output": "Paris."}])
    share = _write(tmp_path, "s.jsonl", [{"conversations": [{"from": "human", "value": "Capital of France?"},
                                                            {"from": "gpt", "value": "Paris."}]}])
    openai = _write(tmp_path, "m.jsonl", [{"messages": [{"role": "user", "content": "Capital of France?"},
                                                        {"role": "assistant", "content": "Paris."}]}])
    got = []
    for p in (alpaca, share, openai):
        recs = read_records(p)
        got.append(to_messages(recs[0], detect_format(recs)))
    assert got[0] == got[1] == got[2]
    with_input = _write(tmp_path, "b.json", [])
    with_input.write_text(json.dumps([{"instruction": "Translate", "input": "chat", "output": "cat"}]))
    recs = read_records(with_input)
    assert detect_format(recs) == "alpaca"
    assert to_messages(recs[0], "alpaca")[0]["content"] == "Translate\n\nchat"


def test_bad_records_name_file_line_and_field(tmp_path, tok):
    p = _write(tmp_path, "bad.jsonl", [{"instruction": "a", "output": "b"}, {"instruction": "c"}, "{not json"])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: record has no 'output' field"):
        load_sft(p, tok, seq_len=64)
    examples, report = load_sft(p, tok, seq_len=64, skip_bad=True)
    assert len(examples) == 1 and len(report.skipped) == 2 and "bad.jsonl:3" in report.skipped[1]
    with pytest.raises(DataError, match="does not exist"):
        load_sft(tmp_path / "nope.jsonl", tok, seq_len=64)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="empty"):
        load_sft(tmp_path / "empty.jsonl", tok, seq_len=64)
    odd = _write(tmp_path, "odd.jsonl", [{"question": "x"}])
    with pytest.raises(DataError, match="cannot tell the format"):
        load_sft(odd, tok, seq_len=64)


def test_too_long_is_counted(tmp_path, tok):
    p = _write(tmp_path, "long.jsonl", [{"instruction": "Say it", "output": "word " * 200},
                                        {"instruction": "Short", "output": "ok"}])
    ex, report = load_sft(p, tok, seq_len=64)
    assert report.truncated == 1 and max(len(e.ids) for e in ex) == 64
    ex, report = load_sft(p, tok, seq_len=64, too_long="drop")
    assert report.dropped_long == 1 and len(ex) == 1
    with pytest.raises(DataError, match="exceed --seq-len 64"):
        load_sft(p, tok, seq_len=64, too_long="error")


def test_text_documents_and_targets_are_shifted(tmp_path, tok):
    p = tmp_path / "doc.txt"
    p.write_text("First document\nline two.\n\nSecond document.\n")
    ex, _ = load_sft(p, tok, seq_len=64)
    assert len(ex) == 2
    e = ex[0]
    assert e.targets[:-1] == e.ids[1:] and e.targets[-1] == IGNORE and e.ids[-1] in tok.eos_token_ids


def test_packing_keeps_examples_whole_and_order_is_seeded():
    exs = [Example(list(range(n)), [1] * n) for n in (5, 3, 4, 2, 6)]
    rows = pack(exs, 8)
    assert sorted(i for r in rows for i in r) == list(range(5))
    assert all(sum(len(exs[i].ids) for i in r) <= 8 for r in rows)
    b = collate(exs, rows)
    assert b.n_tokens == 20 and set(b.segments[b.segments >= 0].tolist()) <= {0, 1, 2}
    one = [x.ids.tolist() for x in batches(exs, seq_len=8, rows_per_batch=2, packing=True, seed=3, epoch=1)]
    two = [x.ids.tolist() for x in batches(exs, seq_len=8, rows_per_batch=2, packing=True, seed=3, epoch=1)]
    other = [x.ids.tolist() for x in batches(exs, seq_len=8, rows_per_batch=2, packing=True, seed=3, epoch=2)]
    assert one == two and one != other
