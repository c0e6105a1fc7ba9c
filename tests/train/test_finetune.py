"""`lmzoo finetune` as a user runs it, on the real default model: exact resume after SIGKILL, a clean
stop on SIGTERM, one-line errors; and the adapter it writes loads for inference."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

RECORDS = [{"instruction": f"What is fact number {i} about the lmzoo mascot?",
            "output": f"Fact {i}: the lmzoo mascot, Zofia, is a purple llama who likes number {i * 7}."}
           for i in range(8)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    p = tmp_path_factory.mktemp("data") / "facts.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return p


def _cmd(data, out, *extra):
    return [sys.executable, "-m", "lmzoo", "finetune", "--data", str(data), "--out", str(out), "--quiet",
            "--batch-size", "2", "--seq-len", "128", "--no-packing", "--lr", "1e-3", "--lora-r", "4",
            "--lora-dropout", "0.1", "--targets", "q,v", *extra]


def _run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_after_sigkill_ends_bitwise_equal(data, tmp_path, precision):
    """bf16: autocast on the CPU, the frozen base held in bf16 during the run (deterministic as well)."""
    steps = ["--max-steps", "6", "--save-every", "2"] + (["--bf16"] if precision == "bf16" else [])
    whole = _run(_cmd(data, tmp_path / "whole", *steps))
    assert whole.returncode == 0, whole.stderr
    killed = subprocess.Popen(_cmd(data, tmp_path / "killed", *steps), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    latest = tmp_path / "killed" / "checkpoints" / "latest"
    deadline = time.time() + 300
    while not latest.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert latest.exists(), "the run never checkpointed"
    resumed = _run(_cmd(data, tmp_path / "killed", *steps, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    a = load_file(str(tmp_path / "whole" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and a
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    ma = [json.loads(x) for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in mb] == list(range(1, 7))
    assert [m["loss"] for m in ma] == [m["loss"] for m in mb]
    assert (tmp_path / "killed" / "loss.png").stat().st_size > 0


def test_sigterm_checkpoints_and_stops(data, tmp_path):
    p = subprocess.Popen(_cmd(data, tmp_path / "run", "--max-steps", "500"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 300
    while (not metrics.exists() or not metrics.read_text().strip()) and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert "stopped at step" in err and "--resume" in err
    state = json.loads(next((tmp_path / "run" / "checkpoints").glob("step-*/state.json")).read_text())
    assert 1 <= state["step"] < 500


@pytest.mark.parametrize("extra,message", [
    (["--lr", "0"], "learning rate must be > 0"),
    (["--lora-r", "0"], "LoRA rank must be a positive integer"),
    (["--targets", "q_prj"], "match no module"),
    (["--method", "qlora2"], "method 'qlora2' is not known"),
    (["--too-long", "cut"], "--too-long must be"),
])
def test_bad_settings_are_one_line(data, tmp_path, extra, message):
    r = _run(_cmd(data, tmp_path / "x", "--max-steps", "1", *extra))
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_bad_data_and_busy_output(data, tmp_path):
    r = _run(_cmd(tmp_path / "missing.jsonl", tmp_path / "x", "--max-steps", "1"))
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(RECORDS[0]) + "\n" + json.dumps({"instruction": "no output"}) + "\n")
    r = _run(_cmd(bad, tmp_path / "x", "--max-steps", "1"))
    assert r.returncode == 2 and "bad.jsonl:2" in r.stderr and "'output'" in r.stderr, r.stderr
    ok = _run(_cmd(data, tmp_path / "y", "--max-steps", "1"))
    assert ok.returncode == 0, ok.stderr
    again = _run(_cmd(data, tmp_path / "y", "--max-steps", "1"))
    assert again.returncode == 2 and "already holds a run" in again.stderr
    changed = _run(_cmd(data, tmp_path / "y", "--max-steps", "2", "--resume", "--seed", "5"))
    assert changed.returncode == 2 and "settings differ" in changed.stderr
    rank = _run(_cmd(data, tmp_path / "y", "--max-steps", "2", "--resume", "--lora-r", "8"))
    assert rank.returncode == 2 and "'lora_r': (4, 8)" in rank.stderr, rank.stderr


def test_config_file_equals_flags(data, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"data: {data}\nmax_steps: 2\nlora_r: 4\nlr: 0.001\nbatch_size: 2\nseq_len: 128\n"
                   "packing: false\nlora_dropout: 0.1\ntargets: q,v\n")
    a = _run([sys.executable, "-m", "lmzoo", "finetune", "--config", str(cfg), "--out", str(tmp_path / "a"), "--quiet"])
    b = _run(_cmd(data, tmp_path / "b", "--max-steps", "2"))
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    wa = load_file(str(tmp_path / "a" / "adapter" / "adapter_model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "adapter" / "adapter_model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 1\n")
    r = _run([sys.executable, "-m", "lmzoo", "finetune", "--config", str(bad), "--data", str(data), "--out",
              str(tmp_path / "c")])
    assert r.returncode == 2 and "unknown settings ['learning_rate']" in r.stderr


def test_adapter_serves_generation(data, tmp_path, smollm2_path):
    import lmzoo
    from lmzoo.nn.lora import lora_layers

    r = _run(_cmd(data, tmp_path / "run", "--max-steps", "2"))
    assert r.returncode == 0, r.stderr
    model = lmzoo.from_pretrained(smollm2_path, adapter=tmp_path / "run" / "adapter")
    assert len(lora_layers(model)) == 30  # q and v share the fused qkv of each of the 30 layers
    env = {**os.environ}
    g = _run([sys.executable, "-m", "lmzoo", "generate", "--adapter", str(tmp_path / "run" / "adapter"), "-n", "8",
              "What is fact number 3 about the lmzoo mascot?"], env=env)
    assert g.returncode == 0 and g.stdout.strip(), g.stderr


def test_merge_and_export_cli(data, tmp_path, smollm2_path):
    import lmzoo

    r = _run(_cmd(data, tmp_path / "run", "--max-steps", "2", "--lr", "1e-2"))
    assert r.returncode == 0, r.stderr
    adapter = tmp_path / "run" / "adapter"
    m = _run([sys.executable, "-m", "lmzoo", "merge", "--adapter", str(adapter), "--out", str(tmp_path / "merged")])
    assert m.returncode == 0, m.stderr
    ids = torch.tensor([[1, 9690, 198, 2683, 359, 253]])
    with torch.no_grad():
        want = lmzoo.from_pretrained(smollm2_path, keep_quantized=False, adapter=adapter)(ids)
        got = lmzoo.from_pretrained(tmp_path / "merged")(ids)
        base = lmzoo.from_pretrained(smollm2_path, keep_quantized=False)(ids)
    assert (got - want).abs().max() <= 1e-4 < (base - want).abs().max()
    again = _run([sys.executable, "-m", "lmzoo", "merge", "--adapter", str(adapter), "--out", str(tmp_path / "merged")])
    assert again.returncode == 2 and "not empty" in again.stderr
    e = _run([sys.executable, "-m", "lmzoo", "export", "--out", str(tmp_path / "hf"), "--dtype", "bfloat16"])
    assert e.returncode == 0 and (tmp_path / "hf" / "model.safetensors").exists(), e.stderr


def test_full_finetune_writes_an_hf_checkpoint(data, tmp_path):
    r = _run([*_cmd(data, tmp_path / "full", "--max-steps", "1", "--method", "full", "--lr", "1e-5")])
    assert r.returncode == 0, r.stderr
    transformers = pytest.importorskip("transformers")
    model, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "full" / "model", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_qlora_base_is_nf4_and_the_head_stays_float(data, tmp_path):
    from lmzoo.nn.lora import lora_layers
    from lmzoo.quant.layers import NF4Linear
    from lmzoo.train.finetune import FinetuneConfig, prepare
    from lmzoo.train.loop import TrainConfig

    model, *_ = prepare(FinetuneConfig(data=str(data), out=str(tmp_path / "q"), method="qlora", targets="q,v",
                                       train=TrainConfig(seq_len=128)))
    layers = lora_layers(model)
    assert len(layers) == 30 and all(isinstance(m.base, NF4Linear) for m in layers.values())
    assert isinstance(model.layers[0].mlp.down, NF4Linear) and isinstance(model.lm_head, torch.nn.Linear)
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)


def test_serve_with_adapter_answers_as_the_tuned_model(data, tmp_path, smollm2_path):
    import openai

    import lmzoo
    from lmzoo.runtime import Engine, Request
    from lmzoo.tokenizer import load_tokenizer
    from tests.serve.test_server import MODEL, start_server

    r = _run(_cmd(data, tmp_path / "run", "--max-steps", "3", "--lr", "5e-3"))
    assert r.returncode == 0, r.stderr
    adapter = tmp_path / "run" / "adapter"
    q = [{"role": "user", "content": RECORDS[2]["instruction"]}]
    tok = load_tokenizer(smollm2_path)

    def local(model):
        e = Engine(model, tok, max_running=1)
        e.submit(Request(messages=q, max_tokens=16))
        return "".join(ev.text or "" for ev in e.run())

    tuned = local(lmzoo.from_pretrained(smollm2_path, adapter=adapter))
    assert tuned != local(lmzoo.from_pretrained(smollm2_path))
    proc, base = start_server("--adapter", str(adapter))
    try:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
        got = client.chat.completions.create(model=MODEL, messages=q, temperature=0, max_tokens=16)
        assert got.choices[0].message.content == tuned
    finally:
        proc.terminate()
        proc.wait(timeout=20)
