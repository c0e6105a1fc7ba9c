"""The README's demonstration: LoRA-fine-tune the default model (SmolLM2-135M-Instruct) on made-up
facts it cannot know (examples/facts_train.jsonl); the held-out phrasings (examples/facts_eval.jsonl)
then get the right answers, which the base model gets wrong. About a minute on 2 cores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _answers(model, tok, questions):
    from lmzoo.runtime import Engine, Request

    engine = Engine(model, tok, max_running=len(questions))
    ids = [engine.submit(Request(messages=[{"role": "user", "content": q}], max_tokens=24)) for q in questions]
    text = {i: "" for i in ids}
    for ev in engine.run():
        text[ev.request_id] += ev.text or ""
    return [text[i] for i in ids]


@pytest.mark.slow
def test_lora_teaches_the_default_model_new_facts(tmp_path, smollm2_path):
    import lmzoo
    from lmzoo.tokenizer import load_tokenizer

    out = tmp_path / "facts"
    r = subprocess.run([sys.executable, "-m", "lmzoo", "finetune", "--data", str(EXAMPLES / "facts_train.jsonl"),
                        "--eval-data", str(EXAMPLES / "facts_eval.jsonl"), "--out", str(out), "--epochs", "4",
                        "--batch-size", "2", "--seq-len", "128", "--lr", "2e-3", "--warmup-steps", "2",
                        "--eval-every", "8", "--quiet"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    m = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [x["eval_loss"] for x in m if x.get("eval_loss") is not None]
    train = [x["loss"] for x in m if x.get("loss") is not None]
    assert evals[-1] < 0.2 * evals[0], evals
    assert sum(train[-4:]) / 4 < 0.2 * train[0], train

    evalset = [json.loads(x) for x in (EXAMPLES / "facts_eval.jsonl").read_text().splitlines()]
    questions = [e["instruction"] for e in evalset]
    # the distinctive part of each answer (after "is ")
    keys = [e["output"].rsplit(" is ", 1)[1].rstrip(".").lower() for e in evalset]
    tok = load_tokenizer(smollm2_path)
    base = _answers(lmzoo.from_pretrained(smollm2_path), tok, questions)
    tuned = _answers(lmzoo.from_pretrained(smollm2_path, adapter=out / "adapter"), tok, questions)
    right = lambda answers: sum(k in a.lower() for k, a in zip(keys, answers))  # noqa: E731
    assert right(base) <= 1, base
    assert right(tuned) >= 6, tuned
