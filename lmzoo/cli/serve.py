"""`lmzoo serve`: the OpenAI-compatible server (lmzoo.serve.app) on uvicorn.

    lmzoo serve                                   # SmolLM2-135M-Instruct on http://127.0.0.1:8000/v1
    lmzoo serve --model m.gguf --api-key KEY --max-running 8 --max-queued 64

Binds to loopback unless --host says otherwise. The KV cache grows with use (runtime.cache): a
small machine pays for the tokens its requests hold, not for --max-running x --max-len. The model
loads after the port is open: /health answers 503 until it is ready.
"""

from __future__ import annotations

from pathlib import Path

import typer

from lmzoo.cli import app
from lmzoo.cli.run import KvOpt, check_dtypes


@app.command()
def serve(
    model: Path | None = typer.Option(None, "--model", "-m", help="HF checkpoint directory or .gguf file "
                                      "[default: SmolLM2-135M-Instruct]"),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    api_key: list[str] | None = typer.Option(None, "--api-key", help="Require this bearer key (repeatable)."),
    max_running: int = typer.Option(8, "--max-running", help="Requests decoded together (continuous batching)."),
    max_queued: int = typer.Option(64, "--max-queued", help="Requests waiting for a slot before 429s."),
    max_len: int | None = typer.Option(None, "--max-len", help="Tokens per request (prompt + output); a longer "
                                       "prompt is a 400 context_length_exceeded. The KV cache grows with use (256 "
                                       "tokens a row, doubling up to this), not allocated for --max-running x "
                                       "--max-len up front [default: min(context, 4096)]."),
    served_model_name: str | None = typer.Option(None, "--served-model-name", help="The model id clients send."),
    dtype: str | None = typer.Option(None, "--dtype", help="float32 | bfloat16 | float16"),
    adapter: Path | None = typer.Option(None, "--adapter", help="A PEFT LoRA/DoRA adapter directory to apply."),
    batch_prefill: bool = typer.Option(False, "--batch-prefill", help="Prefill new prompts together: faster first "
                                       "tokens under load; a greedy answer may then differ from alone in rare ties."),
    activations: str = typer.Option("float", "--activations", help="float | q8: how int8/int4 (GGUF) layers take "
                                    "their input on CPU. q8: llama.cpp's 8-bit activations, what its server "
                                    "computes: ~2x the tokens/s under load, but a small model's answers suffer "
                                    "(the default 135M model's too). float: the exact product with the "
                                    "dequantised weights."),
    quantize: str | None = typer.Option(None, "--quantize", help="int8 | int4 | f16 | bf16: quantise a float "
                                        "checkpoint's linear layers at load."),
    kv_dtype: str | None = KvOpt,
    prompt_cache: bool = typer.Option(True, "--prompt-cache/--no-prompt-cache", help="Start a request on the cache "
                                      "row holding the longest prefix of its prompt and prefill only the rest (a "
                                      "chat's history is not prefilled again each turn); reused keys were computed "
                                      "when first seen, so logits may differ from a fresh prefill in the last bits."),
) -> None:
    """Serve a model over the OpenAI API (chat and completions, streaming, continuous batching)."""
    from lmzoo.errors import ConfigError

    if not 0 < port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {port}")
    if max_running < 1 or max_queued < 0:
        raise ConfigError(f"--max-running must be >= 1 and --max-queued >= 0, got {max_running}, {max_queued}")
    model, name = _model_path(model, served_model_name, dtype, kv_dtype)
    from lmzoo.quant.layers import ACTIVATIONS

    if activations not in ACTIVATIONS:
        raise ConfigError(f"--activations must be one of {ACTIVATIONS}, got {activations!r}")

    import signal
    import threading

    import uvicorn

    from lmzoo.serve.app import create_app

    server_app = create_app(model_name=name, api_keys=tuple(api_key or ()), max_running=max_running,
                            max_queued=max_queued, host=host, port=port)
    server = uvicorn.Server(uvicorn.Config(server_app, host=host, port=port, log_level="warning",
                                           timeout_graceful_shutdown=10))
    # HTTP on a side thread; the engine steps on the main thread (OpenMP is much faster there)
    http = threading.Thread(target=server.run, name="lmzoo-http", daemon=True)
    http.start()
    typer.echo(f"lmzoo: serving {name!r} at http://{host}:{port}/v1 (loading...)", err=True)
    state = server_app.state.lmzoo
    try:
        loop, tok = _engine_loop(model, state, dtype=dtype, adapter=adapter, max_running=max_running,
                                 max_queued=max_queued, max_len=max_len, batch_prefill=batch_prefill,
                                 activations=activations, quantize=quantize, kv_dtype=kv_dtype,
                                 prompt_cache=prompt_cache)
    except Exception:
        server.should_exit = True
        http.join(timeout=15)
        raise
    state.attach(loop, tok)
    typer.echo(f"lmzoo: ready; model id {name!r}, e.g. OpenAI(base_url='http://{host}:{port}/v1', api_key=...); "
               f"chat page http://{host}:{port}/, MCP http://{host}:{port}/mcp", err=True)

    def stop(*_):  # first signal: finish what is running, refuse new work; second: stop now
        if loop.draining:
            loop.close()
        loop.drain()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    loop.run()  # until drained after SIGTERM / Ctrl-C
    server.should_exit = True
    http.join(timeout=15)


