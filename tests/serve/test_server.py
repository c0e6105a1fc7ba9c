"""The OpenAI-compatible server as a real process (`lmzoo serve` on loopback), driven by the official
`openai` client: models, chat and completions (stream and not), usage, logprobs, seeds, error shapes
and codes, API keys, the bounded queue, disconnect cancellation, and continuous batching that does
not change any answer."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

from lmzoo import Engine, Request

MODEL = "SmolLM2-135M-Instruct.Q4_1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(*args: str):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lmzoo", "serve", "--port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:  # bounded: the model loads in a few seconds
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()}")
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become healthy in 120 s")


@pytest.fixture(scope="module")
def server():
    proc, base = start_server("--max-running", "8")
    yield base
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=120)


def ask(client, content: str, **kw):
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}],
                                          **{"temperature": 0, "max_tokens": 24, **kw})


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list()] == [MODEL]
    assert httpx.get(server + "/health").json()["status"] == "ok"


def test_chat_answers_with_usage(client):
    r = ask(client, "What is the capital of France?")
    assert "Paris" in r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length") and r.object == "chat.completion"
    assert r.usage.completion_tokens <= 24 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_stream_equals_non_stream_and_reports_usage(client):
    whole = ask(client, "Name a colour.", max_tokens=16)
    chunks = list(ask(client, "Name a colour.", max_tokens=16, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == \
        [whole.choices[0].finish_reason]


def test_completion_equals_the_engine(client, smollm2_model):
    """The server computes what the library computes: same prompt ids, same greedy tokens."""
    model, tok = smollm2_model
    prompt = "The three primary colours are"
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
    eng = Engine(model, tok)
    eng.submit(Request(prompt=tok.encode(prompt), max_tokens=12))
    assert r.choices[0].text == "".join(e.text for e in eng.run())
    assert r.object == "text_completion"


def test_seeded_sampling_repeats_and_n_choices(client):
    kw = dict(temperature=1.0, top_p=0.9, seed=7, max_tokens=12)
    a, b = ask(client, "Tell me a word.", **kw), ask(client, "Tell me a word.", **kw)
    assert a.choices[0].message.content == b.choices[0].message.content
    many = ask(client, "Tell me a word.", n=3, **kw)
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert many.choices[0].message.content == a.choices[0].message.content  # choice i uses seed + i


def test_logprobs(client):
    r = ask(client, "Say yes.", max_tokens=6, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for t in content:
        tops = [x.logprob for x in t.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True) and t.logprob <= 0
        assert abs(t.logprob - tops[0]) < 1e-5  # greedy: the chosen token is the most likely


def test_error_shapes(client, server):
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, "x", temperature=5)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, "word " * 5000)
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:  # SmolLM2's template does not render tools
        ask(client, "x", tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    assert e.value.body["param"] == "tools" and "does not render tools" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, "x", response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 7}}})
    assert e.value.body["param"] == "response_format"
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, "x", tool_choice="required")
    assert e.value.body["param"] == "tool_choice"
    r = httpx.post(server + "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                         "population": {"type": "integer", "minimum": 0}},
        "required": ["city", "population"], "additionalProperties": False}


def test_response_format_json_schema_and_json_object(client):
    """The output is constrained while decoding: valid under the schema even when sampled hot, in a
    stream too; json_object gives a JSON object."""
    import jsonschema

    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY, "strict": True}}
    r = ask(client, "Tell me about Paris.", response_format=fmt, temperature=1.0, seed=3, max_tokens=60, n=2)
    for c in r.choices:
        jsonschema.validate(json.loads(c.message.content), CITY)
        assert c.finish_reason == "stop"
    stream = ask(client, "Tell me about Paris.", response_format=fmt, temperature=1.0, seed=3, max_tokens=60,
                 stream=True)
    text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    assert text == r.choices[0].message.content  # same seed, same constrained text, streamed
    r = ask(client, "Reply in JSON: what is the capital of France?", response_format={"type": "json_object"},
            max_tokens=40)
    assert r.choices[0].finish_reason == "stop"
    assert json.loads(r.choices[0].message.content) == {"capital": "Paris"}


def test_concurrent_streams_equal_each_alone(server, client):
    """8 clients stream at once (continuous batching); every greedy answer equals its answer alone."""
    questions = [f"Give me a fact about the number {i}." for i in range(8)]
    alone = [ask(client, q, max_tokens=20).choices[0].message.content for q in questions]
    aclient = openai.AsyncOpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=120)

    async def one(q: str) -> str:
        stream = await aclient.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": q}],
                                                       temperature=0, max_tokens=20, stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def all_at_once():
        return await asyncio.gather(*(one(q) for q in questions))

    assert asyncio.run(all_at_once()) == alone


def test_disconnect_cancels_the_request(server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Count to a thousand."}],
            "max_tokens": 3000, "temperature": 0, "stream": True}
    with httpx.stream("POST", server + "/v1/chat/completions", json=body, timeout=60) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i >= 6:
                break  # leave mid-stream
    deadline = time.time() + 20
    while httpx.get(server + "/health").json()["running"] and time.time() < deadline:
        time.sleep(0.1)
    assert httpx.get(server + "/health").json()["running"] == 0
    m = scrape(server)
    assert m["lmzoo_requests_running"] == 0 and m["lmzoo_requests_waiting"] == 0
    assert m[("lmzoo_requests_finished_total", "cancelled")] >= 1  # the slot was freed by the disconnect


def scrape(server) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    r = httpx.get(server + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, s.labels.get("finish_reason")) if "finish_reason" in s.labels else s.name] = s.value
    return out


def test_metrics_count_tokens_and_latencies(client, server):
    before = scrape(server)
    r = ask(client, "Name three colours.", max_tokens=12)
    after = scrape(server)
    done = after["lmzoo_requests_finished_total", "length"] + after.get(("lmzoo_requests_finished_total", "stop"), 0) \
        - before.get(("lmzoo_requests_finished_total", "length"), 0) - before.get(("lmzoo_requests_finished_total", "stop"), 0)
    assert done == 1
    assert after["lmzoo_generation_tokens_total"] - before.get("lmzoo_generation_tokens_total", 0) == \
        r.usage.completion_tokens
    assert after["lmzoo_prompt_tokens_total"] - before.get("lmzoo_prompt_tokens_total", 0) == r.usage.prompt_tokens
    assert after["lmzoo_time_to_first_token_seconds_count"] - before.get("lmzoo_time_to_first_token_seconds_count", 0) == 1
    assert after["lmzoo_inter_token_latency_seconds_count"] - before.get("lmzoo_inter_token_latency_seconds_count", 0) \
        == r.usage.completion_tokens - 1
    assert after["lmzoo_e2e_request_latency_seconds_sum"] > 0


def test_api_key_and_bounded_queue():
    proc, base = start_server("--api-key", "sekret", "--max-running", "1", "--max-queued", "1")
    try:
        with pytest.raises(openai.AuthenticationError):
            ask(openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0), "x")
        assert httpx.get(base + "/health").status_code == 200  # open without a key
        client = openai.OpenAI(base_url=base + "/v1", api_key="sekret", max_retries=0, timeout=120)
        assert ask(client, "Hi", max_tokens=3).choices[0].message.content
        aclient = openai.AsyncOpenAI(base_url=base + "/v1", api_key="sekret", max_retries=0, timeout=120)

        async def one():
            try:
                await aclient.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Count."}],
                                                      max_tokens=60, temperature=0)
                return "ok"
            except openai.RateLimitError as e:
                assert e.response.headers.get("retry-after") == "1"
                return "429"

        async def burst():
            return await asyncio.gather(*(one() for _ in range(5)))

        got = asyncio.run(burst())  # 1 running + 1 queued; the rest are refused
        assert got.count("429") >= 1 and got.count("ok") >= 2
    finally:
        proc.terminate()
        proc.wait(timeout=20)



def test_sigterm_drains_in_flight_requests():
    """SIGTERM: the running stream still completes ([DONE] after its finish_reason), then the process
    exits cleanly."""
    import signal

    proc, base = start_server()
    try:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Count from one to fifty."}],
                "max_tokens": 40, "temperature": 0, "stream": True}
        lines = []
        with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line:
                    lines.append(line)
                if len(lines) == 3:
                    proc.send_signal(signal.SIGTERM)
        assert lines[-1] == "data: [DONE]" and any('"finish_reason": "' in x for x in lines)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_second_turn_reports_its_history_as_cached(client, server):
    """A chat client resends the conversation each turn; the server starts the turn on the cache row
    holding it and prefills only the new part (the engine's prompt_cache), reported as OpenAI
    reports prompt caching (usage.prompt_tokens_details.cached_tokens) and counted in /metrics."""
    first = [{"role": "user", "content": "Name a large city in Japan."}]
    r1 = client.chat.completions.create(model=MODEL, messages=first, temperature=0, max_tokens=12)
    turn = first + [{"role": "assistant", "content": r1.choices[0].message.content},
                    {"role": "user", "content": "And one in Korea?"}]
    before = scrape(server)
    r2 = client.chat.completions.create(model=MODEL, messages=turn, temperature=0, max_tokens=12)
    cached = r2.usage.prompt_tokens_details.cached_tokens
    assert r1.usage.prompt_tokens <= cached < r2.usage.prompt_tokens
    assert scrape(server)["lmzoo_prompt_cached_tokens_total"] - before.get("lmzoo_prompt_cached_tokens_total", 0) \
        == cached
