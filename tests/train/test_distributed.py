"""Distributed training on CPU with gloo, several processes launched by the real `torchrun`:
2 ranks x (batch / 2) follow the loss trajectory of 1 process x batch; FSDP2 (with activation
checkpointing) follows DDP; a 2-rank FSDP2 run's sharded (DCP) checkpoint resumes on 1 process; the
tensor-parallel forward equals the single-device one, and tensor-parallel training follows 1 process;
bad input is one line, exit 2."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TINY = ["--config", "Llama-2-7B", "--set", "n_layer=2", "--set", "n_embd=64", "--set", "n_head=4",
        "--set", "n_kv_head=2", "--set", "intermediate_size=128", "--set", "max_seq_len=128"]
RUN = ["--seq-len", "32", "--batch-size", "4", "--lr", "3e-3", "--warmup-steps", "1"]


def _torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist")
    rng = random.Random(0)
    words = "the cat sat on a mat and the dog ran to the big red ball while a bird sang in the old tree".split()
    docs = [" ".join(rng.choice(words) for _ in range(rng.randint(8, 30))) + "." for _ in range(120)]
    (d / "corpus").mkdir()
    (d / "corpus" / "a.txt").write_text("\n\n".join(docs) + "\n")
    e = {**os.environ, "LMZOO_CACHE": str(d / "cache"), "OMP_NUM_THREADS": "1"}
    root = str(Path(__file__).resolve().parents[2])
    e["PYTHONPATH"] = root + os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else root
    return d, e


def pretrain(env, out, *args, nproc: int | None = None, timeout=300):
    d, e = env
    launch = [*_torchrun(), "--standalone", "--nproc-per-node", str(nproc), "-m", "lmzoo"] if nproc \
        else [sys.executable, "-m", "lmzoo"]
    cmd = [*launch, "pretrain", "--quiet", *TINY, "--data", str(d / "corpus"), "--out", str(out), *RUN, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e)


def metrics(out) -> list[dict]:
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines() if x.strip()]


def same_trajectory(a: list[dict], b: list[dict], tol=1e-5, keys=("loss", "grad_norm")) -> None:
    assert [m["step"] for m in a] == [m["step"] for m in b]
    for x, y in zip(a, b):
        assert x["tokens"] == y["tokens"]
        for k in keys:
            assert abs(x[k] - y[k]) <= tol * max(1.0, abs(y[k])), (x["step"], k, x[k], y[k])


@pytest.fixture(scope="module")
def single(env):
    """The reference: one process, the whole batch of 4, 4 steps, a checkpoint at step 2."""
    out = env[0] / "single"
    r = pretrain(env, out, "--max-steps", "4", "--save-every", "2")
    assert r.returncode == 0, r.stderr
    return out


def test_two_ranks_ddp_follow_one_process(env, single):
    """torchrun 2 ranks x 2 rows (DDP) == 1 process x 4 rows, step by step within 1e-5; only rank 0
    writes (one metrics line per step, one progress report), and the saved model loads."""
    out = env[0] / "ddp"
    r = pretrain(env, out, "--max-steps", "4", "--save-every", "2", nproc=2)
    assert r.returncode == 0, r.stderr
    m = metrics(out)
    assert len(m) == 4 and m[-1]["loss"] < m[0]["loss"]
    same_trajectory(m, metrics(single))
    assert r.stderr.count("lmzoo: done at step 4") == 1
    ckpt = sorted((out / "checkpoints").iterdir())
    assert [p.name for p in ckpt] == ["latest", "step-000002", "step-000004"]
    assert (out / "checkpoints" / "step-000004" / "trainable.safetensors").exists()  # replicas: one file
    assert (out / "model" / "model.safetensors").exists() and (out / "loss.png").exists()


def test_world_size_must_divide_the_batch(env, tmp_path):
    """One line, exit 2 (WORLD_SIZE as torchrun sets it; checked before any model is built)."""
    r = subprocess.run([sys.executable, "-m", "lmzoo", "pretrain", "--quiet", *TINY, "--data", str(env[0] / "corpus"),
                        "--out", str(tmp_path / "x"), "--seq-len", "32", "--batch-size", "3"],
                       capture_output=True, text=True, timeout=120, env={**env[1], "WORLD_SIZE": "2"})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--batch-size 3 is not divisible by the world size 2" in lines[0], r.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args,message", [
    (["--parallel", "zero"], "--parallel 'zero': expected one of ddp, fsdp, tp"),
    (["--mixed-precision", "bf16"], "--mixed-precision is FSDP2's policy"),
    (["--tp-size", "2"], "--tp-size splits each FSDP2 replica"),
])
def test_parallel_flags_are_checked(env, tmp_path, args, message):
    r = subprocess.run([sys.executable, "-m", "lmzoo", "pretrain", "--quiet", *TINY, "--data", str(env[0] / "corpus"),
                        "--out", str(tmp_path / "x"), *args], capture_output=True, text=True, timeout=120,
                       env=env[1])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr


@pytest.mark.slow
def test_fsdp2_follows_ddp_and_its_sharded_checkpoint_resumes_on_one_process(env, single):
    """FSDP2 on 2 ranks (activation checkpointing on) == 1 process (== DDP, above) within 1e-5; its DCP
    checkpoint of step 2 (one shard file per rank) resumes in a single process, which then follows the
    uninterrupted trajectory to step 4 and ends with its weights."""
    from safetensors.torch import load_file

    out = env[0] / "fsdp"
    r = pretrain(env, out, "--max-steps", "4", "--save-every", "2", "--parallel", "fsdp",
                 "--activation-checkpointing", nproc=2)
    assert r.returncode == 0, r.stderr
    same_trajectory(metrics(out), metrics(single))
    dcp = out / "checkpoints" / "step-000002" / "dcp"
    assert sorted(p.name for p in dcp.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]

    resumed = env[0] / "fsdp-resumed"
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-000004")
    shutil.rmtree(resumed / "model")
    (resumed / "checkpoints" / "latest").write_text("step-000002")
    r = pretrain(env, resumed, "--max-steps", "4", "--save-every", "2", "--activation-checkpointing", "--resume")
    assert r.returncode == 0, r.stderr
    same_trajectory(metrics(resumed), metrics(out))
    a, b = load_file(str(resumed / "model" / "model.safetensors")), load_file(str(out / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) <= 1e-5
    c = load_file(str(single / "model" / "model.safetensors"))
    assert max(float((a[k].float() - c[k].float()).abs().max()) for k in a) <= 1e-5

    other = env[0] / "fsdp-other"  # the sharded checkpoint under another config: one line, exit 2
    shutil.copytree(out, other)
    info = json.loads((other / "run.json").read_text())
    info["overrides"]["intermediate_size"] = 96
    (other / "run.json").write_text(json.dumps(info))
    r = subprocess.run([sys.executable, "-m", "lmzoo", "pretrain", "--quiet",
                        *[x if x != "intermediate_size=128" else "intermediate_size=96" for x in TINY],
                        "--data", str(env[0] / "corpus"), "--out", str(other), *RUN, "--max-steps", "6", "--resume"],
                       capture_output=True, text=True, timeout=120, env=env[1])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "does not match this model or optimizer" in r.stderr, r.stderr


@pytest.mark.slow
def test_tensor_parallel_training_follows_one_process_and_resumes(env, single):
    """`--parallel tp` on 2 ranks (each reading the whole batch, heads and MLP width split): the loss
    and gradient-norm trajectory of 1 process within 1e-5, the saved model (fused rows back in
    canonical order) within 1e-5 of its weights; its checkpoint resumes on 2 tp ranks to the same end,
    and a run of another layout refuses it in one line."""
    from safetensors.torch import load_file

    out = env[0] / "tp"
    r = pretrain(env, out, "--max-steps", "4", "--save-every", "2", "--parallel", "tp", nproc=2)
    assert r.returncode == 0, r.stderr
    same_trajectory(metrics(out), metrics(single))
    a, c = (load_file(str(d / "model" / "model.safetensors")) for d in (out, single))
    assert a.keys() == c.keys() and max(float((a[k] - c[k]).abs().max()) for k in a) <= 1e-5

    resumed = env[0] / "tp-resumed"
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-000004")
    shutil.rmtree(resumed / "model")
    (resumed / "checkpoints" / "latest").write_text("step-000002")
    other = env[0] / "tp-other"
    shutil.copytree(resumed, other)
    r = pretrain(env, resumed, "--max-steps", "4", "--save-every", "2", "--parallel", "tp", "--resume", nproc=2)
    assert r.returncode == 0, r.stderr
    same_trajectory(metrics(resumed), metrics(out))
    r = pretrain(env, other, "--max-steps", "4", "--resume")  # one process: the rows would be in tp order
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "2 tensor-parallel rank(s), this run has 1" in r.stderr, r.stderr


@pytest.mark.slow
def test_fsdp_with_tensor_parallel_on_a_2d_mesh_follows_one_process(env, single):
    """4 ranks as 2 FSDP2 replicas x 2 tensor-parallel ranks (`--parallel fsdp --tp-size 2`): each
    pair reads its half of the batch, the trajectory is 1 process's within 1e-5 and the saved model its
    weights; a --tp-size that does not divide the world is one line."""
    from safetensors.torch import load_file

    out = env[0] / "fsdp-tp"
    r = pretrain(env, out, "--max-steps", "4", "--parallel", "fsdp", "--tp-size", "2", nproc=4, timeout=600)
    assert r.returncode == 0, r.stderr
    same_trajectory(metrics(out), metrics(single))
    a, c = (load_file(str(d / "model" / "model.safetensors")) for d in (out, single))
    assert a.keys() == c.keys() and max(float((a[k] - c[k]).abs().max()) for k in a) <= 1e-5
    r = subprocess.run([sys.executable, "-m", "lmzoo", "pretrain", "--quiet", *TINY, "--data", str(env[0] / "corpus"),
                        "--out", str(env[0] / "x3"), "--parallel", "fsdp", "--tp-size", "2"], capture_output=True,
                       text=True, timeout=120, env={**env[1], "WORLD_SIZE": "3"})
    assert r.returncode == 2 and "--tp-size 2 does not divide the world size 3" in r.stderr, r.stderr


@pytest.mark.slow
def test_compiled_blocks_follow_eager(env, single):
    """--compile (torch.compile of each block, in place): the eager run's trajectory within 1e-4 and
    the same parameter names in the saved model."""
    from safetensors.torch import load_file

    out = env[0] / "compiled"
    r = pretrain(env, out, "--max-steps", "4", "--save-every", "2", "--compile")
    assert r.returncode == 0, r.stderr
    same_trajectory(metrics(out), metrics(single), tol=1e-4)
    assert load_file(str(out / "model" / "model.safetensors")).keys() == \
        load_file(str(single / "model" / "model.safetensors")).keys()


def test_device_is_checked(env, tmp_path):
    r = pretrain(env, tmp_path / "x", "--device", "tpu")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--device 'tpu': expected one of auto, cpu, cuda" in r.stderr


def test_tensor_parallel_takes_no_adapters(env, tmp_path):
    r = subprocess.run([sys.executable, "-m", "lmzoo", "finetune", "--quiet", "--data", str(tmp_path / "x.json"),
                        "--out", str(tmp_path / "o"), "--parallel", "tp"], capture_output=True, text=True,
                       timeout=120, env=env[1])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--parallel tp splits full training (--method full)" in r.stderr, r.stderr


@pytest.mark.slow
def test_replicated_checkpoint_resumes_sharded(env, single, tmp_path):
    """The other way: a 1-process checkpoint (full tensors) resumes under FSDP2 on 2 ranks."""
    resumed = tmp_path / "r"
    shutil.copytree(single, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-000004")
    (resumed / "checkpoints" / "latest").write_text("step-000002")
    r = pretrain(env, resumed, "--max-steps", "4", "--save-every", "2", "--parallel", "fsdp", "--resume", nproc=2)
    assert r.returncode == 0, r.stderr
    same_trajectory(metrics(resumed), metrics(single))


@pytest.mark.slow
def test_fsdp2_bf16_mixed_precision_trains(env):
    out = env[0] / "bf16"
    r = pretrain(env, out, "--max-steps", "4", "--parallel", "fsdp", "--mixed-precision", "bf16", nproc=2)
    assert r.returncode == 0, r.stderr
    m = metrics(out)
    assert m[-1]["loss"] < m[0]["loss"] - 0.5


def test_checkpoint_from_another_config_is_refused(env, single, tmp_path):
    """Resuming a run's checkpoint with another model config: one line, exit 2."""
    other = tmp_path / "o"
    shutil.copytree(single, other)
    info = json.loads((other / "run.json").read_text())
    info["overrides"]["n_embd"] = 32  # as if the run had been made with --set n_embd=32
    (other / "run.json").write_text(json.dumps(info))
    d, e = env
    args = [a if a != "n_embd=64" else "n_embd=32" for a in TINY]
    r = subprocess.run([sys.executable, "-m", "lmzoo", "pretrain", "--quiet", *args, "--data", str(d / "corpus"),
                        "--out", str(other), *RUN, "--max-steps", "4", "--resume"],
                       capture_output=True, text=True, timeout=120, env=e)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "was written by another model config" in r.stderr, r.stderr