def _model_path(model: Path | None, served_model_name: str | None, dtype: str | None,
                kv_dtype: str | None = None) -> tuple[Path, str]:
    """The model to load (default: the embedded SmolLM2) and the id clients send; --dtype and
    --kv-dtype checked."""
    from lmzoo.errors import ConfigError

    check_dtypes(ConfigError, dtype, kv_dtype)
    if model is None:
        from lmzoo.checkpoints.assets import default_model_path

        model = default_model_path()
    if not model.exists():
        raise ConfigError(f"--model {str(model)!r} does not exist; expected an HF checkpoint directory or a .gguf file")
    return model, served_model_name or (model.stem if model.is_file() else model.name)


def _engine_loop(model: Path, state, *, dtype, adapter, max_running: int, max_queued: int, max_len, batch_prefill: bool,
                 activations: str = "float", quantize: str | None = None, kv_dtype=None, prompt_cache: bool = True):
    """Load the model and its engine into `state` (a serve.app.ServerState); the caller runs the loop
    on the main thread. A load failure is recorded in `state` (what clients are told) and re-raised."""
    import lmzoo
    from lmzoo.runtime import Engine
    from lmzoo.serve.scheduler import EngineLoop
    from lmzoo.tokenizer import load_tokenizer

    try:
        m = lmzoo.from_pretrained(model, dtype=dtype, adapter=adapter, activations=activations, quantize=quantize,
                                  huge_pages=True)  # a long-running server: decode speed before load time
        tok = load_tokenizer(model, vocab_size=m.config.vocab_size)
        engine = Engine(m, tok, max_running=max_running, max_len=max_len or 4096, batch_prefill=batch_prefill,
                        kv_dtype=kv_dtype, prompt_cache=prompt_cache)
        loop = EngineLoop(engine, max_queued=max_queued, thread=False, metrics=state.metrics)
    except Exception as e:
        state.error = f"{type(e).__name__}: {e}"
        raise
    return loop, tok


@app.command()
def mcp(
    model: Path | None = typer.Option(None, "--model", "-m", help="HF checkpoint directory or .gguf file "
                                      "[default: SmolLM2-135M-Instruct]"),
    max_running: int = typer.Option(4, "--max-running", help="Tool calls generating together."),
    max_len: int | None = typer.Option(None, "--max-len", help="Tokens per request [default: min(context, 4096)]."),
    dtype: str | None = typer.Option(None, "--dtype", help="float32 | bfloat16 | float16"),
    adapter: Path | None = typer.Option(None, "--adapter", help="A PEFT LoRA/DoRA adapter directory to apply."),
) -> None:
    """Serve lmzoo as an MCP server over stdio (chat, generate, tokenize, catalog and memory tools).

    For Claude Desktop / Cursor: {"mcpServers": {"lmzoo": {"command": "lmzoo", "args": ["mcp"]}}}.
    `lmzoo serve` also answers MCP over Streamable HTTP at /mcp."""
    import threading

    import anyio

    from lmzoo.errors import ConfigError
    from lmzoo.serve.app import ServerState
    from lmzoo.serve.mcp import create_mcp_server

    if max_running < 1:
        raise ConfigError(f"--max-running must be >= 1, got {max_running}")
    model, name = _model_path(model, None, dtype)
    state = ServerState()
    server = create_mcp_server(state, model_name=name)
    done = threading.Event()

    def stdio() -> None:  # the protocol on a side thread (stdout is the channel: all logs go to stderr)
        try:
            anyio.run(server.run_stdio_async)
        finally:
            done.set()
            if state.loop is not None:
                state.loop.close()

    threading.Thread(target=stdio, name="lmzoo-mcp", daemon=True).start()
    typer.echo(f"lmzoo: MCP server on stdio; loading {name!r}...", err=True)
    loop, tok = _engine_loop(model, state, dtype=dtype, adapter=adapter, max_running=max_running, max_queued=64,
                             max_len=max_len, batch_prefill=False)
    state.attach(loop, tok)
    typer.echo(f"lmzoo: ready ({name!r})", err=True)
    if not done.is_set():
        loop.run()  # until the client closes stdin
