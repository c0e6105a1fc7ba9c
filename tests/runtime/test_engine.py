"""The engine (lmzoo.runtime.engine): continuous batching gives every request exactly what it gets
alone, for the attention/position families that batch differently; seeded sampling is per request;
cancellation frees the slot; stop strings across token boundaries; logprobs against the reference."""

from __future__ import annotations

import pytest
import torch

import lmzoo
from lmzoo import Engine, Request, SamplingParams
from lmzoo.errors import GenerationError
from lmzoo.runtime.stop import StopMatcher
from tests.helpers import random_ids
from tests.test_parity import V, build_reference, write_qwen_v1

# 8 requests: prompt lengths, new tokens, and the engine step at which each arrives
LENGTHS = [3, 11, 6, 17, 4, 9, 14, 7]
NEW = [9, 5, 12, 7, 10, 6, 8, 11]
ARRIVE = [0, 0, 1, 3, 4, 4, 7, 9]


def prompts(vocab: int, lo: int = 0, fix=None) -> list[list[int]]:
    out = [random_ids(vocab - lo, (1, n), seed=10 + i)[0].add(lo).tolist() for i, n in enumerate(LENGTHS)]
    return [fix(p) for p in out] if fix else out


def alone(model, prompt, n, sampling=None, **kw) -> list[int]:
    eng = Engine(model, max_running=1)
    eng.submit(Request(prompt=prompt, max_tokens=n, stop_token_ids=[], sampling=sampling or SamplingParams(), **kw))
    return [e.token for e in eng.run() if e.token is not None]


def staggered(model, ps, sampling=lambda i: SamplingParams(), **engine_kw) -> dict[int, list[int]]:
    """Run the 8 requests through one engine, each submitted at its arrival step."""
    eng = Engine(model, **{"max_running": 4, "prefill_chunk": 5, "step_tokens": 8, **engine_kw})
    out: dict[str, list[int]] = {}
    ids, step = {}, 0
    while step <= max(ARRIVE) or eng.has_work:
        for i, a in enumerate(ARRIVE):
            if a == step:
                ids[eng.submit(Request(prompt=ps[i], max_tokens=NEW[i], stop_token_ids=[], sampling=sampling(i)))] = i
        if step > 1 and len(eng.running) > 1:
            staggered.batched = True
        for e in eng.step():
            out.setdefault(e.request_id, [])
            if e.token is not None:
                out[e.request_id].append(e.token)
        step += 1
    return {ids[r]: toks for r, toks in out.items()}


FAMILIES = ["llama-gqa", "gpt2", "bloom", "mistral-window", "mixtral", "deepseek-v2-lite", "falcon-rw-alibi"]


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    build_reference(request.param, d)
    return lmzoo.from_pretrained(d, dtype=torch.float32)


def test_batched_greedy_equals_alone(family_model, monkeypatch):
    ps = prompts(V)
    staggered.batched = False
    groups = []
    original = Engine._prefill_group
    monkeypatch.setattr(Engine, "_prefill_group", lambda self, *a: groups.append(original(self, *a)) or groups[-1])
    got = staggered(family_model, ps)  # prefill chunks of 5 tokens, 8 tokens per step
    assert staggered.batched  # requests really shared decode steps
    whole = staggered(family_model, ps, prefill_chunk=32, step_tokens=64, batch_prefill=True)  # several per forward
    assert any(len(g) > 1 for g in groups)  # some prompts were prefilled together, left-padded
    for i, p in enumerate(ps):
        assert got[i] == alone(family_model, p, NEW[i]) == whole[i], f"request {i}"


@pytest.mark.parametrize("kv_dtype", [None, "float16"])
def test_q8_gguf_batched_greedy_equals_alone(smollm2_path, kv_dtype):
    """The default GGUF with 8-bit activations (AVX2 and AVX-512 builds: the 16-row tiled kernels, rows of
    a batch in passes of 8) and either cache: every request's greedy tokens in a staggered batch equal
    its tokens alone."""
    model = lmzoo.from_pretrained(smollm2_path, activations="q8")
    ps = prompts(model.config.vocab_size, lo=100)
    got = staggered(model, ps, kv_dtype=kv_dtype)
    assert staggered.batched
    for i, p in enumerate(ps):
        eng = Engine(model, max_running=1, kv_dtype=kv_dtype)
        eng.submit(Request(prompt=p, max_tokens=NEW[i], stop_token_ids=[]))
        assert got[i] == [e.token for e in eng.run() if e.token is not None], f"request {i}"


