"""The catalog's row type: one published model, its facts, each fact's source, and its architecture.

An `Entry` is plain data. `arch` holds the real published hyperparameters under `ModelConfig`'s field
names (so `ModelConfig(**arch)` builds it when lmzoo can run it); a feature lmzoo's one Transformer does
not have yet is written as a value `ModelConfig` rejects (e.g. `my_feature=True`) or as one of the
`EXTRA_ARCH_KEYS` below, so the parameter counter (lmzoo.sizing.estimate) still sees it and `get_config`
refuses it with a clear message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Architectural features not (yet) fields of ModelConfig. Each is counted by lmzoo.sizing.estimate.
EXTRA_ARCH_KEYS: dict[str, str] = {}  # empty today: every seed architecture is a ModelConfig

COMMERCIAL = ("yes", "no", "conditional")


@dataclass(frozen=True, kw_only=True)
class License:
    name: str
    commercial: str  # "yes" | "no" | "conditional"
    conditions: str = ""  # what the license asks for or forbids, in one line
    url: str = ""

    def __post_init__(self) -> None:
        if self.commercial not in COMMERCIAL:
            raise ValueError(f"License.commercial must be one of {COMMERCIAL}, got {self.commercial!r}")


@dataclass(frozen=True, kw_only=True)
class Entry:
    name: str  # canonical catalog name, e.g. "Llama-2-7B"
    family: str  # e.g. "llama", "qwen", "glm"
    organisation: str
    released: str  # ISO date of first public release (YYYY-MM-DD or YYYY-MM)
    params: float  # the published parameter count (the most precise figure the primary source gives)
    params_label: str  # how the publisher writes it ("6.7B", "7B", "671B")
    active_params: float | None = None  # MoE: published parameters used per token
    tokens: float | None = None  # pre-training tokens (None: not disclosed)
    tokenizer: str  # kind: "SentencePiece BPE", "byte-level BPE (tiktoken)", ...
    license: License
    base_model: str | None = None  # derivatives: the catalog name they were fine-tuned from
    objective: str = "causal LM"  # or "GLM blank infilling", "instruction SFT", ...
    arch: Mapping[str, Any]
    hf_id: str | None = None  # Hugging Face repository of the weights
    sources: Mapping[str, str] = field(default_factory=dict)  # fact -> URL of the primary source
    notes: tuple[str, ...] = ()  # remarks, including where the seeds disagree with the primary source
    # why the computed count may differ from `params` by more than 2% (None: it must not)
    param_exception: str | None = None
    aliases: tuple[str, ...] = ()

    @property
    def context(self) -> int:
        return int(self.arch["max_seq_len"])

    @property
    def vocab_size(self) -> int:
        return int(self.arch["vocab_size"])

    def source(self, fact: str) -> str:
        """URL for `fact` (params, tokens, context, vocab, arch, license, released, ...)."""
        if fact in self.sources:
            return self.sources[fact]
        if fact in ("context", "vocab", "arch", "tokenizer") and "arch" in self.sources:
            return self.sources["arch"]
        return self.sources.get("paper") or self.sources.get("card") or ""

    def facts(self) -> dict[str, Any]:
        """The entry as a JSON-ready dict (CLI --json, docs)."""
        return {
            "name": self.name, "family": self.family, "organisation": self.organisation,
            "released": self.released, "params": self.params, "params_label": self.params_label,
            "active_params": self.active_params, "tokens": self.tokens, "context": self.context,
            "vocab_size": self.vocab_size, "tokenizer": self.tokenizer,
            "license": {"name": self.license.name, "commercial": self.license.commercial,
                        "conditions": self.license.conditions, "url": self.license.url},
            "base_model": self.base_model, "objective": self.objective, "hf_id": self.hf_id,
            "arch": {k: (dict(v) if isinstance(v, Mapping) else list(v) if isinstance(v, tuple) else v)
                     for k, v in self.arch.items()},
            "sources": dict(self.sources), "notes": list(self.notes), "param_exception": self.param_exception,
        }


def derive(arch: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of a base model's architecture with some fields changed (e.g. a grown vocabulary)."""
    return {**arch, **changes}


def hf(repo: str) -> str:
    return f"https://huggingface.co/{repo}"


def hf_config(repo: str) -> str:
    return f"https://huggingface.co/{repo}/blob/main/config.json"
