"""LoRA / DoRA adapters against peft: lmzoo's adapter files load into `peft.PeftModel` on the
transformers reference with no missing or unexpected keys and compute the same logits (fp32, 1e-4);
peft's adapters load into lmzoo; the gradients of every LoRA matrix agree with peft's."""

from __future__ import annotations

import warnings

import pytest
import torch

import lmzoo
from lmzoo.checkpoints.peft import add_lora, load_adapter, save_adapter, select_parts
from lmzoo.errors import CheckpointError, ConfigError
from lmzoo.nn.lora import Part, lora_layers, merge_lora
from tests.helpers import ATOL, random_ids
from tests.test_parity import V, build_reference

peft = pytest.importorskip("peft")

# fused qkv with per-head interleaving (gpt_neox, bloom), grouped (falcon-40b), multi-query (falcon-7b),
# fused qkv_proj / gate_up_proj (phi3), pair-interleaved rope re-ordered at load (glm, gptj), MLA
# (deepseek), routed MoE experts stacked in transformers (mixtral, qwen2/3-moe with a shared expert,
# deepseek; llama4 stores them (in, out))
FAMILIES = ["llama-gqa", "qwen2", "qwen3", "mistral-window", "gpt-neox-parallel", "falcon-7b", "falcon-40b",
            "bloom", "phi3", "glm", "gptj", "stablelm", "opt", "mixtral", "qwen2-moe", "qwen3-moe", "deepseek-v3",
            "llama4"]
# peft 0.21 re-targets every gate/up/down_proj of a DeepSeek checkpoint onto transformers 5's stacked
# experts (peft/utils/transformers_weight_conversion.py), so a LoRA on DeepSeek's dense or shared MLP
# means something else there: attention and the routed experts' gate_up only
TARGETS = {"deepseek-v3": "q,k,v,o,gate_up_proj"}
# peft cannot put DoRA on a transformers-5 MoE model ("lora.ParamWrapper does not work with use_dora=True")
NO_PEFT_DORA = {"mixtral", "qwen2-moe", "qwen3-moe", "deepseek-v3", "llama4"}


