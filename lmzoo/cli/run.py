"""`lmzoo generate` and `lmzoo chat`: stream text from a model (default: SmolLM2-135M-Instruct).

    lmzoo generate "What is the capital of France?"           # chat template, greedy
    lmzoo generate --raw "The capital of France is" --stop .  # plain completion
    echo "Hi" | lmzoo chat --system "Be brief."               # one user turn per stdin line

`generate` applies the model's chat template (one user turn, optional --system) when the model has
one, because the default model is an instruct model that answers questions only in its chat
format; --raw sends the prompt as is (with BOS when the tokenizer adds one). Generation stops at
the tokenizer's end-of-turn tokens (e.g. <|im_end|>), the config's EOS, a --stop string (not
printed) or --max-new-tokens. Text is printed as it is generated; stdout carries only the answer,
a loading spinner goes to stderr when it is a terminal.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import typer

from lmzoo.cli import app

ModelOpt = typer.Option(None, "--model", "-m", help="HF checkpoint directory or .gguf file [default: SmolLM2-135M-Instruct]")
MaxNewOpt = typer.Option(256, "--max-new-tokens", "-n", help="Stop after this many new tokens.")
TempOpt = typer.Option(0.0, "--temperature", "-t", help="0 = greedy; > 0 samples.")
TopKOpt = typer.Option(None, "--top-k", help="Sample among the k most likely tokens.")
TopPOpt = typer.Option(None, "--top-p", help="Sample among the smallest set with this much probability, in (0, 1].")
RepOpt = typer.Option(1.0, "--repetition-penalty", help="> 1 discourages repeating tokens (CTRL / HF rule).")
SeedOpt = typer.Option(None, "--seed", help="Random seed for sampling.")
StopOpt = typer.Option(None, "--stop", help="Stop when the output contains this string (repeatable).")
AdapterOpt = typer.Option(None, "--adapter", help="A PEFT LoRA/DoRA adapter directory to apply (e.g. from lmzoo finetune).")
DtypeOpt = typer.Option(None, "--dtype", help="float32 | bfloat16 | float16 [default: checkpoint's; float32 for GGUF]")
QuantOpt = typer.Option(None, "--quantize", help="int8 | int4 | f16 | bf16: quantise a float checkpoint's linear "
                        "layers at load (CPU decode kernels; bf16 keeps a bf16 checkpoint's weights exactly)")
KvOpt = typer.Option(None, "--kv-dtype", help="float16 | float32 | bfloat16: the KV cache's dtype [default: the "
                     "activations'; float16 halves the cache and what each token reads of it, as llama.cpp stores it]")
ActOpt = typer.Option("float", "--activations", help="float | q8: how int8/int4 (GGUF) layers take their input on "
                      "CPU; q8 = llama.cpp's 8-bit activations, faster decode, not bit-exact to the float weights")


@contextmanager
def _status(msg: str):
    """A spinner on stderr when it is a terminal; silence otherwise."""
    if sys.stderr.isatty():
        from rich.console import Console

        with Console(stderr=True).status(msg):
            yield
    else:
        yield


def check_dtypes(error, dtype, kv_dtype) -> None:
    """--dtype and --kv-dtype name known dtypes, else `error` naming the flag (before any loading)."""
    from lmzoo.dtypes import resolve_dtype

    for flag, value in (("--dtype", dtype), ("--kv-dtype", kv_dtype)):
        try:
            resolve_dtype(value)
        except ValueError as e:
            raise error(f"{flag}: {e}") from None


def _check(temperature, top_k, top_p, repetition_penalty, max_new_tokens, dtype, seed=None, stop=None,
           kv_dtype=None) -> None:
    """Reject bad sampling values before spending seconds on loading."""
    from lmzoo.errors import GenerationError
    from lmzoo.runtime.sampling import SamplingParams

    SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty)
    if seed is not None and not -(2**63) <= seed < 2**63:
        raise GenerationError(f"--seed must fit in 64 bits (-2**63 <= seed < 2**63), got {seed}")
    if stop and any(not s for s in stop):
        raise GenerationError("--stop needs a non-empty string (an empty one would stop before the first token)")
    if max_new_tokens < 1:
        raise GenerationError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    check_dtypes(GenerationError, dtype, kv_dtype)


def _load(model: Path | None, dtype: str | None, adapter: Path | None = None, activations: str = "float",
          quantize: str | None = None, huge_pages: bool = False):
    import lmzoo
    from lmzoo.tokenizer import load_tokenizer

    if model is None:
        from lmzoo.checkpoints.assets import default_model_path

        model = default_model_path()
    with _status(f"loading {model.name}"):
        m = lmzoo.from_pretrained(model, dtype=dtype, adapter=adapter, activations=activations, quantize=quantize,
                                  huge_pages=huge_pages)
        tok = load_tokenizer(model, vocab_size=m.config.vocab_size)
    return m, tok


def _stream(model, tok, ids: list[int], *, max_new_tokens, temperature, top_k, top_p, repetition_penalty,
            seed, stop, out=sys.stdout, decode: str = "eager", kv_dtype=None, engine=None) -> tuple[list[int], str]:
    """Generate from `ids` through the engine, printing text deltas as they come (stop strings are
    held back by the engine while they may still begin); returns (new ids, text). engine: a session's
    (`lmzoo chat`: its cache row keeps the conversation), else one made for this prompt."""
    from lmzoo.errors import ContextLengthError
    from lmzoo.runtime import Engine, Request, SamplingParams

    ctx = model.config.max_seq_len
    if len(ids) >= ctx:  # nothing could be generated: say so rather than print nothing
        what = "is longer than" if len(ids) > ctx else "fills"
        raise ContextLengthError(f"the prompt of {len(ids)} tokens {what} the model's context of {ctx} tokens; no room "
                                 "for a new token")
    if len(ids) + max_new_tokens > ctx:
        print(f"lmzoo: note: at most {ctx - len(ids)} new tokens fit (context {ctx}, prompt {len(ids)}); "
              f"--max-new-tokens {max_new_tokens} is cut to that", file=sys.stderr, flush=True)
        max_new_tokens = ctx - len(ids)
    if engine is None:
        engine = Engine(model, tok, max_running=1, max_len=len(ids) + max_new_tokens, decode=decode,
                        kv_dtype=kv_dtype)
    engine.submit(Request(prompt=ids, max_tokens=max_new_tokens, stop=tuple(stop), sampling=SamplingParams(
        temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty, seed=seed)))
    new: list[int] = []
    text = ""
    for ev in engine.run():
        if ev.token is not None:
            new.append(ev.token)
        if ev.text:
            out.write(ev.text)
            out.flush()
            text += ev.text
    return new, text


def _lines():
    """User messages from stdin, one per line (a prompt when interactive), until /exit or the end."""
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            sys.stdout.write(">>> ")
            sys.stdout.flush()
        raw = sys.stdin.buffer.readline()
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:  # one bad line: say so and go on (the session and history stay)
            print(f"lmzoo: error: that line is not valid UTF-8 (byte 0x{raw[e.start]:02x} at {e.start}); "
                  "it was skipped", file=sys.stderr, flush=True)
            continue
        if not line or line.strip() in ("/exit", "/quit"):
            return
        if line.strip():
            yield line.rstrip("\r\n")


def _chat_with_tools(engine, tok, history: list, commands: list[str], *, max_new_tokens: int, sampling: dict,
                     stop: list[str]) -> None:
    """`lmzoo chat --mcp`: the MCP servers' tools go to the model through its chat template; its calls
    are run (shown on stderr) and their results fed back until it answers in text."""
    import asyncio

    from lmzoo.errors import TokenizerError
    from lmzoo.runtime import Request, SamplingParams
    from lmzoo.serve.mcp import McpTools, run_tool_loop
    from lmzoo.serve.tools import detect_format

    fmt = detect_format(tok.chat_template)
    if fmt is None:
        raise TokenizerError("this model's chat template does not render tools, so it cannot call MCP tools; use a "
                             "tool-calling model (e.g. Qwen2.5-Instruct)")

    async def generate(messages, tools) -> str:
        req = Request(messages=messages, tools=tools, max_tokens=max_new_tokens, stop=tuple(stop),
                      sampling=SamplingParams(**sampling))
        return "".join(ev.text for ev in engine.run([req]))

    def shown(name, args, result) -> None:
        typer.echo(f"[tool] {name}({json.dumps(args, ensure_ascii=False)}) -> {result[:200]}", err=True)

    async def main() -> None:
        async with McpTools(commands) as tools:
            typer.echo(f"lmzoo: {len(tools.tools)} MCP tool(s): {', '.join(t['function']['name'] for t in tools.tools)}",
                       err=True)
            for line in _lines():
                history.append({"role": "user", "content": line})
                answer = await run_tool_loop(history, tools, generate, fmt, on_call=shown)
                sys.stdout.write(answer + "\n")
                sys.stdout.flush()

    asyncio.run(main())


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="The prompt."),
    model: Path | None = ModelOpt,
    max_new_tokens: int = MaxNewOpt,
    temperature: float = TempOpt,
    top_k: int | None = TopKOpt,
    top_p: float | None = TopPOpt,
    repetition_penalty: float = RepOpt,
    seed: int | None = SeedOpt,
    stop: list[str] | None = StopOpt,
    chat: bool = typer.Option(
        True, "--chat/--raw", help="Apply the model's chat template (when it has one) or send the prompt as is."),
    system: str | None = typer.Option(None, "--system", help="System message (chat mode)."),
    dtype: str | None = DtypeOpt,
    activations: str = ActOpt,
    quantize: str | None = QuantOpt,
    adapter: Path | None = AdapterOpt,
    stats: bool = typer.Option(False, "--stats", help="Print tokens/s to stderr."),
    decode: str = typer.Option("eager", "--decode", help="eager | static | compiled (torch.compile; CUDA graphs on GPU)."),
    kv_dtype: str | None = KvOpt,
    huge_pages: bool = typer.Option(False, "--huge-pages", help="Hold the weights in transparent huge pages "
                                    "(Linux): faster decode, slower load; worth it for long answers."),
) -> None:
    """Complete PROMPT, streaming the answer to stdout."""
    from lmzoo.errors import GenerationError

    if decode not in ("eager", "static", "compiled"):
        raise GenerationError(f"--decode must be eager, static or compiled, got {decode!r}")
    _check(temperature, top_k, top_p, repetition_penalty, max_new_tokens, dtype, seed, stop, kv_dtype)
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8 arrive from argv as lone surrogates
        raise GenerationError("the prompt is not valid UTF-8 text") from None
    m, tok = _load(model, dtype, adapter, activations, quantize, huge_pages)
    if chat and tok.chat_template:
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        ids = tok.encode_chat(msgs)
    else:
        ids = tok.encode(prompt)
    t = time.perf_counter()
    new, _ = _stream(m, tok, ids, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                     top_p=top_p, repetition_penalty=repetition_penalty, seed=seed, stop=stop or [], decode=decode,
                     kv_dtype=kv_dtype)
    sys.stdout.write("\n")
    if stats:
        dt = time.perf_counter() - t
        print(f"[{len(ids)} prompt tokens, {len(new)} new tokens, {len(new) / dt:.1f} tok/s]", file=sys.stderr)


@app.command()
def chat(
    model: Path | None = ModelOpt,
    max_new_tokens: int = MaxNewOpt,
    temperature: float = TempOpt,
    top_k: int | None = TopKOpt,
    top_p: float | None = TopPOpt,
    repetition_penalty: float = RepOpt,
    seed: int | None = SeedOpt,
    stop: list[str] | None = StopOpt,
    system: str | None = typer.Option(None, "--system", help="System message."),
    dtype: str | None = DtypeOpt,
    activations: str = ActOpt,
    quantize: str | None = QuantOpt,
    adapter: Path | None = AdapterOpt,
    mcp: list[str] | None = typer.Option(None, "--mcp", help="An MCP server command line (repeatable) whose tools "
                                         "the model may call, e.g. --mcp 'lmzoo mcp' or --mcp 'npx server-x'."),
    kv_dtype: str | None = KvOpt,
) -> None:
    """Multi-turn chat: one user message per line on stdin; /exit or end of input quits."""
    from lmzoo.errors import TokenizerError

    _check(temperature, top_k, top_p, repetition_penalty, max_new_tokens, dtype, seed, stop, kv_dtype)
    if sys.stdin is None:  # `lmzoo chat <&-`: checked before the model loads
        from lmzoo.errors import GenerationError

        raise GenerationError("standard input is closed; lmzoo chat reads its messages from it "
                              "(a terminal, a pipe or a file)")
    m, tok = _load(model, dtype, adapter, activations, quantize, huge_pages=True)  # a session: decode speed first
    if not tok.chat_template:
        raise TokenizerError("this model has no chat template; use `lmzoo generate --raw` instead")
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    from lmzoo.runtime import Engine

    # one engine for the session: its cache row keeps the conversation, so a turn prefills only what is
    # new since the last one (the end of the model's turn as the template renders it, the new message)
    engine = Engine(m, tok, max_running=1, kv_dtype=kv_dtype, prompt_cache=True)
    if mcp:
        return _chat_with_tools(engine, tok, history, mcp, max_new_tokens=max_new_tokens, sampling=dict(
            temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty, seed=seed),
            stop=stop or [])
    for line in _lines():
        ids = tok.encode_chat(history + [{"role": "user", "content": line}])
        if len(ids) >= m.config.max_seq_len:  # a turn that does not fit: say so, keep the session
            print(f"lmzoo: error: the conversation would be {len(ids)} tokens, longer "
                  f"than the context of {m.config.max_seq_len}; that message was not sent (/exit to quit)",
                  file=sys.stderr, flush=True)
            continue
        history.append({"role": "user", "content": line})
        _, answer = _stream(m, tok, ids, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                            top_p=top_p, repetition_penalty=repetition_penalty, seed=seed, stop=stop or [],
                            engine=engine)
        sys.stdout.write("\n")
        sys.stdout.flush()
        history.append({"role": "assistant", "content": answer})
