"""A multi-turn chat through the engine with and without its prompt cache (Engine(prompt_cache=True),
on in `lmzoo chat` and `lmzoo serve`): the time to the first token of each turn, as a chat client sees
it (the whole conversation is sent every turn), and the prompt tokens found in the cache.

    python benchmarks/chat_turns.py [--model X.gguf] [--turns 8] [--new 64] [--threads 2]

The two engines answer the same conversation (the prompt-cached one's answers become the history),
turn by turn alternately, greedy.
"""

from __future__ import annotations

import argparse
import time

import torch

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


if __name__ == "__main__":
    main()