def test_float16_kv_cache_batches_too(tmp_path):
    """kv_dtype="float16" (half the cache's memory, keys and values rounded as llama.cpp stores them):
    batched greedy tokens still equal each request's alone with the same cache, and stay close to the
    float32 cache's (the tiny random model's near-ties aside: most requests agree in full)."""
    build_reference("llama-gqa", tmp_path)
    model = lmzoo.from_pretrained(tmp_path, dtype=torch.float32)
    assert Engine(model, kv_dtype="float16").cache.k[0].dtype == torch.float16
    ps = prompts(V)
    got = staggered(model, ps, kv_dtype="float16")
    for i, p in enumerate(ps):
        eng = Engine(model, max_running=1, kv_dtype="float16")
        eng.submit(Request(prompt=p, max_tokens=NEW[i], stop_token_ids=[]))
        assert got[i] == [e.token for e in eng.run() if e.token is not None], f"request {i}"
    full = staggered(model, ps)
    assert sum(got[i] == full[i] for i in range(len(ps))) >= len(ps) - 2


def test_growing_cache_equals_a_whole_one(tmp_path, monkeypatch):
    """The eager cache grows on demand (doubling from GROW_STEP slots per row); batched greedy tokens
    and logprobs with a cache that grew many times equal those with the cache allocated whole."""
    from lmzoo.runtime.cache import KVCache

    build_reference("llama-gqa", tmp_path)
    model = lmzoo.from_pretrained(tmp_path, dtype=torch.float32)
    ps = prompts(V)
    monkeypatch.setattr(KVCache, "GROW_STEP", 4)
    grown = staggered(model, ps)
    small = Engine(model, max_running=4)
    assert small.cache.capacity == 4 < small.cache.max_len and small.cache.full_nbytes() > small.cache.nbytes()
    monkeypatch.setattr(KVCache, "GROW_STEP", 1 << 30)  # the first allocation is the whole cache
    whole = staggered(model, ps)
    assert Engine(model, max_running=4).cache.capacity == model.config.max_seq_len
    assert grown == whole and all(len(grown[i]) == NEW[i] for i in range(len(NEW)))
    monkeypatch.setattr(KVCache, "GROW_STEP", 4)
    eng = Engine(model, max_running=2)
    for p in ps[:2]:
        eng.submit(Request(prompt=p, max_tokens=8, stop_token_ids=[]))
    list(eng.run())
    assert 4 < eng.cache.capacity <= 2 * (max(map(len, ps[:2])) + 8)  # grown to what was used, not max_len


def test_batched_seeded_sampling_equals_alone(family_model):
    ps = prompts(V)
    params = lambda i: SamplingParams(temperature=0.9, top_p=0.9, top_k=20, seed=100 + i)  # noqa: E731
    got = staggered(family_model, ps, sampling=params)
    for i, p in enumerate(ps):
        assert got[i] == alone(family_model, p, NEW[i], sampling=params(i)), f"request {i}"


def test_latent_mla_cache_batches_too(tmp_path):
    build_reference("deepseek-v2-lite", tmp_path)
    m = lmzoo.from_pretrained(tmp_path, dtype=torch.float32, mla_cache="latent")
    ps = prompts(V)
    got = staggered(m, ps)
    for i in (0, 3, 7):
        assert got[i] == alone(m, ps[i], NEW[i])


def test_qwen_v1_ntk_alpha_per_request(tmp_path):
    """Qwen v1 fixes its NTK alpha at each prompt's prefill (prompts beyond seq_length=40 here)."""
    write_qwen_v1(tmp_path)
    m = lmzoo.from_pretrained(tmp_path)
    ps = [p * 4 for p in prompts(V)]  # 12..68 tokens: alpha 1, 3 and 7 in one batch
    got = staggered(m, ps)
    for i, p in enumerate(ps):
        assert got[i] == alone(m, p, NEW[i]), f"request {i}"


def test_glm_prefix_lm_per_request(tmp_path_factory):
    from tests.test_chatglm6b import GMASK, SOP, write_checkpoint

    d, _ = write_checkpoint(tmp_path_factory.mktemp("chatglm6b"))
    m = lmzoo.from_pretrained(d)
    ps = prompts(140, lo=5, fix=lambda p: p + [GMASK, SOP])
    got = staggered(m, ps)
    for i, p in enumerate(ps):
        assert got[i] == alone(m, p, NEW[i]), f"request {i}"


def test_cancel_frees_the_slot(tmp_path):
    build_reference("llama-gqa", tmp_path)
    m = lmzoo.from_pretrained(tmp_path, dtype=torch.float32)
    eng = Engine(m, max_running=2)
    a, b, c = (eng.submit(Request(prompt=[1, 2, 3 + i], max_tokens=50, stop_token_ids=[])) for i in range(3))
    for _ in range(3):
        eng.step()
    assert {r.id for r in eng.running.values()} == {a, b} and [r.id for r in eng.waiting] == [c]
    eng.cancel(a)
    events = eng.step()
    assert [e.finish_reason for e in events if e.request_id == a] == ["cancelled"]
    assert {r.id for r in eng.running.values()} == {b, c}  # c took a's slot in the same step
    later = [e for _ in range(5) for e in eng.step()]
    assert not any(e.request_id == a for e in later)


