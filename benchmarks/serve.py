"""Serving benchmark: a real `lmzoo serve` process on the default model, N concurrent streaming
clients (the official openai AsyncOpenAI), each asking its own question (greedy, `--new` tokens).

    python benchmarks/serve.py [--concurrency 1,4,16,64] [--new 64] [--max-running 16] [--rss 500] [--activations q8]
        [--kv-dtype float16] [--requests 4]
    LLAMACPP_PYTHON=.venv-llamacpp/bin/python python benchmarks/serve.py --llamacpp   # + llama.cpp's server

Per level: p50 / p90 time to first token, p50 inter-token latency, requests/s and aggregate
generated tokens/s (all tokens of all requests over the wall time of the level, first request sent
to last token received), and how many requests failed or came back without their tokens (lost).
`--rss N`: N sequential short requests after the levels, the server's resident memory read from
/proc every 50 (flat = within 10% of the first reading). `--llamacpp`: then the same levels against
llama.cpp's OpenAI server (llama-cpp-python's `llama_cpp.server`, built by benchmarks/setup_llamacpp.sh)
on the same GGUF file with 2 threads and the GGUF's own chat template; one server runs at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time

import httpx
import openai


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def one(client, model: str, question: str, new: int) -> tuple[float, list[float], int]:
    """(time to first token, inter-token gaps, completion tokens); tokens = -1 if the request failed."""
    t0 = time.perf_counter()
    stamps = []
    tokens = 0
    try:
        stream = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                                      temperature=0, max_tokens=new, stream=True,
                                                      stream_options={"include_usage": True})
        usage = None
        async for c in stream:
            if c.choices and c.choices[0].delta.content:
                stamps.append(time.perf_counter())
            if c.usage:
                usage = c.usage.completion_tokens
        tokens = usage if usage is not None else len(stamps)  # no usage chunk (llama.cpp's): a token a chunk
    except openai.OpenAIError as e:
        print(f"request failed: {type(e).__name__}: {e}", file=sys.stderr)
        tokens = -1
    return stamps[0] - t0 if stamps else float("nan"), [b - a for a, b in zip(stamps, stamps[1:])], tokens


def cpu_s(pid: int) -> float:
    """A process's user + system CPU seconds so far (/proc/PID/stat)."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


async def level(base: str, model: str, n: int, new: int, pid: int, requests: int = 1) -> dict:
    """n clients, each sending `requests` requests one after another (its own questions)."""
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=600)

    async def client_run(c: int) -> list:
        return [await one(client, model, f"Write a short paragraph about the number {c + n * r}.", new)
                for r in range(requests)]

    t0, c0, s0 = time.perf_counter(), time.process_time(), cpu_s(pid)
    results = [x for rs in await asyncio.gather(*(client_run(c) for c in range(n))) for x in rs]
    wall = time.perf_counter() - t0
    client_cpu, server_cpu = time.process_time() - c0, cpu_s(pid) - s0
    await client.close()
    ok = [r for r in results if r[2] > 0]
    ttft = sorted(r[0] for r in ok) or [float("nan")]
    itl = [x for r in ok for x in r[1]]
    tokens = sum(r[2] for r in ok)
    return {"n": n, "ttft_p50": statistics.median(ttft), "ttft_p90": ttft[min(len(ttft) - 1, int(0.9 * len(ttft)))],
            "itl_p50": statistics.median(itl) if itl else float("nan"), "req_s": len(results) / wall,
            "tok_s": tokens / wall, "lost": len(results) - len(ok), "server_cpu": server_cpu / wall,
            "client_cpu": client_cpu / wall}


def rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def rss_run(base: str, model: str, pid: int, n: int) -> list[tuple[int, float]]:
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=600)
    readings = [(0, rss_mib(pid))]
    for i in range(1, n + 1):
        await one(client, model, f"Name a colour, request {i}.", 8)
        if i % 50 == 0:
            readings.append((i, rss_mib(pid)))
    await client.close()
    return readings


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--rss", type=int, default=0, help="then N sequential requests, reading the server's RSS")
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--max-running", type=int, default=16)
    ap.add_argument("--batch-prefill", action="store_true", help="pass --batch-prefill to the server")
    ap.add_argument("--activations", default="float", choices=["float", "q8"], help="the lmzoo server's --activations")
    ap.add_argument("--kv-dtype", help="the lmzoo server's --kv-dtype (e.g. float16)")
    ap.add_argument("--requests", type=int, default=1, help="requests each client sends one after another "
                    "(more: a steadier tok/s, one client's level especially)")
    ap.add_argument("--llamacpp", action="store_true", help="then llama.cpp's server (LLAMACPP_PYTHON) on the same GGUF")
    a = ap.parse_args()
    from lmzoo.checkpoints.assets import default_model_path

    port = free_port()
    lmzoo_cmd = [sys.executable, "-m", "lmzoo", "serve", "--port", str(port), "--max-running", str(a.max_running),
                 "--activations", a.activations,
                 "--max-queued", "256"] + (["--batch-prefill"] if a.batch_prefill else []) + (
                     ["--kv-dtype", a.kv_dtype] if a.kv_dtype else [])
    totals = {"lmzoo": run_server(f"lmzoo serve --max-running {a.max_running}"
                                  f"{' --batch-prefill' if a.batch_prefill else ''}", lmzoo_cmd, port, a, "/health")}
    if a.llamacpp:
        exe = os.environ.get("LLAMACPP_PYTHON")
        if not exe:
            raise SystemExit("--llamacpp needs LLAMACPP_PYTHON (a Python with llama-cpp-python; benchmarks/setup_llamacpp.sh)")
        port = free_port()
        cmd = [exe, "-m", "llama_cpp.server", "--model", str(default_model_path()), "--host", "127.0.0.1", "--port",
               str(port), "--n_threads", "2", "--n_threads_batch", "2", "--n_ctx", "4096", "--model_alias", "smollm2",
               "--interrupt_requests", "False"]  # queue concurrent requests instead of cutting the running one off
        totals["llama.cpp"] = run_server("llama.cpp server (llama-cpp-python)", cmd, port, a, "/v1/models", rss=False)
        print("generated tok/s, lmzoo / llama.cpp: " + ", ".join(
            f"{n} clients {x / y:.2f}x" for (n, x), (_, y) in zip(totals["lmzoo"], totals["llama.cpp"])))
    return 0


def run_server(name: str, cmd: list[str], port: int, a, ready: str, rss: bool = True) -> list[tuple[int, float]]:
    """Start a server, wait for `ready` to answer 200, run the levels against it (printing the table),
    stop it; [(clients, tok/s)]."""
    import tempfile

    base = f"http://127.0.0.1:{port}"
    log = tempfile.TemporaryFile("w+")  # not a pipe: a server's chatter would fill it and block the server
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    out = []
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if httpx.get(base + ready, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                log.seek(0)
                raise SystemExit(f"{name} exited: {log.read()[-3000:]}")
            time.sleep(0.2)
        model = httpx.get(base + "/v1/models").json()["data"][0]["id"]
        asyncio.run(level(base, model, 2, 8, proc.pid))  # warm-up
        print(f"{name}, {model}, {a.new} new tokens per request, greedy; CPU: cores busy on average over the "
              "level (server process / this client process; the host has 2)")
        print("| concurrent | TTFT p50 s | TTFT p90 s | inter-token p50 ms | requests/s | generated tok/s | lost "
              "| CPU server / client |")
        print("|---|---|---|---|---|---|---|---|")
        for n in [int(x) for x in a.concurrency.split(",") if x]:
            r = asyncio.run(level(base, model, n, a.new, proc.pid, a.requests))
            out.append((n, r["tok_s"]))
            print(f"| {n} | {r['ttft_p50']:.2f} | {r['ttft_p90']:.2f} | {1000 * r['itl_p50']:.1f} | "
                  f"{r['req_s']:.2f} | {r['tok_s']:.1f} | {r['lost']} | {r['server_cpu']:.2f} / {r['client_cpu']:.2f} |",
                  flush=True)
        if a.rss and rss:
            readings = asyncio.run(rss_run(base, model, proc.pid, a.rss))
            first = readings[0][1]
            print(f"server RSS over {a.rss} sequential requests (MiB): "
                  + ", ".join(f"{i}: {m:.0f}" for i, m in readings)
                  + f"; max change {max(abs(m / first - 1) for _, m in readings):+.1%}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    return out


if __name__ == "__main__":
    sys.exit(main())