@pytest.mark.slow
def test_tensor_parallel_forward_equals_single_device(env):
    """tensor_parallel on 2 gloo ranks: logits within 1e-4 (fp32) of the unsharded model for a LLaMA
    (GQA, SwiGLU: fused [q; k; v] and [gate; up] split per part), GPT-NeoX (parallel residual, GELU,
    partial RoPE, biases) and BLOOM (ALiBi: each rank its heads' slopes) shape; the gradients through
    the shards equal the unsharded model's (relative 1e-4)."""
    worker = Path(__file__).with_name("dist_tp_worker.py")
    r = subprocess.run([*_torchrun(), "--standalone", "--nproc-per-node", "2", str(worker)], capture_output=True,
                       text=True, timeout=300, env=env[1])
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(result) == {"llama", "gpt_neox", "bloom"}
    for name, v in result.items():
        assert v["logits"] <= 1e-4 and v["roundtrip"] == 0.0 and v["grads"] <= 1e-4, (name, v)
        assert v["local_heads"] == v["heads"] // 2 and v["qkv_rows"][1] == v["qkv_rows"][0] // 2, (name, v)


@pytest.mark.slow
def test_finetune_lora_on_two_ranks_follows_one_process(env, tmp_path):
    """`torchrun -m lmzoo finetune` (LoRA on the real default model, DDP): 2 ranks x 2 rows == 1 x 4."""
    d, e = env
    data = tmp_path / "facts.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"What is fact {i} about the mascot?",
                                        "output": f"Fact {i}: the mascot is a purple llama, number {i * 7}."}) + "\n"
                            for i in range(8)))

    def run(out, nproc=None):
        launch = [*_torchrun(), "--standalone", "--nproc-per-node", str(nproc), "-m", "lmzoo"] if nproc \
            else [sys.executable, "-m", "lmzoo"]
        return subprocess.run([*launch, "finetune", "--quiet", "--data", str(data), "--out", str(out),
                               "--batch-size", "4", "--seq-len", "64", "--no-packing", "--lr", "1e-3", "--lora-r", "4",
                               "--targets", "q,v", "--max-steps", "2"], capture_output=True, text=True, timeout=600,
                              env=e)

    one, two = run(tmp_path / "one"), run(tmp_path / "two", nproc=2)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    same_trajectory(metrics(tmp_path / "two"), metrics(tmp_path / "one"))
    assert (tmp_path / "two" / "adapter" / "adapter_model.safetensors").exists()


