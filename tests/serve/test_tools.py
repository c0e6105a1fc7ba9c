"""Tool calling: the Hermes-format parser (streaming = whole, malformed calls kept as text), and a
real `lmzoo serve` process with Qwen2.5's real tokenizer and tool-calling chat template over a tiny
random-weight Qwen2 model, driven by the official client: forced calls (`required`, a named
function) are valid calls of the listed tools with arguments under their schemas — with random
weights, so only the constraint can make them so — in `tool_calls`, streamed or not; a tool result
goes back through the template; bad tool requests are 400s naming the field."""

from __future__ import annotations

import json
import shutil

import jsonschema
import openai
import pytest
import torch

from lmzoo.serve.tools import HERMES, ToolCallParser, detect_format
from tests.serve.test_server import start_server

CALLS = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
         '<tool_call>\n{"name": "get_time", "arguments": {"tz": "CET"}}\n</tool_call>')


def parse(text: str, pieces: int | None = None):
    p = ToolCallParser(HERMES)
    step = pieces or len(text)
    content = "".join(p.feed(text[i:i + step])[0] for i in range(0, len(text), step)) + p.flush()
    return content, [(c["index"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in p.calls]


def test_parser_streaming_equals_whole():
    whole = parse(CALLS)
    assert whole == ("Let me check.\n", [(0, "get_weather", {"city": "Paris"}), (1, "get_time", {"tz": "CET"})])
    for step in (1, 2, 3, 7):
        assert parse(CALLS, step) == whole


def test_parser_keeps_what_is_not_a_call():
    assert parse("a < b and <tool_c") == ("a < b and <tool_c", [])  # a held-back partial tag comes out
    bad = "<tool_call>\n{not json}\n</tool_call>"
    assert parse(bad) == (bad, [])
    assert parse("<tool_call>\n{\"name\": \"f\", \"argu") == ("<tool_call>\n{\"name\": \"f\", \"argu", [])
    assert parse("no calls here") == ("no calls here", [])


WEATHER = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
                                            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"tz": {"type": "string", "enum": ["UTC", "CET"]}}, "required": ["tz"],
        "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "description": "Time now", "parameters": TIME}}]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
MODEL = "qwen-tiny"


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory, qwen25_tokenizer_dir):
    import transformers

    d = tmp_path_factory.mktemp("qwen-tiny")
    cfg = transformers.Qwen2Config(vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                                   tie_word_embeddings=True)
    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(d)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(qwen25_tokenizer_dir / f, d / f)
    return d


@pytest.fixture(scope="module")
def client(qwen_dir):
    proc, base = start_server("--model", str(qwen_dir), "--served-model-name", MODEL)
    yield openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
    proc.terminate()
    proc.wait(timeout=20)


def test_qwen_template_is_hermes(qwen25_tokenizer_dir):
    template = json.loads((qwen25_tokenizer_dir / "tokenizer_config.json").read_text())["chat_template"]
    assert detect_format(template) is HERMES


def chat(client, **kw):
    msgs = kw.pop("messages", [{"role": "user", "content": "What is the weather in Paris?"}])
    return client.chat.completions.create(model=MODEL, messages=msgs, tools=TOOLS, **{"max_tokens": 120, **kw})


def check_calls(calls, names=None):
    assert calls
    for c in calls:
        assert c.type == "function" and c.id.startswith("call_")
        assert names is None or c.function.name in names
        jsonschema.validate(json.loads(c.function.arguments), SCHEMAS[c.function.name])


def test_required_gives_valid_calls(client):
    for seed in range(3):
        r = chat(client, tool_choice="required", temperature=1.0, seed=seed)
        c = r.choices[0]
        assert c.finish_reason == "tool_calls" and not c.message.content
        check_calls(c.message.tool_calls)


def test_named_function_and_one_call_only(client):
    r = chat(client, tool_choice={"type": "function", "function": {"name": "get_time"}}, temperature=1.0, seed=1,
             parallel_tool_calls=False)
    calls = r.choices[0].message.tool_calls
    assert len(calls) == 1 and calls[0].function.name == "get_time"
    check_calls(calls)


def test_streamed_calls_equal_non_streamed(client):
    kw = dict(tool_choice="required", temperature=1.0, seed=5)
    whole = chat(client, **kw).choices[0].message.tool_calls
    got: dict[int, dict] = {}
    finish = None
    for ch in chat(client, stream=True, **kw):
        d = ch.choices[0].delta
        for tc in d.tool_calls or []:
            slot = got.setdefault(tc.index, {"name": "", "arguments": ""})
            slot["name"] += tc.function.name or ""
            slot["arguments"] += tc.function.arguments or ""
        finish = ch.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert [(v["name"], json.loads(v["arguments"])) for _, v in sorted(got.items())] == \
        [(c.function.name, json.loads(c.function.arguments)) for c in whole]


def test_tool_results_go_back_through_the_template(client):
    first = chat(client, tool_choice="required", seed=2, temperature=1.0).choices[0].message
    call = first.tool_calls[0]
    msgs = [{"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp": 21})}]
    r = chat(client, messages=msgs, tool_choice="auto", max_tokens=8)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert r.usage.prompt_tokens > chat(client, tool_choice="none", max_tokens=1).usage.prompt_tokens


def test_bad_tool_requests(client):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, tool_choice={"type": "function", "function": {"name": "nope"}})
    assert e.value.body["param"] == "tool_choice" and "get_weather" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, tool_choice="required", response_format={"type": "json_object"})
    assert e.value.body["param"] == "response_format"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                       tools=TOOLS + TOOLS[:1])
    assert e.value.body["param"] == "tools"
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, messages=[{"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{bad"}}]}])
    assert e.value.body["param"] == "messages" and "not valid JSON" in e.value.body["message"]
