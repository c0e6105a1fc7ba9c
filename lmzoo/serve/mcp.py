"""lmzoo over the Model Context Protocol (the official `mcp` SDK), both ways.

As an MCP server (`lmzoo mcp` over stdio for Claude Desktop / Cursor, and Streamable HTTP at `/mcp`
inside `lmzoo serve`, Origin and Host checked against loopback): tools

    chat(messages, max_tokens, temperature, seed)      the served model, through its chat template
    generate(prompt, max_tokens, temperature, seed)    raw completion of a text prompt
    tokenize(text) / count_tokens(text | messages)     the served tokenizer
    list_models(family) / show_model(name)             the catalog
    estimate_memory(name, task, dtype, context, batch) the sizing model

each with a JSON schema for its arguments and a structured result; a user mistake (unknown model,
a prompt beyond the context, bad values) is an `isError` result naming it, not a protocol failure.
Generation goes through the same EngineLoop as the HTTP API, so MCP and OpenAI clients share the
continuous batch.

As an MCP host (`run_tool_loop`, behind `lmzoo chat --mcp "CMD ..."`): the tools of the configured
servers are offered to a tool-calling model through its chat template; each call it writes is sent
to its server and the result goes back as a `tool` message, until the model answers in text.
"""

from __future__ import annotations

import asyncio
import json
import shlex
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, Literal

from pydantic import BaseModel, Field

from lmzoo.errors import LmzooError
from lmzoo.runtime.engine import Request
from lmzoo.runtime.sampling import SamplingParams


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class Completion(BaseModel):
    text: str
    finish_reason: str = Field(description="stop (the model ended), length (max_tokens reached) or cancelled")
    prompt_tokens: int
    completion_tokens: int


class Tokens(BaseModel):
    tokens: list[int]
    count: int


class Count(BaseModel):
    count: int


class ModelList(BaseModel):
    models: list[str]


class MemoryEstimateResult(BaseModel):
    name: str
    task: str
    dtype: str
    context: int
    batch: int
    total_bytes: int
    total_gib: float
    breakdown_bytes: dict[str, int]
    notes: list[str]