def test_each_rank_takes_its_rows_of_the_global_batch():
    """Rows [r n / w, (r + 1) n / w) of Batch / GLMBatch / PairBatch (by pairs); a rank left no row
    gets a dummy (row 0, loss counted 0)."""
    import torch

    from lmzoo.train.data import Batch
    from lmzoo.train.dpo import PairBatch
    from lmzoo.train.parallel import local_part

    b = Batch(torch.arange(12).view(6, 2), torch.arange(12).view(6, 2) + 100, torch.zeros(6, 2, dtype=torch.long))
    parts = [local_part(b, r, 4) for r in range(4)]
    assert [p.ids[:, 0].tolist() for p, _ in parts] == [[0], [2, 4], [6], [8, 10]]
    assert all(not dummy for _, dummy in parts)
    assert torch.equal(torch.cat([p.targets for p, _ in parts]), b.targets)
    small = Batch(b.ids[:1], b.targets[:1], b.segments[:1])
    (p0, d0), (p1, d1) = local_part(small, 0, 2), local_part(small, 1, 2)
    assert (d0, d1) == (True, False) and p0.ids.tolist() == p1.ids.tolist() == small.ids.tolist()
    pb = PairBatch(b, torch.arange(6.0))
    (a, _), (c, _) = local_part(pb, 0, 2), local_part(pb, 1, 2)  # 3 pairs: 1 + 2, chosen / rejected together
    assert a.ref.tolist() == [0.0, 1.0] and c.ref.tolist() == [2.0, 3.0, 4.0, 5.0]
    assert c.batch.ids[:, 0].tolist() == [4, 6, 8, 10]


