"""`lmzoo list | show | compare | params | memory | fit | hardware | explain` through lmzoo.cli.main:
exit codes, --json that parses, one-line errors with suggestions, PNGs that are PNGs."""

import json
from pathlib import Path

import pytest

from lmzoo.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(capsys, *argv):
    with pytest.raises(SystemExit) as ex:
        main(list(argv))
    out, err = capsys.readouterr()
    return ex.value.code or 0, out, err


def run_json(capsys, *argv):
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def test_list_filters_and_json(capsys):
    rows = run_json(capsys, "list", "--family", "qwen")
    assert rows and all(r["family"] == "qwen" for r in rows)
    commercial = {r["name"] for r in run_json(capsys, "list", "--commercial")}
    assert "Mistral-7B" in commercial and "LLaMA-7B" not in commercial
    fits = run_json(capsys, "list", "--fits", "24GB", "--task", "infer", "--dtype", "bf16", "--context", "4096")
    names = {r["name"] for r in fits}
    assert "Llama-2-7B" in names and "Llama-2-70B" not in names
    assert all(r["memory_bytes"] <= 24 * 1024**3 for r in fits)
    code, out, _ = run(capsys, "list", "--family", "glm")
    assert code == 0 and "ChatGLM2-6B" in out


def test_show_params_compare(capsys):
    d = run_json(capsys, "show", "deepseek-v3")
    assert d["name"] == "DeepSeek-V3" and d["count"]["active"] < d["count"]["total"] and d["runnable"]
    assert d["sources"]["params"].startswith("https://")
    assert run_json(capsys, "show", "ChatGLM-6B")["runnable"] is True
    assert run_json(capsys, "show", "PanGu-alpha-2.6B")["runnable"] is True
    p = run_json(capsys, "params", "Llama-2-7B")
    assert p["total"] == sum(p["breakdown"].values()) == 6_738_415_616
    c = run_json(capsys, "compare", "LLaMA-7B", "BLOOM-7B1", "ChatGLM-6B", "Falcon-7B")
    rows = c["rows"]
    assert rows["norm"][0].startswith("RMSNorm") and rows["norm"][1].startswith("LayerNorm")
    assert rows["position encoding"][1] == "ALiBi" and "2-D" in rows["position encoding"][2]
    assert rows["attention sharing"][3].startswith("MQA")
    assert "blank infilling" in rows["objective"][2]
    code, out, _ = run(capsys, "show", "Mixtral-8x7B")
    assert code == 0 and "experts" in out and "active" in out


def test_memory_fit_hardware(capsys, tmp_path):
    m = run_json(capsys, "memory", "Llama-2-7B", "--task", "infer", "--dtype", "bf16", "--context", "4096",
                 "--gpu", "24GB")
    assert m["gpus_needed"] == 1 and m["breakdown_bytes"]["kv_cache"] == 2 * 1024**3
    t = run_json(capsys, "memory", "Llama-2-70B", "--task", "train", "--dtype", "bf16", "--context", "2048",
                 "--gpu", "80GB", "--checkpointing")
    assert t["gpus_needed"] >= 13
    png = tmp_path / "mem.png"
    code, out, err = run(capsys, "memory", "Qwen2.5-7B", "--plot", str(png))
    assert code == 0, err
    assert png.read_bytes()[:8] == PNG_MAGIC
    f = run_json(capsys, "fit", "--gpu", "24GB", "--family", "llama", "--context", "2048")
    by = {r["name"]: r["fits"] for r in f["models"]}
    assert by["Llama-2-7B"]["infer/bf16"] and not by["Llama-2-7B"]["train/bf16"] and by["Llama-2-7B"]["qlora"]
    assert not any(by["Llama-3.1-405B"].values())
    h = run_json(capsys, "hardware")
    assert [r["size"] for r in h["seed_000"]] == ["7B", "13B", "32B", "70B", "304B"]
    assert all(r["train"] > r["lora"] > r["qlora"] for r in h["seed_000"])


@pytest.mark.parametrize("what", ["glm-mask", "glm-positions", "masks", "alibi", "rope"])
def test_explain_text_and_png(capsys, tmp_path, what):
    png = tmp_path / f"{what}.png"
    code, out, err = run(capsys, "explain", what, "--plot", str(png))
    assert code == 0, err
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
    assert len(out.splitlines()) > 4


def test_glm_mask_text_shows_part_a_and_b(capsys):
    _, out, _ = run(capsys, "explain", "glm-mask")
    rows = [line for line in out.splitlines() if "■" in line and line.strip().startswith(("x1", "[S]"))]
    assert rows[0].count("■") == 5  # Part A: all of Part A, nothing of B
    assert rows[1].count("■") == 6  # first [S]: Part A + itself


@pytest.mark.parametrize("argv,needle", [
    (["show", "Lama-2-7B"], "Llama-2-7B"),
    (["memory", "Llama-2-7B", "--context", "-5"], "context"),
    (["memory", "Llama-2-7B", "--dtype", "fp7"], "dtype"),
    (["memory", "Llama-2-7B", "--gpu", "0GB"], "> 0"),
    (["fit", "--gpu", "0"], "> 0"),
    (["list", "--family", "lama"], "families"),
    (["explain", "alibo"], "alibi"),
    (["explain", "rope", "--model", "BLOOM-7B1"], "RoPE"),
    (["memory", "Llama-2-7B", "--plot", "out.jpg"], "PNG"),
    (["memory", "Llama-2-7B", "--plot", "/nonexistent-lmzoo-dir/x.png"], "does not exist"),  # and none is made
    (["explain", "alibi", "--plot", "/nonexistent-lmzoo-dir/x.png"], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, needle):
    code, out, err = run(capsys, *argv)
    assert not Path("/nonexistent-lmzoo-dir").exists()
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lmzoo: error:") and needle in lines[0], err
