"""The catalog: every seed model present, facts complete and sourced, parameter counts against the
published figures (2%, or a documented exception) and against our own Transformer on the meta device."""

import json
import re

import pytest
import torch

import lmzoo
from lmzoo import catalog as C
from lmzoo.catalog.seeds import SEED_MODELS
from lmzoo.errors import LmzooError, UnknownModelError, UnsupportedModelError
from lmzoo.nn.transformer import Transformer

ENTRIES = list(C.ENTRIES.values())

# the families and sizes the seeds name (issue 3's list)
REQUIRED = [
    "LLaMA-7B", "LLaMA-13B", "LLaMA-33B", "LLaMA-65B", "Llama-2-7B", "Llama-2-13B", "Llama-2-70B", "Llama-3-8B",
    "Llama-3-70B", "Llama-3.1-8B", "Llama-3.1-70B", "Llama-3.1-405B", "Llama-4-Scout-17B-16E",
    "Llama-4-Maverick-17B-128E", "Alpaca-7B", "Vicuna-13B", "Koala-13B", "BELLE-7B-2M", "Chinese-LLaMA-7B",
    "WizardLM-7B", "ChatGLM-6B", "ChatGLM2-6B", "ChatGLM3-6B", "GLM-130B", "GLM-4-9B", "CodeGeeX2-6B",
    "BLOOM-560M", "BLOOM-1B1", "BLOOM-1B7", "BLOOM-3B", "BLOOM-7B1", "BLOOM-176B", "BLOOMZ-7B1-mt", "Baichuan-7B",
    "Baichuan-13B", "Baichuan2-7B", "Baichuan2-13B", "Qwen1.5-7B", "Qwen2-7B", "Qwen2.5-7B", "Qwen2.5-7B-Instruct-1M",
    "Yi-34B", "Yi-1.5-9B", "Yi-Coder-9B", "DeepSeek-V3", "DeepSeek-R1", "DeepSeek-R1-Distill-Qwen-1.5B",
    "DeepSeek-R1-Distill-Llama-70B", "Falcon-7B", "Falcon-40B", "Falcon-180B", "Mistral-7B", "Mixtral-8x7B",
    "GPT-NeoX-20B", "OPT-125M", "OPT-175B", "GPT-J-6B", "RedPajama-INCITE-7B", "Cerebras-GPT-111M",
    "Cerebras-GPT-13B", "Dolly-v2-12B", "StableLM-Base-Alpha-7B", "MOSS-moon-003-base", "PanGu-alpha-13B",
    "Phi-3-mini", "Grok-1",
]


def test_every_seed_model_is_catalogued_or_explained():
    for seed_name, target in SEED_MODELS.items():
        if isinstance(target, tuple):
            assert target[0] is None and len(target[1]) > 10, seed_name
        else:
            assert C.get_entry(target).name == target, seed_name
    for name in REQUIRED:
        assert name in C.ENTRIES, name


@pytest.mark.parametrize("e", ENTRIES, ids=lambda e: e.name)
def test_facts_complete_and_sourced(e):
    assert re.fullmatch(r"\d{4}-\d{2}(-\d{2})?", e.released)
    assert e.license.commercial in ("yes", "no", "conditional") and e.license.name
    if e.license.commercial != "yes" or e.license.name not in ("MIT", "Apache-2.0"):
        assert e.license.conditions, "non-trivial licenses say what they allow"
    for fact in ("params", "arch", "license"):
        assert e.source(fact).startswith("https://"), (e.name, fact)
    if e.tokens is None:
        assert any(w in " ".join(e.notes) for w in ("not disclosed", "fine-tuning", "corpus", "undisclosed")), \
            "missing training tokens are explained"
    else:
        assert 1e9 < e.tokens < 1e14
    if e.base_model is not None:
        assert e.base_model in C.ENTRIES, f"{e.name}: base {e.base_model} not in the catalog"
    assert e.context == e.arch["max_seq_len"] > 0 and e.vocab_size >= 32000 or e.family == "pangu"
    json.dumps(e.facts())  # JSON-ready


@pytest.mark.parametrize("e", ENTRIES, ids=lambda e: e.name)
def test_count_within_2pct_of_published_or_documented(e):
    n = C.count_params(e.name)
    dev = n.total / e.params - 1
    if e.param_exception is None:
        assert abs(dev) <= 0.02, f"{e.name}: counted {n.total:,} vs published {e.params:,.0f} ({dev:+.1%})"
    else:  # an exception is for a real gap (never a stale excuse), and the gap stays plausible
        assert 0.02 < abs(dev) < 0.25, f"{e.name}: exception documented but deviation is {dev:+.1%}"
    if e.active_params is not None:
        assert abs(n.active / e.active_params - 1) <= 0.02, f"{e.name}: active {n.active:,}"
        assert n.active < n.total


