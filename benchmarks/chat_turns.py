"""A multi-turn chat through the engine with and without its prompt cache (Engine(prompt_cache=True),
on in `lmzoo chat` and `lmzoo serve`): the time to the first token of each turn, as a chat client sees
it (the whole conversation is sent every turn), and the prompt tokens found in the cache.

    python benchmarks/chat_turns.py [--model X.gguf] [--turns 8] [--new 64] [--threads 2] [--clients 4]

The two engines answer the same conversation (the prompt-cached one's answers become the history),
turn by turn alternately, greedy. Then `--clients` requests that share a long system prompt, each
arriving once the one before it has its first token (they run side by side on one engine of that
many rows): the time to each one's first token, with the prompt cache (a later client's shared
prefix is copied from a running request's row) and without.
"""


from __future__ import annotations

import argparse
import time

import torch

SYSTEM = ("You are a helpful travel assistant for visitors to Paris. Answer briefly and concretely. "
          "Prefer public transport and walking routes, mention opening hours when they matter, and "
          "suggest one alternative when a place is likely to be crowded. ") * 6

QUESTIONS = [
    "Tell me about the history of Paris in a few sentences.",
    "What are the three most visited museums there?",
    "Which of them would you recommend for a first visit, and why?",
    "How long should I plan to spend there?",
    "What else is nearby that I could see on the same day?",
    "Suggest a place for lunch in that area.",
    "How do I get there from the Eiffel Tower by metro?",
    "Summarise the plan for the day in a short list.",
    "What should I pack for that day?",
    "Thank you! Any last tip?",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clients", type=int, default=4)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import lmzoo
    from lmzoo import Engine, Request
    from lmzoo.checkpoints.assets import default_model_path
    from lmzoo.tokenizer import load_tokenizer

    path = a.model or str(default_model_path())
    model, tok = lmzoo.from_pretrained(path, huge_pages=True), load_tokenizer(path)
    engines = {"cached": Engine(model, tok, max_running=1, prompt_cache=True), "fresh": Engine(model, tok, max_running=1)}
    history: list[dict] = []
    print(f"# {a.threads} threads, {a.turns} turns, {a.new} new tokens a turn, greedy; {path}")
    print("| turn | prompt tokens | cached | first token, prompt cache (s) | first token, none (s) | ratio |")
    print("|---|---|---|---|---|---|")
    totals = {"cached": 0.0, "fresh": 0.0}
    for turn in range(a.turns):
        history.append({"role": "user", "content": QUESTIONS[turn % len(QUESTIONS)]})
        first, answer, cached, prompt = {}, "", 0, 0
        for name in (("cached", "fresh") if turn % 2 == 0 else ("fresh", "cached")):
            t0 = time.perf_counter()
            text = ""
            for ev in engines[name].run([Request(messages=history, max_tokens=a.new)]):
                first.setdefault(name, time.perf_counter() - t0)
                text += ev.text
                if ev.finish_reason is not None and name == "cached":
                    cached, prompt = ev.cached_tokens, ev.prompt_tokens
            totals[name] += time.perf_counter() - t0
            if name == "cached":
                answer = text
        history.append({"role": "assistant", "content": answer})
        print(f"| {turn + 1} | {prompt} | {cached} | {first['cached']:.3f} | {first['fresh']:.3f} | "
              f"{first['fresh'] / first['cached']:.1f}x |")
    print(f"whole conversation: {totals['cached']:.2f} s with the prompt cache, {totals['fresh']:.2f} s without")
    clients(model, tok, a)


def clients(model, tok, a) -> None:
    """--clients requests sharing a system prompt, each submitted when the previous has a token."""
    from lmzoo import Engine, Request

    ttft = {}
    for cached in (True, False):
        eng = Engine(model, tok, max_running=a.clients, prompt_cache=cached)
        start, first, reused = {}, {}, {}
        for i in range(a.clients):
            msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
            rid = eng.submit(Request(messages=msgs, max_tokens=a.new))
            start[rid] = time.perf_counter()
            while rid not in first:
                for ev in eng.step():
                    if ev.token is not None:
                        first.setdefault(ev.request_id, time.perf_counter() - start[ev.request_id])
                        reused[ev.request_id] = ev.cached_tokens
        while eng.has_work:
            eng.step()
        ttft[cached] = [(first[r], reused[r]) for r in start]
    n = len(tok.encode_chat([{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[0]}]))
    print(f"\n{a.clients} clients, a shared system prompt (~{n} prompt tokens each), each arriving after the "
          "previous one's first token:")
    print("| client | cached tokens | first token, prompt cache (s) | first token, none (s) |")
    print("|---|---|---|---|")
    for i, ((t1, c1), (t0, _)) in enumerate(zip(ttft[True], ttft[False])):
        print(f"| {i + 1} | {c1} | {t1:.3f} | {t0:.3f} |")


if __name__ == "__main__":
    main()
