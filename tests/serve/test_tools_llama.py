"""Tool calling in Llama 3.1's JSON format: the format is read off Meta's real 3.1 / 3.2 / 3.3
templates (Qwen's stays Hermes); the bare-JSON parser (streaming = whole, "; "-joined calls, an
optional <|python_tag|>, replies that are not calls kept as text); and a real `lmzoo serve` process
over a tiny random-weight Llama with Llama 3.1's real tokenizer and chat template, driven by the
official client: forced calls are valid calls of the listed tools under their schemas (random
weights: only the constraint makes them so) in `tool_calls` with finish_reason tool_calls, streamed
or not; a tool result goes back as the template's `ipython` turn."""

from __future__ import annotations

import json

import openai
import pytest
import torch

from lmzoo.serve.tools import HERMES, LLAMA3_JSON, detect_format
from tests.serve.test_server import start_server
from tests.serve.test_tools import TOOLS, check_calls

CALLS = ('{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}; '
         '{"name": "get_time", "parameters": {"tz": "CET"}}')
WHOLE = ("", [(0, "get_weather", {"city": "Paris", "unit": "celsius"}), (1, "get_time", {"tz": "CET"})])
MODEL = "llama-tiny"
MAX_LEN = 640  # below the model's context of 2048: the cache's limit is the one a prompt meets


def parse(text: str, step: int | None = None):
    p = LLAMA3_JSON.parser()
    step = step or len(text)
    content = "".join(p.feed(text[i:i + step])[0] for i in range(0, len(text), step)) + p.flush()
    return content, [(c["index"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in p.calls]


def test_format_read_off_the_templates(llama_chat_templates, qwen25_tokenizer_dir):
    for template in llama_chat_templates.values():
        assert detect_format(template) is LLAMA3_JSON
    qwen = json.loads((qwen25_tokenizer_dir / "tokenizer_config.json").read_text())["chat_template"]
    assert detect_format(qwen) is HERMES


def test_parser_streaming_equals_whole():
    assert parse(CALLS) == WHOLE
    for step in (1, 2, 5, 9):
        assert parse(CALLS, step) == WHOLE
        assert parse("<|python_tag|>" + CALLS + "\n", step) == WHOLE


def test_parser_keeps_what_is_not_a_call():
    for text in ("The weather is {mild}.", '{"answer": 42}', '{"name": "f", "param', "  "):
        assert parse(text, 3) == (text, [])
    assert parse('{"name": "f", "parameters": {}} then prose', 4) == (" then prose", [(0, "f", {})])


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, llama31_tokenizer_dir):
    import shutil

    import transformers

    d = tmp_path_factory.mktemp("llama-tiny")
    cfg = transformers.LlamaConfig(vocab_size=128256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                                   tie_word_embeddings=True, bos_token_id=128000, eos_token_id=[128001, 128008, 128009])
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(d)
    for f in llama31_tokenizer_dir.iterdir():
        shutil.copy(f, d / f.name)
    return d


@pytest.fixture(scope="module")
def server(llama_dir):
    proc, base = start_server("--model", str(llama_dir), "--served-model-name", MODEL, "--max-len", str(MAX_LEN))
    yield base
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=120)


def chat(client, **kw):
    msgs = kw.pop("messages", [{"role": "user", "content": "What is the weather in Paris?"}])
    return client.chat.completions.create(model=MODEL, messages=msgs, tools=TOOLS, **{"max_tokens": 80, **kw})


def test_required_gives_valid_calls(client):
    for seed in range(2):
        c = chat(client, tool_choice="required", temperature=1.0, seed=seed).choices[0]
        assert c.finish_reason == "tool_calls" and not c.message.content
        check_calls(c.message.tool_calls)


def test_named_function_one_call(client):
    r = chat(client, tool_choice={"type": "function", "function": {"name": "get_time"}}, temperature=1.0, seed=3,
             parallel_tool_calls=False)
    calls = r.choices[0].message.tool_calls
    assert len(calls) == 1 and calls[0].function.name == "get_time"
    check_calls(calls, ["get_time"])


def test_streamed_calls_equal_non_streamed(client):
    kw = dict(tool_choice="required", temperature=1.0, seed=4, parallel_tool_calls=False)
    whole = chat(client, **kw).choices[0].message.tool_calls
    got: dict[int, dict] = {}
    finish, content = None, ""
    for ch in chat(client, stream=True, **kw):
        d = ch.choices[0].delta
        content += d.content or ""
        for tc in d.tool_calls or []:
            slot = got.setdefault(tc.index, {"name": "", "arguments": ""})
            slot["name"] += tc.function.name or ""
            slot["arguments"] += tc.function.arguments or ""
        finish = ch.choices[0].finish_reason or finish
    assert finish == "tool_calls" and content == ""
    assert [(v["name"], json.loads(v["arguments"])) for _, v in sorted(got.items())] == \
        [(c.function.name, json.loads(c.function.arguments)) for c in whole]


def test_tool_result_goes_back_as_ipython(client, server):
    import httpx

    call = chat(client, tool_choice="required", seed=2, temperature=1.0,
                parallel_tool_calls=False).choices[0].message.tool_calls[0]
    msgs = [{"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp": 21})}]
    r = chat(client, messages=msgs, tool_choice="auto", max_tokens=4)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
    ids = httpx.post(server + "/tokenize", json={"messages": msgs, "tools": TOOLS}).json()["tokens"]
    text = httpx.post(server + "/detokenize", json={"tokens": ids}).json()["prompt"]  # specials skipped
    args = json.loads(call.function.arguments)
    assert "Environment: ipython" in text and '"name": "get_time"' in text  # the tools, in Meta's words
    assert f'assistant\n\n{{"name": "{call.function.name}", "parameters": {json.dumps(args)}}}ipython' in text
    # the template writes a tool's string result with tojson (a Jinja string is iterable): as HF renders it
    assert 'ipython\n\n' + json.dumps(json.dumps({"temp": 21})) + "assistant" in text


def test_none_renders_no_tools(client):
    free = chat(client, tool_choice="none", max_tokens=1).usage.prompt_tokens
    assert chat(client, tool_choice="auto", max_tokens=1).usage.prompt_tokens > free + 50


def test_prompt_beyond_the_cache_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "word " * 700}])
    assert e.value.body["code"] == "context_length_exceeded" and e.value.body["param"] == "messages"
    assert f"max_len of {MAX_LEN}" in e.value.body["message"]
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "word " * 500}])
    assert r.usage.prompt_tokens + r.usage.completion_tokens <= MAX_LEN and r.choices[0].finish_reason == "length"