@torch.no_grad()
def _randomise_lora(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in lora_layers(model).values():
        for p in [*m.lora_A, *m.lora_B, *m.magnitude]:
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def _peft_load(ref, d):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = peft.PeftModel.from_pretrained(ref, str(d))
    bad = [str(w.message) for w in caught if any(k in str(w.message).lower() for k in ("missing", "unexpected"))]
    assert not bad, bad
    return model.eval()


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    build_reference(request.param, d)
    return request.param, d


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_saved_adapter_loads_in_peft_with_same_logits(family, dora, tmp_path):
    name, d = family
    if dora and name in NO_PEFT_DORA:
        pytest.skip("peft cannot load DoRA adapters on transformers-5 MoE models")
    ours = lmzoo.from_pretrained(d, dtype=torch.float32)
    add_lora(ours, targets=TARGETS.get(name, "all-linear"), r=4, alpha=8, dora=dora, rslora=dora)
    _randomise_lora(ours)
    save_adapter(ours, tmp_path / "adapter")
    ref = _peft_load(build_reference(name, tmp_path / "ref"), tmp_path / "adapter")
    ids = random_ids(V, (2, 11))
    with torch.no_grad():
        diff = (ref(ids).logits - ours.eval()(ids)).abs().max().item()
        base = (build_reference(name, tmp_path / "ref2")(ids).logits - ref(ids).logits).abs().max().item()
    assert diff <= ATOL, diff
    assert base > 100 * ATOL, "the adapter must change the logits for the comparison to mean anything"


def _peft_adapter(name, tmp_path, dora=False):
    """An adapter made by peft itself on every linear layer of the reference, randomly initialised."""
    if dora and name in NO_PEFT_DORA:
        pytest.skip("peft cannot make DoRA adapters on transformers-5 MoE models")
    ref = build_reference(name, tmp_path / "ref")
    # every projection lmzoo adapts (PEFT's "all-linear" would also take MoE routers); stacked routed
    # experts are parameters to peft (target_parameters)
    chosen = select_parts(lmzoo.from_pretrained(tmp_path / "ref"), TARGETS.get(name, "all-linear"))
    names = {n for module, ns in chosen.items() for n in ns if not (dora and ".experts." in module)}
    stacked = sorted(n for n in names if n.endswith(("experts.gate_up_proj", "experts.down_proj")))
    leaves = sorted({n.rsplit(".", 1)[-1] for n in set(names) - set(stacked)})
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=leaves, target_parameters=stacked or None,
                          init_lora_weights=False, use_dora=dora)
    torch.manual_seed(1)
    model = peft.get_peft_model(ref, cfg)
    model.save_pretrained(tmp_path / "peft")
    return model.eval()


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_peft_adapter_loads_in_lmzoo(family, dora, tmp_path):
    name, d = family
    ref = _peft_adapter(name, tmp_path, dora)
    ours = lmzoo.from_pretrained(d, dtype=torch.float32, adapter=tmp_path / "peft")
    ids = random_ids(V, (2, 11), seed=3)
    with torch.no_grad():
        diff = (ref(ids).logits - ours(ids)).abs().max().item()
    assert diff <= ATOL, diff
    merged = merge_lora(ours)
    assert not lora_layers(merged)
    with torch.no_grad():
        assert (ref(ids).logits - merged(ids)).abs().max().item() <= ATOL


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_lora_gradients_match_peft(family, dora, tmp_path):
    name, d = family
    ref = _peft_adapter(name, tmp_path, dora)
    ours = lmzoo.from_pretrained(d, dtype=torch.float32, adapter=tmp_path / "peft")
    for m in lora_layers(ours).values():
        for p in [*m.lora_A, *m.lora_B, *m.magnitude]:
            p.requires_grad_(True)
    ids = random_ids(V, (2, 9), seed=4)
    w = torch.randn(2, 9, V, generator=torch.Generator().manual_seed(5))
    (ref(ids).logits * w).sum().backward()
    (ours(ids) * w).sum().backward()
    theirs = {n: p.grad for n, p in ref.named_parameters() if p.requires_grad}
    # peft's wrapper of each stacked expert parameter: its module path, found on peft's own modules
    wrapper = {f"{n.removeprefix('base_model.model.').replace('.base_layer', '')}.{m.parameter_name}": n
               for n, m in ref.named_modules() if type(m).__name__ == "ParamWrapper"}
    n_experts = ours.config.n_experts
    seen = set()
    for module, m in lora_layers(ours).items():
        for i, part in enumerate(m.targets):
            pairs = [("lora_A", m.lora_A[i]), ("lora_B", m.lora_B[i])]
            if dora:
                pairs.append(("lora_magnitude_vector", m.magnitude[i]))
            for kind, p in pairs:
                if part in wrapper:  # an expert no token was routed to has no gradient; peft's slice is 0
                    p.grad = torch.zeros_like(p) if p.grad is None else p.grad
                assert p.grad is not None, (part, kind)
                if part in wrapper:  # expert e of E: A rows [e*r, (e+1)*r), B columns e, e+E, e+2E, ...
                    e = int(module.split(".experts.")[1].split(".")[0])
                    key = f"{wrapper[part]}.{kind}.default.weight"
                    if name == "llama4":  # stored (in, out): peft's A and B act the other way round
                        key = key.replace(kind, {"lora_A": "lora_B", "lora_B": "lora_A"}[kind])
                    g = theirs[key]
                    g = g.view(n_experts, -1, g.shape[1])[e] if "lora_A" in key else g.view(g.shape[0], -1, n_experts)[..., e]
                    torch.testing.assert_close(p.grad, g.t() if name == "llama4" else g, atol=1e-4, rtol=1e-4)
                else:
                    key = next(k for k in theirs if k.startswith(f"base_model.model.{part}.{kind}"))
                    torch.testing.assert_close(p.grad, theirs[key], atol=1e-4, rtol=1e-4)
                seen.add(key)
    assert seen == set(theirs), set(theirs) - seen


def test_targets_by_role_and_errors(tmp_path):
    build_reference("gpt-neox-parallel", tmp_path)
    model = lmzoo.from_pretrained(tmp_path, dtype=torch.float32)
    with pytest.raises(ConfigError, match="one tensor"):
        add_lora(model, targets="q", r=2)
    with pytest.raises(ConfigError, match="match no module"):
        add_lora(model, targets="q_proj", r=2)
    with pytest.raises(ConfigError, match="positive"):
        add_lora(model, targets="all-linear", r=0)
    add_lora(model, targets="q,k,v,o", r=2)
    assert sorted(lora_layers(model)) == [f"layers.{i}.attn.{m}" for i in range(2) for m in ("o", "qkv")]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_adapter_for_another_base_is_refused(tmp_path):
    build_reference("llama-gqa", tmp_path / "a")
    a = lmzoo.from_pretrained(tmp_path / "a", dtype=torch.float32)
    add_lora(a, targets="q,v", r=2)
    save_adapter(a, tmp_path / "ad")
    build_reference("gpt-neox-parallel", tmp_path / "b")
    with pytest.raises(CheckpointError, match="another base"):
        lmzoo.from_pretrained(tmp_path / "b", dtype=torch.float32, adapter=tmp_path / "ad")
    with pytest.raises(CheckpointError, match="adapter_config.json"):
        load_adapter(lmzoo.from_pretrained(tmp_path / "a"), tmp_path)


def test_adapter_with_other_shapes_is_refused(tmp_path):
    """Same module names, other sizes: the tensor and both shapes are named."""
    import json

    build_reference("llama-gqa", tmp_path / "a")
    a = lmzoo.from_pretrained(tmp_path / "a", dtype=torch.float32)
    add_lora(a, targets="q,v", r=2)
    save_adapter(a, tmp_path / "ad")
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    from tests.test_parity import CASES

    cfg_cls, model_cls, _ = CASES["llama-gqa"]
    wide = model_cls(cfg_cls(**{**{k: v for k, v in cfg.items() if k in ("vocab_size", "num_hidden_layers",
                                   "num_attention_heads", "num_key_value_heads", "intermediate_size")},
                                "hidden_size": 60}))
    wide.save_pretrained(tmp_path / "b")
    with pytest.raises(CheckpointError, match=r"has shape \(2, 48\), but this base model needs \(2, 60\)"):
        lmzoo.from_pretrained(tmp_path / "b", dtype=torch.float32, adapter=tmp_path / "ad")