def _unique_runnable():
    seen, out = set(), []
    for e in ENTRIES:
        if C.unsupported_features(e):
            continue
        key = json.dumps({k: v for k, v in e.arch.items()}, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


def _meta_numel(cfg) -> int:
    with torch.device("meta"):
        m = Transformer(cfg)
    seen, n = set(), 0
    for p in m.parameters():  # a tied head is one parameter
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def _first_layers(arch: dict, n: int) -> dict:
    """The same architecture cut to its first n layers (layer-index tuples cut with it)."""
    out = {**arch, "n_layer": min(n, arch["n_layer"])}
    for k in ("moe_layers", "nope_layers", "chunked_layers", "qk_norm_layers", "sliding_window_layers"):
        if out.get(k) is not None:
            out[k] = tuple(i for i in out[k] if i < out["n_layer"])
    return out


@pytest.mark.parametrize("e", _unique_runnable(), ids=lambda e: e.name)
def test_count_equals_meta_instantiation(e):
    """Every runnable architecture, each layer kind present (first 4 layers; DeepSeek-V3 keeps a MoE
    layer with 5): the formula equals sum(numel) of our Transformer exactly. The full-depth check
    for every entry is the slow test below."""
    arch = _first_layers(dict(e.arch), 5 if e.arch.get("moe_layers") and min(e.arch["moe_layers"]) >= 3 else 4)
    cfg = C.to_model_config(e).replace(**{k: arch[k] for k in arch if k in ("n_layer", "moe_layers", "nope_layers",
                                                                            "chunked_layers", "qk_norm_layers",
                                                                            "sliding_window_layers")})
    assert C.count_params(arch).total == _meta_numel(cfg) == C.count_params(cfg).total


@pytest.mark.slow
@pytest.mark.parametrize("e", _unique_runnable(), ids=lambda e: e.name)
def test_count_equals_meta_instantiation_full_depth(e):
    assert C.count_params(e.name).total == _meta_numel(C.get_config(e.name))


def test_get_config_builds_or_explains():
    cfg = C.get_config("Llama-2-70B")
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.intermediate_size) == (80, 8192, 64, 8, 28672)
    assert lmzoo.get_config("mixtral-8x7b").n_experts == 8
    glm = C.get_config("ChatGLM-6B")  # GLM proper: DeepNorm residuals, 2-D RoPE, prefix LM
    assert (glm.norm_placement, glm.position, glm.prefix_lm) == ("deepnorm", "rope_2d", True)
    assert C.get_config("GLM-130B").deepnorm_alpha == pytest.approx(140 ** 0.5)
    assert C.get_config("Grok-1").sandwich_norm  # sandwich norms, soft-capped logits: lmzoo has them
    assert C.get_config("PanGu-alpha-2.6B").query_layer
    # a row with an architecture field lmzoo does not know is refused with the reason
    import dataclasses
    odd = dataclasses.replace(C.get_entry("Llama-2-7B"), arch={**C.get_entry("Llama-2-7B").arch, "warp_drive": True})
    with pytest.raises(UnsupportedModelError, match="warp_drive"):
        C.to_model_config(odd)


def test_lookup_is_forgiving_and_unknown_names_suggest():
    assert C.get_entry("llama2 7b").name == "Llama-2-7B"
    assert C.get_entry("meta-llama/Llama-2-7b-hf").name == "Llama-2-7B"
    assert C.get_entry("OPT-1.3B").name != C.get_entry("OPT-13B").name
    with pytest.raises(UnknownModelError) as err:
        C.get_entry("Lama-2-7B")
    assert "Llama-2-7B" in str(err.value)
    assert isinstance(err.value, LmzooError) and isinstance(err.value, KeyError)
    with pytest.raises(UnknownModelError, match="families"):
        C.list_models(family="lama")


def test_list_filters():
    assert "Qwen2.5-7B" in C.list_models(family="qwen")
    assert all(C.get_entry(n).family == "qwen" for n in C.list_models(family="qwen"))
    commercial = set(C.list_models(commercial=True))
    assert "Mistral-7B" in commercial and "LLaMA-7B" not in commercial and "OPT-13B" not in commercial
    assert set(C.list_models(commercial="no")) == set(C.ENTRIES) - commercial
    assert lmzoo.list_models() == list(C.ENTRIES)
