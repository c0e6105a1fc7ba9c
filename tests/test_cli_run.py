"""`lmzoo generate` / `lmzoo chat` as a user runs them: a subprocess, real model, exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest


def lmzoo(*args: str, stdin: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmzoo", *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout)


def test_generate_answers_with_default_model():
    r = lmzoo("generate", "What is the capital of France?", "--max-new-tokens", "24")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout


def test_chat_multi_turn_from_stdin():
    r = lmzoo("chat", "--max-new-tokens", "24", stdin="What is the capital of France?\nAnd of Germany?\n")
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines() if l.strip()]
    assert "Paris" in lines[0] and "Berlin" in lines[1]


def test_stop_string_and_raw_mode():
    r = lmzoo("generate", "--raw", "The capital of France is", "--max-new-tokens", "30", "--stop", ".")
    assert r.returncode == 0, r.stderr
    assert "." not in r.stdout.strip()


@pytest.mark.parametrize("args,needle", [
    (["generate", "--model", "/nonexistent/model", "hi"], "does not exist"),
    (["generate", "--temperature", "-1", "hi"], "temperature"),
    (["generate", "--top-p", "0", "hi"], "top_p"),
    (["generate", "--top-p", "1.5", "hi"], "top_p"),
    (["generate", "--top-k", "0", "hi"], "top_k"),
    (["chat", "--repetition-penalty", "0"], "repetition_penalty"),
])
def test_bad_input_is_one_line_and_exit_2(args, needle):
    r = lmzoo(*args)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in r.stderr


def test_directory_without_config(tmp_path):
    r = lmzoo("generate", "--model", str(tmp_path), "hi")
    assert r.returncode == 2 and "config.json" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_prompt_longer_than_context():
    r = lmzoo("generate", "--raw", "word " * 9000, "--max-new-tokens", "2")
    assert r.returncode == 2
    assert "longer than the model's context" in r.stderr and len(r.stderr.strip().splitlines()) == 1