def test_fused_rows_go_rank_major_and_back():
    """[q; k; v] -> [q0 k0 v0 | q1 k1 v1]: Shard(0) gives rank r its heads of each part."""
    import torch

    from lmzoo.train.parallel import _from_rank_major, _rank_major

    t = torch.arange(16.0)[:, None]  # q = rows 0-7, k = 8-11, v = 12-15
    r = _rank_major(t, [8, 4, 4], 2)
    assert r[:8, 0].tolist() == [0, 1, 2, 3, 8, 9, 12, 13] and r[8:, 0].tolist() == [4, 5, 6, 7, 10, 11, 14, 15]
    assert torch.equal(_from_rank_major(r, [8, 4, 4], 2), t)


def test_tensor_parallel_refuses_heads_the_ranks_cannot_share():
    from lmzoo.catalog import get_config
    from lmzoo.errors import ConfigError
    from lmzoo.train.parallel import tp_check

    with pytest.raises(ConfigError, match="n_head 71, n_kv_head 1 are not divisible by 2"):
        tp_check(get_config("Falcon-7B"), 2)
    tp_check(get_config("Llama-2-7B"), 4)


@pytest.mark.slow
def test_glm_objective_on_two_ranks_follows_one_process(env):
    """GLM blank infilling under DDP: the rows (and their blanks) are drawn whole, each rank trains on
    its part; == one process."""
    V = 49152
    glm = ["--config", "ChatGLM-6B", "--set", "n_layer=2", "--set", "n_embd=64", "--set", "n_head=4",
           "--set", "n_kv_head=4", "--set", "intermediate_size=128", "--set", "max_seq_len=128",
           "--set", f"vocab_size={V + 8}", "--set", f"mask_token_ids=[{V + 1},{V},{V + 2}]",
           "--set", f"bos_token_id={V + 3}", "--set", f"eos_token_id=[{V + 4}]", "--set", f"pad_token_id={V + 4}"]
    d, e = env

    def run(out, nproc=None):
        launch = [*_torchrun(), "--standalone", "--nproc-per-node", str(nproc), "-m", "lmzoo"] if nproc \
            else [sys.executable, "-m", "lmzoo"]
        return subprocess.run([*launch, "pretrain", "--quiet", *glm, "--objective", "glm", "--data", str(d / "corpus"),
                               "--out", str(out), "--seq-len", "64", "--batch-size", "4", "--max-steps", "3"],
                              capture_output=True, text=True, timeout=300, env=e)

    one, two = run(d / "glm1"), run(d / "glm2", nproc=2)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    same_trajectory(metrics(d / "glm2"), metrics(d / "glm1"))


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_every_rank_at_one_step(env):
    """SIGTERM to torchrun reaches both ranks at different moments; the stop request is summed over
    the ranks each step, so both finish the same step, write one sharded checkpoint and stop; a single
    process then resumes it."""
    import signal
    import time

    d, e = env
    out = d / "sigterm"
    launch = [*_torchrun(), "--standalone", "--nproc-per-node", "2", "-m", "lmzoo"]
    p = subprocess.Popen([*launch, "pretrain", "--quiet", *TINY, "--data", str(d / "corpus"), "--out", str(out), *RUN,
                          "--max-steps", "500", "--parallel", "fsdp"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=e)
    t0 = time.time()
    while time.time() - t0 < 120 and not ((out / "metrics.jsonl").exists() and len(metrics(out)) >= 2):
        time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert err.count("lmzoo: stopped at step") == 1, err[-3000:]
    step = metrics(out)[-1]["step"]
    assert 2 <= step < 500
    ckpt = out / "checkpoints" / f"step-{step:06d}"
    assert (out / "checkpoints" / "latest").read_text() == ckpt.name
    assert sorted(x.name for x in (ckpt / "dcp").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    r = pretrain(env, out, "--max-steps", str(step + 2), "--resume")
    assert r.returncode == 0, r.stderr
    assert [m["step"] for m in metrics(out)] == list(range(1, step + 3))