@pytest.mark.parametrize("direction", ["ours-to-peft", "peft-to-ours"])
def test_rank_and_alpha_patterns(direction, tmp_path):
    """Per-module ranks and alphas (PEFT's rank_pattern / alpha_pattern) mean the same in both."""
    name = "llama-gqa"
    build_reference(name, tmp_path / "src")
    ids = random_ids(V, (2, 9), seed=7)
    if direction == "peft-to-ours":
        ref = build_reference(name, tmp_path / "ref")
        cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                              rank_pattern={"v_proj": 2, r"layers\.1\.mlp\.down_proj": 6},
                              alpha_pattern={"down_proj": 3.0}, init_lora_weights=False)
        torch.manual_seed(2)
        ref = peft.get_peft_model(ref, cfg).eval()
        ref.save_pretrained(tmp_path / "ad")
        ours = lmzoo.from_pretrained(tmp_path / "src", dtype=torch.float32, adapter=tmp_path / "ad")
    else:
        from lmzoo.nn.lora import LoraLinear

        ours = lmzoo.from_pretrained(tmp_path / "src", dtype=torch.float32)
        base = ours.layers[0].attn.qkv
        layer = LoraLinear(base, parts=[Part(f"model.layers.0.self_attn.{p}_proj", s, e) for p, s, e in
                                        (("q", 0, 48), ("k", 48, 64), ("v", 64, 80))],
                           targets=["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"], rows=None,
                           r={"model.layers.0.self_attn.q_proj": 4, "model.layers.0.self_attn.v_proj": 2},
                           alpha={"model.layers.0.self_attn.q_proj": 8.0, "model.layers.0.self_attn.v_proj": 5.0})
        ours.layers[0].attn.qkv = layer.eval()
        _randomise_lora(ours)
        save_adapter(ours, tmp_path / "ad")
        ref = _peft_load(build_reference(name, tmp_path / "ref"), tmp_path / "ad")
    with torch.no_grad():
        assert (ref(ids).logits - ours.eval()(ids)).abs().max().item() <= ATOL


# llama4's dense MLP also has a down_proj: its routed experts are picked by gate_up_proj alone
@pytest.mark.parametrize("name,targets", [("mixtral", "gate_up_proj,down_proj"), ("llama4", "gate_up_proj")])
def test_routed_experts_alone(name, targets, tmp_path):
    """A LoRA on the routed experts only (transformers' stacked gate_up_proj / down_proj): the same
    logits in peft, a real change from the base, and the same adapter back in lmzoo."""
    build_reference(name, tmp_path / "b")
    ours = lmzoo.from_pretrained(tmp_path / "b", dtype=torch.float32)
    add_lora(ours, targets=targets, r=3, alpha=5)
    adapted = sorted(lora_layers(ours))
    assert adapted and all(".experts." in n for n in adapted)
    moe_layers = sum(1 for b in ours.layers if hasattr(b.mlp, "experts"))
    assert len(adapted) == len(targets.split(",")) * ours.config.n_experts * moe_layers
    _randomise_lora(ours)
    save_adapter(ours, tmp_path / "ad")
    ref = _peft_load(build_reference(name, tmp_path / "ref"), tmp_path / "ad")
    ids = random_ids(V, (2, 11), seed=8)
    with torch.no_grad():
        want = ours.eval()(ids)
        assert (ref(ids).logits - want).abs().max().item() <= ATOL
        assert (build_reference(name, tmp_path / "r2")(ids).logits - want).abs().max().item() > 100 * ATOL
        back = lmzoo.from_pretrained(tmp_path / "b", dtype=torch.float32, adapter=tmp_path / "ad")
        assert (back(ids) - want).abs().max().item() <= ATOL


def test_routed_experts_take_no_dora_or_dropout(tmp_path):
    """PEFT's stacked-expert LoRA has no DoRA and no dropout: with either the experts stay frozen, and
    asking for the experts alone says why."""
    build_reference("mixtral", tmp_path)
    for kw in (dict(dora=True), dict(dropout=0.1)):
        model = lmzoo.from_pretrained(tmp_path, dtype=torch.float32)
        add_lora(model, targets="all-linear", r=2, **kw)
        assert lora_layers(model) and not any(".experts." in n for n in lora_layers(model))
        with pytest.raises(ConfigError, match="routed MoE experts only"):
            add_lora(lmzoo.from_pretrained(tmp_path, dtype=torch.float32), targets="gate_up_proj", r=2, **kw)
    with pytest.raises(ConfigError, match="one tensor"):  # gate and up are one stacked parameter
        add_lora(lmzoo.from_pretrained(tmp_path, dtype=torch.float32), targets="gate", r=2)
