"""MCP both ways with the official SDK. Server: lmzoo's tools in-process (SDK client against the
MCPServer object, the real model behind an EngineLoop), over stdio (`lmzoo mcp` as a subprocess) and
over Streamable HTTP at /mcp of a real `lmzoo serve` (foreign Origin refused). Host: the tool loop
with a scripted model (canned tool-call text) against a real stdio MCP server, its results fed back
through Qwen2.5's real chat template; `lmzoo chat --mcp` refuses a model that cannot call tools."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

import lmzoo
from lmzoo import Engine, Request
from lmzoo.serve.app import ServerState
from lmzoo.serve.mcp import McpTools, create_mcp_server, run_tool_loop
from lmzoo.serve.scheduler import EngineLoop
from lmzoo.serve.tools import HERMES
from lmzoo.tokenizer import load_tokenizer
from tests.serve.test_server import MODEL, start_server

CALC = [sys.executable, str(Path(__file__).with_name("mcp_calc_server.py"))]
Q = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def state(smollm2_model):
    model, tok = smollm2_model
    s = ServerState()
    s.attach(EngineLoop(Engine(model, tok, max_running=4)), tok)
    yield s
    s.loop.close()


def call(server, name: str, args: dict):
    async def go():
        async with Client(server) as c:
            return await c.call_tool(name, args)
    return asyncio.run(go())


def test_tools_listed_with_schemas(state):
    async def go():
        async with Client(create_mcp_server(state, model_name=MODEL)) as c:
            return {t.name: t for t in (await c.list_tools()).tools}
    tools = asyncio.run(go())
    assert set(tools) == {"chat", "generate", "tokenize", "count_tokens", "list_models", "show_model",
                          "estimate_memory"}
    chat = tools["chat"].input_schema
    assert chat["required"] == ["messages"] and chat["properties"]["max_tokens"]["maximum"] == 8192
    assert tools["estimate_memory"].input_schema["properties"]["task"]["enum"] == ["infer", "train", "lora", "qlora"]
    assert tools["chat"].output_schema["properties"]["finish_reason"]


def test_generation_tools_equal_the_engine(state, smollm2_model):
    model, tok = smollm2_model
    server = create_mcp_server(state, model_name=MODEL)
    r = call(server, "chat", {"messages": Q, "max_tokens": 16})
    alone = "".join(ev.text for ev in Engine(model, tok).run([Request(messages=Q, max_tokens=16)]))
    assert not r.is_error and r.structured_content["text"] == alone and "Paris" in alone
    assert r.structured_content["completion_tokens"] <= 16
    r = call(server, "generate", {"prompt": "The capital of France is", "max_tokens": 4})
    ids = tok.encode("The capital of France is")
    raw = "".join(ev.text for ev in Engine(model, tok).run([Request(prompt=ids, max_tokens=4)]))
    assert r.structured_content["text"] == raw
    r = call(server, "tokenize", {"text": "héllo wörld"})
    assert r.structured_content["tokens"] == tok.encode("héllo wörld")
    r = call(server, "count_tokens", {"messages": Q})
    assert r.structured_content["count"] == len(tok.encode_chat(Q))


def test_catalog_tools(state):
    server = create_mcp_server(state, model_name=MODEL)
    assert call(server, "list_models", {"family": "qwen"}).structured_content["models"] == lmzoo.list_models("qwen")
    show = call(server, "show_model", {"name": "Llama-2-7B"}).structured_content
    assert show["count"]["total"] == lmzoo.count_params("Llama-2-7B").total
    mem = call(server, "estimate_memory", {"name": "Llama-2-7B", "task": "qlora"}).structured_content
    assert mem["total_bytes"] == lmzoo.estimate_memory("Llama-2-7B", task="qlora").total


def test_mistakes_are_error_results(state):
    server = create_mcp_server(state, model_name=MODEL)
    cases = [("show_model", {"name": "Llama-9-1T"}, "Llama-9-1T"), ("list_models", {"family": "nope"}, "families"),
             ("count_tokens", {"text": "a", "messages": Q}, "exactly one"),
             ("chat", {"messages": Q, "temperature": 5}, "temperature"),
             ("chat", {"messages": [{"role": "user", "content": "word " * 9000}]}, "longer than"),
             ("estimate_memory", {"name": "Llama-2-7B", "task": "bake"}, "task")]
    for name, args, needle in cases:
        r = call(server, name, args)
        assert r.is_error and needle in r.content[0].text, (name, r.content[0].text)


def test_lmzoo_mcp_over_stdio():
    async def go():
        params = StdioServerParameters(command=sys.executable, args=["-m", "lmzoo", "mcp"])
        async with Client(params) as c:  # the tools wait for the model to load
            return await c.call_tool("chat", {"messages": Q, "max_tokens": 12})
    r = asyncio.run(go())
    assert not r.is_error and "Paris" in r.structured_content["text"]


def test_streamable_http_in_lmzoo_serve():
    proc, base = start_server()
    try:
        async def go():
            async with Client(base + "/mcp") as c:
                return await c.call_tool("chat", {"messages": Q, "max_tokens": 12})
        r = asyncio.run(go())
        assert not r.is_error and "Paris" in r.structured_content["text"]
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "x", "version": "1"}}}
        hdrs = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        evil = httpx.post(base + "/mcp", json=init, headers={**hdrs, "Origin": "http://evil.example"})
        assert evil.status_code == 403  # DNS rebinding: a foreign web page may not drive the local model
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_host_loop_runs_calls_and_feeds_results_back(qwen25_tokenizer_dir):
    tok = load_tokenizer(qwen25_tokenizer_dir)
    seen: list[str] = []
    script = ['<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>\n'
              '<tool_call>\n{"name": "fail", "arguments": {"reason": "test"}}\n</tool_call>',
              "2 + 3 = 5."]

    async def scripted(messages, tools):  # the "model": canned replies; records the prompt it was given
        seen.append(tok.apply_chat_template(messages, tools=tools))
        return script[len(seen) - 1]

    async def go():
        async with McpTools([" ".join(CALC)]) as tools:
            assert [t["function"]["name"] for t in tools.tools] == ["add", "fail"]
            assert tools.tools[0]["function"]["parameters"]["required"] == ["a", "b"]
            msgs = [{"role": "user", "content": "What is 2 + 3?"}]
            return await run_tool_loop(msgs, tools, scripted, HERMES), msgs
    answer, msgs = asyncio.run(go())
    assert answer == "2 + 3 = 5."
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "tool", "assistant"]
    assert json.loads(msgs[2]["content"]) == {"result": 5}
    assert msgs[3]["content"].startswith("error:") and "failed on purpose: test" in msgs[3]["content"]
    # the second prompt holds the calls and both results, rendered by Qwen2.5's template
    assert '"name": "add"' in seen[1] and '<tool_response>\n{"result": 5}\n</tool_response>' in seen[1]
    assert '"add"' in seen[0] and "<tools>" in seen[0]


def test_chat_mcp_refuses_a_model_without_tools():
    r = subprocess.run([sys.executable, "-m", "lmzoo", "chat", "--mcp", " ".join(CALC)], input="hi\n",
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "does not render tools" in r.stderr and "Traceback" not in r.stderr
