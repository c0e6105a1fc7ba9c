"""`lmzoo plot RUN_DIR` draws metrics.jsonl; a directory without metrics is one clear error."""

from __future__ import annotations

import json
import subprocess
import sys


def test_plot_cli(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in [
        {"step": 0, "eval_loss": 2.0, "tokens": 0}, {"step": 1, "loss": 1.5, "tokens": 10},
        {"step": 2, "loss": 1.0, "tokens": 20, "eval_loss": 1.2}]))
    r = subprocess.run([sys.executable, "-m", "lmzoo", "plot", str(run)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    png = run / "loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run([sys.executable, "-m", "lmzoo", "plot", str(tmp_path)], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "no metrics.jsonl" in bad.stderr