def test_request_errors_are_clear(tmp_path):
    build_reference("llama-gqa", tmp_path)
    m = lmzoo.from_pretrained(tmp_path, dtype=torch.float32)
    eng = Engine(m, max_len=32)
    with pytest.raises(GenerationError, match="exactly one of prompt"):
        eng.submit(Request())
    with pytest.raises(lmzoo.ContextLengthError, match="longer than the engine's max_len of 32"):
        eng.submit(Request(prompt=[1] * 33))
    with pytest.raises(GenerationError, match=rf"\[0, {V}\)"):
        eng.submit(Request(prompt=[1, V]))
    with pytest.raises(GenerationError, match="need a tokenizer"):
        eng.submit(Request(prompt=[1], stop=["x"]))
    with pytest.raises(GenerationError, match="kv_dtype: unknown dtype 'int3'"):
        Engine(m, kv_dtype="int3")
    # a prompt that fills the context gets no new token: finish_reason length, at once
    eng.submit(Request(prompt=[1] * 32, id="full"))
    assert [(e.token, e.finish_reason) for e in eng.run()] == [(None, "length")]


def test_logprobs_match_the_reference(tmp_path):
    ref = build_reference("llama-gqa", tmp_path)
    m = lmzoo.from_pretrained(tmp_path, dtype=torch.float32)
    prompt = random_ids(V, (1, 7))[0].tolist()
    eng = Engine(m)
    eng.submit(Request(prompt=prompt, max_tokens=8, stop_token_ids=[], logprobs=True, top_logprobs=5,
                       sampling=SamplingParams(temperature=1.0, seed=0)))
    events = list(eng.run())
    toks = [e.token for e in events]
    with torch.no_grad():
        ref_lp = torch.log_softmax(ref(torch.tensor([prompt + toks])).logits[0].float(), -1)
    for i, e in enumerate(events):
        row = ref_lp[len(prompt) - 1 + i]
        assert abs(e.logprob - float(row[e.token])) <= 1e-4
        v, idx = row.topk(5)
        assert [t for t, _ in e.top_logprobs] == idx.tolist()
        assert max(abs(a - float(b)) for (_, a), b in zip(e.top_logprobs, v)) <= 1e-4


@pytest.mark.parametrize("deltas,stops,released,stopped", [
    (["Hi #", "#", " there"], ["###"], "Hi ## there", False),
    (["Hi #", "##", " there"], ["###"], "Hi ", True),
    (["ab", "cSTO", "P!"], ["STOP", "xyz"], "abc", True),
    (["a", "b"], [], "ab", False),
    (["x<|", "im_", "end|>y"], ["<|im_end|>"], "x", True),
])
def test_stop_matcher(deltas, stops, released, stopped):
    m = StopMatcher(stops)
    out = ""
    for d in deltas:
        out += m.feed(d)
        assert not any(s in out for s in stops)
    out += m.flush()
    assert (out, m.stopped) == (released, stopped)


def test_stop_string_across_token_boundaries(smollm2_model):
    """A stop string spanning several tokens of the real model's output ends the text right before it."""
    model, tok = smollm2_model
    prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": "Name three colours."}]),
                        add_special_tokens=False)
    eng = Engine(model, tok)
    eng.submit(Request(prompt=prompt, max_tokens=24))
    events = list(eng.run())
    full = "".join(e.text for e in events)
    pieces = [tok.decode([e.token]) for e in events]
    # a stop string made of the end of token 4 and the start of token 6 (spans three tokens)
    cut = len("".join(pieces[:4])) - 1
    stop = full[cut: len("".join(pieces[:5])) + 1]
    assert len(stop) >= 3 and full.find(stop) == cut
    eng.submit(Request(prompt=prompt, max_tokens=24, stop=[stop]))
    events = list(eng.run())
    assert "".join(e.text for e in events) == full[:cut]
    assert events[-1].finish_reason == "stop" and len(events) <= 6


def test_messages_and_eos(smollm2_model):
    model, tok = smollm2_model
    eng = Engine(model, tok)
    eng.submit(Request(messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=40))
    events = list(eng.run())
    assert "Paris" in "".join(e.text for e in events)
    assert events[-1].finish_reason == "eos" and events[-1].token in tok.eos_token_ids
