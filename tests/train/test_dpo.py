"""DPO: the completion log-probs against transformers' logits, ln 2 at the first step (policy ==
reference), and a preference that moves on held-out pairs (examples/prefs_*.jsonl)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lmzoo
from lmzoo.train.data import IGNORE, Example, collate
from lmzoo.train.dpo import DPOObjective, Pair, _pair_batch
from lmzoo.train.loss import sequence_logprobs
from tests.test_parity import V, build_reference

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _pair(seed):
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(3, V, (5,), generator=g).tolist()
    out = []
    for n in (4, 7):
        ids = prompt + torch.randint(3, V, (n,), generator=g).tolist()
        out.append(Example(ids, [ids[t + 1] if t + 1 >= 5 else IGNORE for t in range(len(ids) - 1)] + [IGNORE]))
    return Pair(*out)


def test_completion_logprobs_equal_transformers(tmp_path):
    ref = build_reference("llama-gqa", tmp_path)
    ours = lmzoo.from_pretrained(tmp_path, dtype=torch.float32)
    pairs = [_pair(0), _pair(1)]
    b = _pair_batch(pairs).batch
    with torch.no_grad():
        got = sequence_logprobs(ours, ours(b.ids, segment_ids=b.segments, hidden_only=True), b.targets, chunk=3)
        want = []
        for ex in (e for p in pairs for e in (p.chosen, p.rejected)):
            logp = ref(torch.tensor([ex.ids])).logits[0].log_softmax(-1)
            want.append(sum(float(logp[t, y]) for t, y in enumerate(ex.targets) if y != IGNORE))
    torch.testing.assert_close(got, torch.tensor(want), atol=1e-4, rtol=1e-5)


def test_first_loss_is_ln2_and_rewards_follow_trl(tmp_path):
    ref = build_reference("qwen2", tmp_path)
    del ref
    model = lmzoo.from_pretrained(tmp_path, dtype=torch.float32)
    pairs = [_pair(2), _pair(3), _pair(4)]
    from lmzoo.train.dpo import reference_logprobs

    reference_logprobs(model, pairs)
    obj = DPOObjective(beta=0.1)
    pb = _pair_batch(pairs)
    total, m = obj.loss(model, pb)
    assert obj.units(pb) == 3
    assert abs(float(total) / 3 - math.log(2)) < 1e-6
    assert abs(float(m["rewards/margin"])) < 1e-5
    # a policy that prefers the chosen replies more than the reference did: positive margin, lower loss
    pb.ref[0::2] -= 1.0
    total2, m2 = obj.loss(model, pb)
    assert float(m2["rewards/chosen"]) == pytest.approx(0.1, abs=1e-5)
    assert float(m2["rewards/accuracy"]) == 1.0
    assert float(total2) / 3 == pytest.approx(-math.log(1 / (1 + math.exp(-0.1))), abs=1e-5)


def test_rows_of_a_pair_batch_do_not_mix():
    pairs = [_pair(5), _pair(6)]
    b = _pair_batch(pairs).batch
    assert b.ids.shape[0] == 4 and collate([pairs[0].chosen], [[0]]).ids[0].tolist() == b.ids[0, :9].tolist()


@pytest.mark.slow
def test_dpo_moves_a_held_out_preference(tmp_path):
    out = tmp_path / "dpo"
    r = subprocess.run([sys.executable, "-m", "lmzoo", "finetune", "--objective", "dpo",
                        "--data", str(EXAMPLES / "prefs_train.jsonl"), "--eval-data", str(EXAMPLES / "prefs_eval.jsonl"),
                        "--out", str(out), "--epochs", "2", "--batch-size", "4", "--lr", "5e-4", "--quiet"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    m = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert m[0]["step"] == 0 and abs(m[0]["eval_loss"] - math.log(2)) < 1e-4  # policy == reference
    assert abs(m[1]["loss"] - math.log(2)) < 1e-4
    assert m[-1]["eval_loss"] < 0.5 and m[-1]["rewards/margin"] > 0
    assert (out / "adapter" / "adapter_config.json").exists() and (out / "reference_logprobs.json").exists()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_first_dpo_loss_is_ln2_at_either_precision(tmp_path, precision):
    """The reference log-probs are computed under the run's precision (bf16 autocast with --bf16 on the
    CPU): the first step's policy equals the reference, so its loss is ln 2 to float rounding."""
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join((EXAMPLES / "prefs_train.jsonl").read_text().splitlines(keepends=True)[:4]))
    out = tmp_path / "dpo"
    r = subprocess.run([sys.executable, "-m", "lmzoo", "finetune", "--objective", "dpo", "--data", str(data),
                        "--out", str(out), "--max-steps", "1", "--batch-size", "2", "--quiet",
                        *(["--bf16"] if precision == "bf16" else [])],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    m = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert abs(m[0]["loss"] - math.log(2)) < 1e-6, m[0]
