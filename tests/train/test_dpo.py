"""DPO: the completion log-probs against transformers' logits; loss, metrics and gradients against
trl's DPOTrainer on the same ids; ln 2 at the first step (policy == reference), and a preference that
moves on held-out pairs (examples/prefs_*.jsonl)."""

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


def test_loss_metrics_and_gradients_equal_trl(tmp_path):
    """trl's DPOTrainer (sigmoid loss, beta 0.1, a reference model) and lmzoo's DPOObjective on the same
    prompt / chosen / rejected ids, with a policy moved away from the reference the same way on both
    sides: the same loss, rewards and gradients."""
    import copy

    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from lmzoo.train.dpo import reference_logprobs

    ref = build_reference("qwen2", tmp_path)
    ours = lmzoo.from_pretrained(tmp_path, dtype=torch.float32, cpu_kernels=False)
    g = torch.Generator().manual_seed(0)
    rows = [{"prompt_ids": torch.randint(3, V, (5,), generator=g).tolist(),
             "chosen_ids": torch.randint(3, V, (n,), generator=g).tolist(),
             "rejected_ids": torch.randint(3, V, (m,), generator=g).tolist()} for n, m in ((4, 6), (7, 3), (5, 5))]
    words = Tokenizer(models.WordLevel({f"t{i}": i for i in range(V)}, unk_token="t1"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=words, pad_token="t0", unk_token="t1", eos_token="t2")
    policy = copy.deepcopy(ref).train()
    trainer = DPOTrainer(model=policy, ref_model=ref, processing_class=tok,
                         args=DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=3, beta=0.1,
                                        report_to="none", use_cpu=True, bf16=False, precompute_ref_log_probs=False),
                         train_dataset=Dataset.from_list([{"prompt": "t5", "chosen": " t6", "rejected": " t7"}]))
    pairs = []
    for r in rows:
        P = len(r["prompt_ids"])
        ids = [r["prompt_ids"] + r[k] for k in ("chosen_ids", "rejected_ids")]
        pairs.append(Pair(*(Example(x, [x[t + 1] if t + 1 >= P else IGNORE for t in range(len(x) - 1)] + [IGNORE])
                            for x in ids)))
    reference_logprobs(ours, pairs)
    with torch.no_grad():  # the policy leaves the reference: two matrices moved on both sides
        for theirs, mine in ((policy.model.layers[0].self_attn.o_proj.weight, ours.layers[0].attn.o.weight),
                             (policy.model.layers[1].mlp.down_proj.weight, ours.layers[1].mlp.down.weight)):
            delta = 0.05 * torch.randn(theirs.shape, generator=g)
            theirs += delta
            mine += delta
    loss = trainer.compute_loss(trainer.model, DataCollatorForPreference(pad_token_id=0)(rows))
    loss.backward()
    want = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    for p in ours.parameters():
        p.requires_grad_(True)
    ours.train()
    obj = DPOObjective(beta=0.1)
    pb = _pair_batch(pairs)
    total, m = obj.loss(ours, pb)
    (total / obj.units(pb)).backward()
    assert abs(float(loss) - math.log(2)) > 1e-3  # the policy moved: not the trivial first step
    assert float(total) / 3 == pytest.approx(float(loss), abs=1e-6)
    for ours_key, trl_key in (("rewards/chosen", "rewards/chosen"), ("rewards/rejected", "rewards/rejected"),
                              ("rewards/accuracy", "rewards/accuracies"), ("rewards/margin", "rewards/margins")):
        assert float(m[ours_key]) == pytest.approx(want[trl_key], abs=1e-6), ours_key
    hf, v = policy.model, policy.model.layers[1].self_attn.v_proj.weight
    for theirs, mine in ((hf.layers[0].self_attn.o_proj.weight, ours.layers[0].attn.o.weight.grad),
                         (hf.layers[1].mlp.down_proj.weight, ours.layers[1].mlp.down.weight.grad),
                         (v, ours.layers[1].attn.qkv.weight.grad[-v.shape[0]:]),  # v's rows of the fused qkv
                         (hf.embed_tokens.weight, ours.embed.weight.grad)):
        torch.testing.assert_close(mine, theirs.grad, atol=1e-6, rtol=1e-4)


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
