"""The engine's prompt cache (Engine(prompt_cache=True); on in `lmzoo serve` and `lmzoo chat`): a new
request starts on the free cache row holding the longest prefix of its prompt and prefills only the
rest; what it then computes equals a fresh engine's (same greedy tokens, log-probabilities within
float rounding), rows are cut back to the shared prefix, and rows that cannot be reused are not."""

from __future__ import annotations

import pytest
import torch

import lmzoo
from lmzoo import Engine, Request
from tests.helpers import random_ids
from tests.test_parity import V, build_reference, write_qwen_v1


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    d = tmp_path_factory.mktemp("llama-gqa")
    build_reference("llama-gqa", d)
    return lmzoo.from_pretrained(d, dtype=torch.float32)


def ids(n: int, seed: int) -> list[int]:
    return random_ids(V, (1, n), seed=seed)[0].tolist()


def run(eng: Engine, prompt: list[int], n: int) -> tuple[list[int], list[float], int]:
    """(greedy tokens, their log-probabilities, cached prompt tokens) of one request run to the end."""
    events = list(eng.run([Request(prompt=prompt, max_tokens=n, stop_token_ids=[], logprobs=True)]))
    return [e.token for e in events if e.token is not None], [e.logprob for e in events if e.token is not None], \
        events[-1].cached_tokens


def assert_like_fresh(model, prompt, n, tokens, logprobs) -> None:
    want, want_lp, cached = run(Engine(model, max_running=1), prompt, n)
    assert cached == 0
    assert tokens == want
    torch.testing.assert_close(torch.tensor(logprobs), torch.tensor(want_lp), rtol=0, atol=1e-5)


def test_a_turn_prefills_only_what_is_new(llama, monkeypatch):
    eng = Engine(llama, max_running=1, prompt_cache=True)
    p1 = ids(20, seed=1)
    out1, _, cached = run(eng, p1, 6)
    assert cached == 0
    p2 = p1 + out1 + ids(7, seed=2)  # the conversation so far, then a new message
    fed = []
    forward = llama.forward
    monkeypatch.setattr(llama, "forward", lambda input_ids, **kw: fed.append(input_ids.shape[1]) or
                        forward(input_ids, **kw))
    out2, lp2, cached = run(eng, p2, 6)
    # the row held p1 and every output token but the last (sampled, never fed): all of it is reused
    assert cached == len(p1) + len(out1) - 1
    assert sum(fed) == (len(p2) - cached) + (len(out2) - 1)  # the rest of the prompt, then one token a step
    monkeypatch.undo()
    assert_like_fresh(llama, p2, 6, out2, lp2)


def test_static_decode_reuses_rows_too(llama):
    """decode="static" (fixed shapes for torch.compile / CUDA graphs) steps idle rows on a dummy
    token: a freed row's prefix survives that, and a reused row is cut back past the dummies."""
    eng = Engine(llama, max_running=2, decode="static", max_len=96, prompt_cache=True)
    p1 = [1] + ids(19, seed=17)
    out1, _, _ = run(eng, p1, 6)
    run(eng, [2] + ids(8, seed=19), 6)  # on the other row: p1's row is stepped on dummy tokens meanwhile
    p2 = p1 + out1 + ids(5, seed=18)
    out2, lp2, cached = run(eng, p2, 6)
    assert cached == len(p1) + len(out1) - 1
    want, want_lp, _ = run(Engine(llama, max_running=2, decode="static", max_len=96), p2, 6)
    assert out2 == want
    torch.testing.assert_close(torch.tensor(lp2), torch.tensor(want_lp), rtol=0, atol=1e-5)


def test_a_row_is_cut_back_to_the_shared_prefix(llama):
    """A prompt that leaves the cached one part-way reuses only the shared part: the slots past it
    (the old prompt's tail and its output) are not attended."""
    eng = Engine(llama, max_running=1, prompt_cache=True)
    p1 = ids(24, seed=3)
    run(eng, p1, 8)
    tail = [t for t in ids(12, seed=4) if t != p1[10]][:9]
    p2 = p1[:10] + tail
    out2, lp2, cached = run(eng, p2, 8)
    assert cached == 10
    assert_like_fresh(llama, p2, 8, out2, lp2)
    same, lp_same, cached = run(eng, p2, 8)  # the same prompt again: all but its last token reused
    assert cached == len(p2) - 1 and same == out2
    torch.testing.assert_close(torch.tensor(lp_same), torch.tensor(lp2), rtol=0, atol=1e-5)