def create_mcp_server(state, *, model_name: str):
    """An MCPServer whose generation tools use `state.loop` (an EngineLoop) and `state.tokenizer`
    once they are set (before that, the tools answer that the model is still loading)."""
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    server = MCPServer("lmzoo", log_level="WARNING",
                       instructions=f"Local models: {model_name!r} for chat and generation; the lmzoo catalog for "
                       "model facts and memory estimates.")

    async def ready(wait_s: float = 300.0):
        """The engine loop, once the model has loaded (a host may call right after starting us)."""
        for _ in range(int(wait_s * 10)):
            if getattr(state, "error", None):
                raise ToolError(f"the model failed to load: {state.error}")
            if state.loop is not None:
                return state.loop
            await asyncio.sleep(0.1)
        raise ToolError(f"the model is still loading after {wait_s:.0f} s")

    async def complete(req: Request) -> Completion:
        loop = await ready()
        try:
            rid, q = await asyncio.to_thread(loop.submit, req, asyncio.get_running_loop())
        except LmzooError as e:
            raise ToolError(str(e)) from None
        except Exception as e:  # queue full / shutting down
            raise ToolError(f"the server is busy: {e}") from None
        text = ""
        try:
            while True:
                ev = await q.get()
                if isinstance(ev, Exception):
                    raise ToolError(f"generation failed: {type(ev).__name__}: {ev}")
                text += ev.text
                if ev.finish_reason is not None:
                    reason = "stop" if ev.finish_reason == "eos" else ev.finish_reason
                    return Completion(text=text, finish_reason=reason, prompt_tokens=ev.prompt_tokens,
                                      completion_tokens=ev.completion_tokens)
        except asyncio.CancelledError:  # the client cancelled the call
            loop.cancel(rid)
            raise

    def sampling(temperature: float, seed: int | None) -> SamplingParams:
        try:
            return SamplingParams(temperature=temperature, seed=seed)
        except LmzooError as e:
            raise ToolError(str(e)) from None

    @server.tool(description=f"Chat with the local model {model_name!r}: the messages go through its chat template.")
    async def chat(messages: list[Message], max_tokens: int = Field(256, ge=1, le=8192),
                   temperature: float = Field(0.0, ge=0.0, le=2.0), seed: int | None = None) -> Completion:
        if not messages:
            raise ToolError("messages is empty; give at least one message")
        return await complete(Request(messages=[m.model_dump() for m in messages], max_tokens=max_tokens,
                                      sampling=sampling(temperature, seed)))

    @server.tool(description=f"Continue a text prompt with the local model {model_name!r} (no chat template).")
    async def generate(prompt: str, max_tokens: int = Field(64, ge=1, le=8192),
                       temperature: float = Field(0.0, ge=0.0, le=2.0), seed: int | None = None) -> Completion:
        await ready()
        ids = state.tokenizer.encode(prompt)
        return await complete(Request(prompt=ids, max_tokens=max_tokens, sampling=sampling(temperature, seed)))

    @server.tool(description="Token ids of a text under the served model's tokenizer.")
    async def tokenize(text: str, add_special_tokens: bool = True) -> Tokens:
        await ready()
        ids = state.tokenizer.encode(text, add_special_tokens=add_special_tokens)
        return Tokens(tokens=ids, count=len(ids))

    @server.tool(description="How many tokens a text, or a conversation through the chat template, takes.")
    async def count_tokens(text: str | None = None, messages: list[Message] | None = None) -> Count:
        await ready()
        if (text is None) == (messages is None):
            raise ToolError("give exactly one of text or messages")
        if text is not None:
            return Count(count=len(state.tokenizer.encode(text)))
        try:
            return Count(count=len(state.tokenizer.encode_chat([m.model_dump() for m in messages])))
        except LmzooError as e:
            raise ToolError(str(e)) from None

    @server.tool(description="Names of the models in lmzoo's catalog, optionally of one family (e.g. llama, qwen).")
    def list_models(family: str | None = None) -> ModelList:
        from lmzoo import catalog

        if family is not None and family not in catalog.families():
            raise ToolError(f"unknown family {family!r}; families: {', '.join(catalog.families())}")
        return ModelList(models=catalog.list_models(family))

    @server.tool(description="Facts (with sources), architecture and parameter count of one catalog model.")
    def show_model(name: str) -> dict[str, Any]:
        from lmzoo import catalog

        try:
            e = catalog.get_entry(name)
        except LmzooError as err:
            raise ToolError(str(err)) from None
        facts = json.loads(json.dumps(e.facts(), default=str))
        n = catalog.count_params(e.name)
        facts["count"] = {"total": n.total, "active": n.active}
        return facts

    @server.tool(description="Peak memory to run (infer) or train (train, lora, qlora) a catalog model.")
    def estimate_memory(name: str, task: Literal["infer", "train", "lora", "qlora"] = "infer",
                        dtype: Literal["fp32", "bf16", "fp16", "int8", "int4"] = "bf16",
                        context: int | None = Field(None, ge=1), batch: int = Field(1, ge=1)) -> MemoryEstimateResult:
        from lmzoo import catalog
        from lmzoo.sizing.estimate import estimate_memory as estimate

        try:
            e = catalog.get_entry(name)
            m = estimate(e.name, task=task, dtype=dtype, context=context, batch=batch)
        except LmzooError as err:
            raise ToolError(str(err)) from None
        d = m.to_dict()
        return MemoryEstimateResult(name=e.name, task=d["task"], dtype=d["dtype"], context=d["context"],
                                    batch=d["batch"], total_bytes=d["total_bytes"], total_gib=d["total_gib"],
                                    breakdown_bytes=d["breakdown_bytes"], notes=d["notes"])

    return server


