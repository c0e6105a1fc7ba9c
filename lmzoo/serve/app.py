"""The OpenAI-compatible HTTP server (FastAPI on uvicorn) over the engine.

    GET  /health                 503 while the model loads, then 200 (never needs a key)
    GET  /v1/models              the one served model
    POST /v1/chat/completions    chat (messages through the model's chat template), stream or not
    POST /v1/completions         raw completion of a prompt (text or token ids), stream or not
    POST /tokenize, /detokenize  the served tokenizer (vLLM's shape)
    GET  /                       a chat page (serve/web/chat.html: streaming Markdown, stop, system prompt)
    GET  /metrics                Prometheus metrics
    POST /mcp                    MCP over Streamable HTTP (serve.mcp: chat, generate, tokenize, catalog tools)

Errors have OpenAI's shape, {"error": {"message", "type", "param", "code"}}, with the status codes the
official client maps to its exception classes: 400 (bad field, named in `param`; a prompt beyond the
context gets code context_length_exceeded), 401 (API key), 404 (unknown model), 413 (body too
large), 429 (queue full, with Retry-After), 503 (still loading). Streams are SSE (`data: {json}`,
then `data: [DONE]`); an error after streaming began is a final `data: {"error": ...}` event; a
client that disconnects cancels its request at the engine's next step.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from lmzoo.errors import ContextLengthError, LmzooError
from lmzoo.runtime.constrain import check_grammar, json_schema_grammar
from lmzoo.runtime.engine import Engine, Event
from lmzoo.runtime.engine import Request as EngineRequest
from lmzoo.runtime.sampling import SamplingParams
from lmzoo.serve.protocol import UNSUPPORTED, ChatMessage, ChatRequest, CompletionRequest, error_body
from lmzoo.serve.scheduler import EngineLoop, QueueFull, ShuttingDown
from lmzoo.serve.tools import ToolFormat, call_grammar, detect_format, tool_names

FINISH = {"eos": "stop", "stop": "stop", "length": "length", "cancelled": "stop"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", *, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.type, self.param, self.code, self.headers = status, type_, param, code, headers

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(str(self), self.type, param=self.param, code=self.code), status_code=self.status,
                            headers=self.headers)


class ServerState:
    """What the app serves; filled once the model is loaded (/health answers 503 until then)."""

    loop: EngineLoop | None = None
    tokenizer: Any = None
    error: str | None = None

    def __init__(self) -> None:
        from lmzoo.serve.metrics import ServerMetrics

        self.metrics = ServerMetrics()

    def attach(self, loop: EngineLoop, tokenizer) -> None:
        self.tokenizer, self.loop = tokenizer, loop


def usage_body(prompt: int, completion: int, cached: int) -> dict:
    """OpenAI's usage object; cached: prompt tokens whose keys and values a cache row already held
    (the engine's prompt_cache), as OpenAI reports its own prompt caching."""
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def create_app(load: Callable[[], tuple[Any, Any]] | None = None, *, model_name: str, api_keys: tuple[str, ...] = (),
               max_running: int = 8, max_queued: int = 64, max_len: int | None = None,
               max_body_bytes: int = 4 << 20, batch_prefill: bool = False, prompt_cache: bool = True,
               host: str = "127.0.0.1", port: int = 8000) -> FastAPI:
    """With `load` (returning (model, tokenizer)), the app loads it in a thread at start-up and steps
    the engine on a thread of its own (embedding in another ASGI host). Without it, the caller loads
    and attaches an EngineLoop to `app.state.lmzoo` (`lmzoo serve` does, stepping on the main thread)."""
    state = ServerState()

    def start() -> None:
        try:
            model, tok = load()
            engine = Engine(model, tok, max_running=max_running, max_len=max_len, batch_prefill=batch_prefill,
                            prompt_cache=prompt_cache)
            state.attach(EngineLoop(engine, max_queued=max_queued, metrics=state.metrics), tok)
        except Exception as e:  # reported by /health and every request
            state.error = f"{type(e).__name__}: {e}"

    from lmzoo.serve.mcp import create_mcp_server, http_app

    mcp_server = create_mcp_server(state, model_name=model_name)
    mcp_app = http_app(mcp_server, host=host, port=port, path="/mcp")

    async def lifespan(app):
        if load is not None:
            threading.Thread(target=start, name="lmzoo-load", daemon=True).start()
        async with mcp_server.session_manager.run():
            yield
        if state.loop is not None:
            state.loop.close()

    app = FastAPI(title="lmzoo", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.lmzoo = state
    app.router.routes.extend(mcp_app.routes)  # POST/GET/DELETE /mcp: MCP over Streamable HTTP (serve.mcp)

    # --- errors -------------------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(_, e: ApiError):
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_, e: RequestValidationError):
        first = e.errors()[0]
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            msg, param = "the request body is not valid JSON", None
        return ApiError(400, f"{param + ': ' if param else ''}{msg}", param=param).response()

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > max_body_bytes:
            return ApiError(413, f"request body of {size} bytes exceeds the limit of {max_body_bytes}").response()
        if api_keys and request.url.path not in ("/health", "/"):  # the page itself holds no data; its calls send the key
            auth = request.headers.get("authorization", "")
            key = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
            if not any(hmac.compare_digest(key.encode(), k.encode()) for k in api_keys):
                return ApiError(401, "missing or invalid API key (send 'Authorization: Bearer KEY')",
                                "authentication_error", code="invalid_api_key").response()
        return await call_next(request)

    def ready() -> EngineLoop:
        if state.error:
            raise ApiError(503, f"the model failed to load: {state.error}", "server_error")
        if state.loop is None:
            raise ApiError(503, "the model is still loading", "server_error", headers={"Retry-After": "1"})
        return state.loop

    def check_model(req) -> None:
        if req.model != model_name:
            raise ApiError(404, f"the model {req.model!r} does not exist; this server serves {model_name!r}",
                           param="model", code="model_not_found")
        refused = req.refused()
        if refused:
            raise ApiError(400, f"{refused}: {UNSUPPORTED[refused]}", param=refused, code="unsupported_parameter")
        try:
            req.stops()
        except ValueError as e:
            raise ApiError(400, str(e), param="stop") from None

    # --- plain endpoints ----------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        if state.error:
            return JSONResponse({"status": "error", "detail": state.error}, status_code=503)
        if state.loop is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        running, waiting = state.loop.counts
        return {"status": "ok", "running": running, "waiting": waiting}

    @app.get("/", include_in_schema=False)
    async def page():
        from importlib.resources import files

        return HTMLResponse(files("lmzoo.serve").joinpath("web/chat.html").read_text(encoding="utf-8"))

    @app.get("/metrics")
    async def metrics():
        from lmzoo.serve.metrics import CONTENT_TYPE

        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": int(time.time()),
                                            "owned_by": "lmzoo"}]}

    @app.post("/tokenize")
    async def tokenize(body: dict):
        ready()
        tok = state.tokenizer
        if "messages" in body:  # rendered exactly as a chat request renders them (tools included)
            try:
                msgs = [ChatMessage.model_validate(m).plain() for m in body["messages"]]
            except (ValueError, TypeError) as e:
                raise ApiError(400, f"messages: {' '.join(str(e).split())}", param="messages") from None
            tools = body.get("tools") or None
            ids = tok.encode_chat(msgs, **({"tools": tools} if tools else {}))
        elif isinstance(body.get("prompt"), str):
            ids = tok.encode(body["prompt"], add_special_tokens=bool(body.get("add_special_tokens", True)))
        else:
            raise ApiError(400, "give 'prompt' (a string) or 'messages'", param="prompt")
        return {"tokens": ids, "count": len(ids), "max_model_len": state.loop.engine.max_len}

    @app.post("/detokenize")
    async def detokenize(body: dict):
        ready()
        ids = body.get("tokens")
        if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
            raise ApiError(400, "'tokens' must be a list of token ids", param="tokens")
        return {"prompt": state.tokenizer.decode(ids)}

    # --- generation ---------------------------------------------------------------------------------
    async def submit(reqs: list[EngineRequest]) -> list[tuple[str, asyncio.Queue]]:
        loop = ready()
        aloop = asyncio.get_running_loop()
        out: list[tuple[str, asyncio.Queue]] = []
        try:
            for r in reqs:
                out.append(await asyncio.to_thread(loop.submit, r, aloop))
        except (QueueFull, ShuttingDown, LmzooError) as e:
            for rid, _ in out:
                loop.cancel(rid)
            if isinstance(e, ShuttingDown):
                raise ApiError(503, str(e), "server_error") from None
            if isinstance(e, QueueFull):
                raise ApiError(429, f"the server is busy: {e}", "rate_limit_error", code="queue_full",
                               headers={"Retry-After": "1"}) from None
            if isinstance(e, ContextLengthError):
                raise ApiError(400, str(e), param="messages", code="context_length_exceeded") from None
            raise ApiError(400, str(e)) from None
        return out

    async def merged(streams: list[tuple[str, asyncio.Queue]]) -> AsyncIterator[tuple[int, Event]]:
        """Events of all choices as (index, event), until every choice has finished."""
        merged_q: asyncio.Queue = asyncio.Queue()

        async def pump(i: int, q: asyncio.Queue) -> None:
            while True:
                ev = await q.get()
                await merged_q.put((i, ev))
                if isinstance(ev, Exception) or ev.finish_reason is not None:
                    return

        tasks = [asyncio.create_task(pump(i, q)) for i, (_, q) in enumerate(streams)]
        left = len(streams)
        try:
            while left:
                i, ev = await merged_q.get()
                if isinstance(ev, Exception):
                    raise ApiError(500, f"generation failed: {type(ev).__name__}: {ev}", "server_error")
                if ev.finish_reason is not None:
                    left -= 1
                yield i, ev
        finally:
            for t in tasks:
                t.cancel()

    def sampling(req, i: int) -> SamplingParams:
        return SamplingParams(temperature=req.temperature, top_p=req.top_p, presence_penalty=req.presence_penalty,
                              frequency_penalty=req.frequency_penalty,
                              seed=None if req.seed is None else req.seed + i)

    def token_logprobs(ev: Event) -> dict:
        tok = state.tokenizer
        text = tok.decode([ev.token], skip_special_tokens=False)
        return {"token": text, "logprob": ev.logprob, "bytes": list(text.encode()),
                "top_logprobs": [{"token": (t := tok.decode([i], skip_special_tokens=False)), "logprob": lp,
                                  "bytes": list(t.encode())} for i, lp in (ev.top_logprobs or [])]}

    async def respond(kind: str, req, reqs: list[EngineRequest], tool_fmt: ToolFormat | None = None):
        streams = await submit(reqs)
        parsers = [tool_fmt.parser() if tool_fmt else None for _ in streams]

        def finish_reason(i: int, reason: str) -> str:
            calls = parsers[i] is not None and parsers[i].calls
            return "tool_calls" if calls and reason != "length" else FINISH[reason]
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        obj = "chat.completion" if kind == "chat" else "text_completion"

        def cancel_all() -> None:
            for r, _ in streams:
                state.loop.cancel(r)

        if not req.stream:
            texts = [""] * len(streams)
            lps: list[list] = [[] for _ in streams]
            finish: list[str | None] = [None] * len(streams)
            usage = [0, 0, 0]
            try:
                async for i, ev in merged(streams):
                    texts[i] += ev.text
                    if ev.token is not None and ev.logprob is not None:
                        lps[i].append(ev)
                    if ev.finish_reason is not None:
                        finish[i] = ev.finish_reason
                        usage[0], usage[2] = ev.prompt_tokens, ev.cached_tokens
                        usage[1] += ev.completion_tokens
            except asyncio.CancelledError:
                cancel_all()
                raise
            choices = []
            for i, text in enumerate(texts):
                if kind == "chat":
                    lp = {"content": [token_logprobs(e) for e in lps[i]]} if req.logprobs else None
                    message: dict[str, Any] = {"role": "assistant", "content": text}
                    if parsers[i] is not None:
                        content, _ = parsers[i].feed(text)
                        content += parsers[i].flush()
                        calls = [{k: v for k, v in c.items() if k != "index"} for c in parsers[i].calls]
                        message = {"role": "assistant", "content": content.strip() if calls else content}
                        if calls:
                            message["content"] = message["content"] or None
                            message["tool_calls"] = calls
                    choices.append({"index": i, "message": message, "logprobs": lp,
                                    "finish_reason": finish_reason(i, finish[i])})
                else:
                    choices.append({"index": i, "text": text, "logprobs": legacy_logprobs(lps[i]) if req.logprobs
                                    is not None else None, "finish_reason": FINISH[finish[i]]})
            return {"id": rid, "object": obj, "created": created, "model": model_name, "choices": choices,
                    "usage": usage_body(*usage), "system_fingerprint": None}

        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        chunk_obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def chunk(choices: list, usage=None) -> str:
            body = {"id": rid, "object": chunk_obj, "created": created, "model": model_name, "choices": choices,
                    "system_fingerprint": None}
            if include_usage:
                body["usage"] = usage
            return f"data: {json.dumps(body)}\n\n"

        async def sse() -> AsyncIterator[str]:
            done = False
            usage = [0, 0, 0]
            try:
                if kind == "chat":
                    for i in range(len(streams)):
                        yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                      "finish_reason": None}])
                async for i, ev in merged(streams):
                    fr = FINISH[ev.finish_reason] if ev.finish_reason else None
                    if fr:
                        usage[0], usage[2] = ev.prompt_tokens, ev.cached_tokens
                        usage[1] += ev.completion_tokens
                    if kind == "chat":
                        lp = {"content": [token_logprobs(ev)]} if req.logprobs and ev.token is not None \
                            and ev.logprob is not None else None
                        text, calls = ev.text, []
                        if parsers[i] is not None:
                            text, calls = parsers[i].feed(text)
                            if fr:
                                text += parsers[i].flush()
                                fr = finish_reason(i, ev.finish_reason)
                        if text or lp:
                            yield chunk([{"index": i, "delta": {"content": text}, "logprobs": lp,
                                          "finish_reason": None}])
                        for call in calls:
                            yield chunk([{"index": i, "delta": {"tool_calls": [call]}, "logprobs": None,
                                          "finish_reason": None}])
                        if fr:
                            yield chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": fr}])
                    elif ev.text or fr:
                        yield chunk([{"index": i, "text": ev.text, "logprobs": None, "finish_reason": fr}])
                done = True
                if include_usage:
                    yield chunk([], usage_body(*usage))
                yield "data: [DONE]\n\n"
            except ApiError as e:
                yield f"data: {json.dumps(error_body(str(e), e.type, code=e.code))}\n\n"
            finally:
                if not done:  # the client went away (or the stream failed): stop generating for it
                    cancel_all()

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def legacy_logprobs(events: list[Event]) -> dict:
        tok = state.tokenizer
        return {"tokens": [tok.decode([e.token], skip_special_tokens=False) for e in events],
                "token_logprobs": [e.logprob for e in events],
                "top_logprobs": [{tok.decode([i], skip_special_tokens=False): lp for i, lp in (e.top_logprobs or [])}
                                 for e in events], "text_offset": []}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest):
        check_model(req)
        ready()
        try:
            msgs = [m.plain() for m in req.messages]
        except ValueError as e:
            raise ApiError(400, str(e), param="messages") from None
        tools, grammar, tool_fmt = await asyncio.to_thread(output_rules, req)  # a first grammar takes ~0.5 s
        n_max = req.max_completion_tokens or req.max_tokens or state.loop.engine.max_len
        reqs = [EngineRequest(messages=msgs, max_tokens=n_max, stop=tuple(req.stops()), sampling=sampling(req, i),
                              logprobs=req.logprobs, top_logprobs=req.top_logprobs or 0, tools=tools, grammar=grammar)
                for i in range(req.n)]
        return await respond("chat", req, reqs, tool_fmt)

    def output_rules(req: ChatRequest) -> tuple[list | None, str | None, ToolFormat | None]:
        """(tools for the template, the output grammar, the tool-call format to parse) of a chat request."""
        choice = req.tool_choice
        if not req.tools:
            if choice not in (None, "none"):
                raise ApiError(400, "tool_choice needs tools", param="tool_choice")
            choice = "none"
        choice = choice or "auto"
        tools = tool_fmt = grammar = None
        if choice != "none":
            tool_fmt = detect_format(state.tokenizer.chat_template)
            if tool_fmt is None:
                raise ApiError(400, f"this model's chat template does not render tools (no tool-call format "
                               f"lmzoo knows in it); {model_name!r} cannot call them", param="tools")
            tools = [t.model_dump(exclude_none=True) for t in req.tools]
            names = tool_names(tools)
            if len(set(names)) != len(names):
                raise ApiError(400, f"tool names must be unique, got {names}", param="tools")
            only = choice.function.name if not isinstance(choice, str) else None
            if only is not None and only not in names:
                raise ApiError(400, f"tool_choice names {only!r}, which is not among the tools {names}",
                               param="tool_choice")
            if choice != "auto":
                guide = state.loop.engine.guide_tokenizer()
                grammar = grammar_or_400(lambda: call_grammar(tool_fmt, tools, guide, only=only,
                                                              parallel=req.parallel_tool_calls), "tools")
        schema = None
        if req.response_format is not None:
            try:
                schema = req.response_format.schema_or_none()
            except ValueError as e:
                raise ApiError(400, str(e), param="response_format") from None
        if schema is not None:
            if grammar is not None:
                raise ApiError(400, "response_format cannot be combined with a tool_choice that forces a call",
                               param="response_format")
            grammar = grammar_or_400(lambda: json_schema_grammar(schema), "response_format")
        return tools, grammar, tool_fmt

    def grammar_or_400(build: Callable[[], str], param: str) -> str:
        try:
            grammar = build()
            check_grammar(grammar)
        except (LmzooError, ValueError) as e:
            raise ApiError(400, f"{param}: {e}", param=param) from None
        return grammar

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        check_model(req)
        ready()
        ids = state.tokenizer.encode(req.prompt) if isinstance(req.prompt, str) else list(req.prompt)
        n_max = req.max_tokens or state.loop.engine.max_len
        reqs = [EngineRequest(prompt=ids, max_tokens=n_max, stop=tuple(req.stops()), sampling=sampling(req, i),
                              logprobs=req.logprobs is not None, top_logprobs=req.logprobs or 0) for i in range(req.n)]
        return await respond("completion", req, reqs)

    return app