def test_the_row_with_the_longest_prefix_is_chosen(llama):
    eng = Engine(llama, max_running=3, prompt_cache=True)
    a, b, c = [1] + ids(8, seed=5), [2] + ids(10, seed=6), [3] + ids(6, seed=7)  # no two share a first token
    outs = {}
    for name, p in (("a", a), ("b", b), ("c", c)):  # one after another: rows 0, 1, 2 (the longest free first)
        outs[name] = run(eng, p, 5)[0]
    assert [r[:3] for r in eng.row_tokens] == [a[:3], b[:3], c[:3]]
    b2 = b + outs["b"] + ids(4, seed=8)
    out, lp, cached = run(eng, b2, 5)
    assert cached == len(b) + len(outs["b"]) - 1 and eng.row_tokens[1][: len(b)] == b
    assert_like_fresh(llama, b2, 5, out, lp)
    d = [4] + ids(5, seed=9)  # shares nothing: takes the row freed longest ago (a's), keeping b's and c's
    assert run(eng, d, 3)[2] == 0
    assert eng.row_tokens[0][:len(d)] == d and eng.row_tokens[2][:len(c)] == c


def test_a_prefix_is_copied_from_a_running_request(llama):
    """Two clients sending the same system prompt: the second, arriving while the first decodes,
    gets the shared prefix copied from the first one's row instead of prefilling it; neither
    answer changes."""
    eng = Engine(llama, max_running=2, prompt_cache=True)
    system = [5] + ids(25, seed=13)
    a, b = system + ids(6, seed=14), system + [7] + ids(4, seed=15)
    assert a[len(system)] != 7
    ra = eng.submit(Request(prompt=a, max_tokens=10, stop_token_ids=[], logprobs=True))
    events = eng.step() + eng.step()  # a is prefilled and decoding
    assert any(e.request_id == ra and e.token is not None for e in events)
    rb = eng.submit(Request(prompt=b, max_tokens=8, stop_token_ids=[], logprobs=True))
    while eng.has_work:
        events += eng.step()
    got = {r: [e for e in events if e.request_id == r and e.token is not None] for r in (ra, rb)}
    last_b = [e for e in events if e.request_id == rb][-1]
    assert last_b.cached_tokens == len(system)
    for r, p, n in ((ra, a, 10), (rb, b, 8)):
        assert_like_fresh(llama, p, n, [e.token for e in got[r]], [e.logprob for e in got[r]])


def test_off_by_default_and_where_cached_keys_depend_on_more_than_positions(llama, tmp_path):
    p = ids(12, seed=10)
    eng = Engine(llama, max_running=1)
    run(eng, p, 4)
    assert not eng.prompt_cache and run(eng, p, 4)[2] == 0
    write_qwen_v1(tmp_path)  # NTK alpha fixed at each row's whole prompt: rows are never reused
    qwen = lmzoo.from_pretrained(tmp_path, dtype=torch.float32)
    assert not Engine(qwen, max_running=1, prompt_cache=True).prompt_cache


def test_left_padded_prefills_are_not_reused(llama):
    """Prompts prefilled together (batch_prefill) sit left-padded in their rows: slot i is not token i,
    so such a row is not offered for reuse."""
    eng = Engine(llama, max_running=2, batch_prefill=True, prompt_cache=True)
    short, long = ids(5, seed=11), ids(9, seed=12)
    list(eng.run([Request(prompt=short, max_tokens=3, stop_token_ids=[]),
                  Request(prompt=long, max_tokens=3, stop_token_ids=[])]))
    assert eng.row_tokens[0] is None and eng.row_tokens[1][:9] == long


def test_chat_turns_on_the_real_model(smollm2_model):
    """The default model through its chat template: the second turn finds the first turn's prompt and
    answer in the row (the template renders the answer as the model wrote it) and answers as a fresh
    engine does."""
    model, tok = smollm2_model
    first = [{"role": "user", "content": "What is the capital of France?"}]
    eng = Engine(model, tok, max_running=1, prompt_cache=True)
    answer = "".join(e.text for e in eng.run([Request(messages=first, max_tokens=16)]))
    turn = first + [{"role": "assistant", "content": answer}, {"role": "user", "content": "And of Italy?"}]

    def second(engine):
        events = list(engine.run([Request(messages=turn, max_tokens=16, logprobs=True)]))
        return ([e.token for e in events if e.token is not None], [e.logprob for e in events if e.token is not None],
                events[-1])

    got, lp, last = second(eng)
    want, want_lp, fresh = second(Engine(model, tok, max_running=1))
    assert len(tok.encode_chat(first)) < last.cached_tokens < last.prompt_tokens and fresh.cached_tokens == 0
    assert got == want
    torch.testing.assert_close(torch.tensor(lp), torch.tensor(want_lp), rtol=0, atol=1e-4)


def test_copy_prefix_checks_the_source_row(llama):
    from lmzoo.runtime.cache import KVCache

    cache = KVCache(llama, 2, 32)
    with torch.inference_mode():
        llama(torch.tensor([ids(5, seed=16)]), cache=cache, rows=[0])
    with pytest.raises(ValueError, match="copy of 6 slots outside row 0's 5"):
        cache.copy_prefix(0, 1, 6)
    cache.copy_prefix(0, 1, 3)
    assert cache.row_lengths() == [5, 3] and int(cache.n_valid[1]) == 3
    assert all(torch.equal(t[1, :, :3], t[0, :, :3]) for t in cache.k + cache.v)