def http_app(server, *, host: str, port: int, path: str = "/mcp"):
    """The Streamable HTTP endpoint (a Starlette app with one route at `path`): requests whose Host or
    Origin is not this server are refused (DNS rebinding: a web page must not drive a local model)."""
    from mcp.server.transport_security import TransportSecuritySettings

    hosts = [f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]")] + ([f"{host}:{port}"]
                                                                            if host not in ("127.0.0.1", "localhost") else [])
    security = TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts,
                                         allowed_origins=[f"http://{h}" for h in hosts])
    return server.streamable_http_app(streamable_http_path=path, transport_security=security, host=host)


# --- host -----------------------------------------------------------------------------------------
class McpTools:
    """Connections to MCP servers (each a command line, run over stdio) and their tools in OpenAI's
    `tools` shape. Use as `async with McpTools([...]) as t: await t.call(name, args)`."""

    def __init__(self, commands: list[str]) -> None:
        self.commands = commands
        self.tools: list[dict[str, Any]] = []
        self._where: dict[str, Any] = {}
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> McpTools:
        from mcp import Client
        from mcp.client.stdio import StdioServerParameters

        for cmd in self.commands:
            argv = shlex.split(cmd)
            if not argv:
                raise LmzooError("--mcp needs a command line, got an empty string")
            try:
                client = await self._stack.enter_async_context(
                    Client(StdioServerParameters(command=argv[0], args=argv[1:]), raise_exceptions=True))
                listed = await client.list_tools()
            except Exception as e:
                await self._stack.aclose()
                raise LmzooError(f"MCP server {cmd!r} could not be started or listed: {type(e).__name__}: {e}") from None
            for t in listed.tools:
                if t.name in self._where:
                    raise LmzooError(f"two MCP servers both offer a tool named {t.name!r}")
                self._where[t.name] = client
                self.tools.append({"type": "function", "function": {
                    "name": t.name, "description": t.description or "",
                    "parameters": t.input_schema or {"type": "object"}}})
        return self

    async def __aexit__(self, *exc) -> None:
        await self._stack.aclose()

    async def call(self, name: str, arguments: dict[str, Any]) -> str:
        """The tool's result as the text a model reads (an error result reads "error: ...")."""
        client = self._where.get(name)
        if client is None:
            return f"error: there is no tool named {name!r}; tools: {', '.join(self._where)}"
        r = await client.call_tool(name, arguments)
        if r.structured_content is not None:
            text = json.dumps(r.structured_content, ensure_ascii=False)
        else:
            text = "\n".join(getattr(c, "text", "") for c in r.content)
        return f"error: {text}" if r.is_error else text


Generate = Callable[[list[dict[str, Any]], list[dict[str, Any]]], Awaitable[str]]


async def run_tool_loop(messages: list[dict[str, Any]], tools: McpTools, generate: Generate, fmt, *,
                        max_rounds: int = 8, on_call: Callable[[str, dict, str], None] | None = None) -> str:
    """Generate; while the reply holds tool calls, run them and generate again with the results.
    `generate(messages, tools)` returns the model's raw reply text; `fmt` is the model's
    serve.tools.ToolFormat. Appends every turn to `messages`; returns the final text answer."""
    for _ in range(max_rounds):
        raw = await generate(messages, tools.tools)
        parser = fmt.parser()
        content = parser.feed(raw)[0] + parser.flush()
        if not parser.calls:
            messages.append({"role": "assistant", "content": raw})
            return raw
        calls = [{"id": c["id"], "type": "function", "function": {
            "name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}} for c in parser.calls]
        messages.append({"role": "assistant", "content": content.strip(), "tool_calls": calls})
        for c in calls:
            name, args = c["function"]["name"], c["function"]["arguments"]
            result = await tools.call(name, args if isinstance(args, dict) else {})
            if on_call is not None:
                on_call(name, args, result)
            messages.append({"role": "tool", "tool_call_id": c["id"], "name": name, "content": result})
    raise LmzooError(f"the model was still calling tools after {max_rounds} rounds; stopped")
