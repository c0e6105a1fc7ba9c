"""LoRA / DoRA adapters by canonical target names, in PEFT's file format (both ways).

Which checkpoint module feeds which rows of which lmzoo projection is read from the family's adapter
(the same weight map and transforms `from_pretrained` used), so an adapter saved here is the adapter
`peft.PeftModel.from_pretrained(transformers_model, DIR)` expects for that checkpoint, and a PEFT
adapter trained elsewhere loads onto the lmzoo model:

    adapter_config.json          {"peft_type": "LORA", "r", "lora_alpha", "target_modules", "use_rslora", "use_dora", ...}
    adapter_model.safetensors    base_model.model.<checkpoint module>.lora_A.weight (r, in)
                                 base_model.model.<checkpoint module>.lora_B.weight (out, r)
                                 base_model.model.<checkpoint module>.lora_magnitude_vector (out,)   DoRA only

Canonical targets: q k v o gate up down, "all-linear" (every one of those), or the checkpoint's own
module names (q_proj, query_key_value, ...). On checkpoints that store q, k, v (or gate, up) as one
tensor, the roles sharing it are adapted together — as PEFT would — and asking for only some of them
is an error.

Routed MoE experts: transformers holds them stacked, one parameter per projection for all E experts
(`experts.gate_up_proj` (E, 2I, d) with gate and up fused, `experts.down_proj` (E, d, I)), and PEFT
adapts such a parameter with one LoRA of rank r per expert side by side (`target_parameters`,
peft.tuners.lora.layer.ParamWrapper):

    lora_A.weight (E*r, in)     expert e's A = A.view(E, r, in)[e]          experts in blocks of r rows
    lora_B.weight (out, r*E)    expert e's B = B.view(out, r, E)[:, :, e]   experts interleaved
    two targeted parameters on one module nest: the first registered (gate_up_proj) is the inner
    wrapper, so its keys read `experts.base_layer.lora_A.weight`, down_proj's `experts.lora_A.weight`

lmzoo's experts are modules, so each expert's projection is an ordinary LoraLinear and the stacking
happens in the files only. Where the stacked parameter is stored (in, out) (Llama 4), PEFT's A and B
swap roles: expert e's update is A_e^T B_e^T in lmzoo's (out, in) terms. PEFT's stacked LoRA has no
dropout and no DoRA, so with either the routed experts stay frozen.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lmzoo.checkpoints.build import fill_template, name_template
from lmzoo.checkpoints.checkpoint import read_json, split_index
from lmzoo.errors import CheckpointError, ConfigError
from lmzoo.nn.lora import LoraLinear, Part, linear_shape, lora_layers

ROLES = ("q", "k", "v", "o", "gate", "up", "down")
# lmzoo expert projection -> transformers' stacked parameter, in the order transformers registers them
EXPERT_PARAMS = {"gate_up": "gate_up_proj", "down": "down_proj"}
CONFIG_NAME, WEIGHTS_NAME = "adapter_config.json", "adapter_model.safetensors"
PREFIX = "base_model.model."


@dataclass(frozen=True)
class CheckpointLayout:
    """Where a loaded model came from, in checkpoint terms: the HF model_type whose names the adapter
    files use and the config.json (the family adapter's weight map may depend on it)."""

    model_type: str
    hf_config: dict
    path: str = ""
    # loaded from a GGUF file: hf_config then holds only the keys the adapter's weight map reads
    # (derived from the config), not a config.json to write out
    from_gguf: bool = False


def layout_of(model: nn.Module) -> CheckpointLayout:
    layout = getattr(model, "checkpoint_layout", None)
    if layout is None:
        raise ConfigError("this model was not loaded from a checkpoint (lmzoo.from_pretrained), so the "
                          "checkpoint names an adapter needs are unknown")
    return layout


@dataclass(frozen=True)
class Site:
    """One lmzoo projection and the checkpoint parts inside it."""

    module: str                      # lmzoo module name, e.g. 'layers.0.attn.qkv'
    parts: list[Part]
    rows: torch.Tensor | None        # lmzoo row j = checkpoint row rows[j]; None: same order
    roles: dict[str, frozenset]      # part name -> the canonical roles its rows serve
    expert: int | None = None        # a routed expert: its index in the stacked parameter (the one part)
    transposed: bool = False         # ... and that parameter is stored (in, out)


def _role_ranges(module: str, cfg, out: int) -> list[tuple[str, int]]:
    """Canonical roles of an lmzoo projection's rows, as (role, end row) in lmzoo order."""
    leaf = module.rsplit(".", 1)[-1]
    if leaf == "qkv":
        return [("q", cfg.q_size), ("k", cfg.q_size + cfg.kv_size), ("v", out)]
    if leaf == "gate_up":
        return [("gate", out // 2), ("up", out)] if cfg.mlp in ("swiglu", "geglu") else [("up", out)]
    if leaf in ("q", "q_a", "q_b"):  # MLA
        return [("q", out)]
    if leaf in ("kv_a", "kv_b"):  # MLA: the latent serves keys and values
        return [("kv", out)]
    return [({"o": "o", "down": "down"}[leaf], out)]


def _row_permutation(transform, n: int, cfg, where: str) -> torch.Tensor | None:
    """The row order a layout transform imposes, found by transforming the row numbers themselves."""
    if transform is None:
        return None
    probe = torch.arange(n, dtype=torch.float64)[:, None]
    try:
        t = transform(probe, cfg)
    except Exception as e:  # noqa: BLE001 - a transform that is not a row permutation (e.g. a transpose)
        raise ConfigError(f"cannot place a LoRA on {where}: its checkpoint layout is not a row permutation ({e})") from None
    if tuple(t.shape) != (n, 1):
        raise ConfigError(f"cannot place a LoRA on {where}: its checkpoint layout is not a row permutation")
    rows = t[:, 0].round().long()
    if not torch.equal(rows.sort().values, torch.arange(n)):
        raise ConfigError(f"cannot place a LoRA on {where}: its checkpoint layout is not a row permutation")
    return None if torch.equal(rows, torch.arange(n)) else rows


def sites(model: nn.Module) -> dict[str, Site]:
    """Every projection inside the blocks that a LoRA may adapt, with its checkpoint parts."""
    from lmzoo.checkpoints.hf import get_adapter

    layout = layout_of(model)
    adapter = get_adapter(layout.model_type)
    hf = layout.hf_config
    weights = adapter.weights(hf) if callable(adapter.weights) else adapter.weights
    transforms = adapter.transforms(hf) if callable(adapter.transforms) else adapter.transforms
    cfg = model.config
    found: dict[str, Site] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, LoraLinear):
            mod = mod.base
        leaf = name.rsplit(".", 1)[-1]
        if ".experts." in name:
            site = _expert_site(name, mod, adapter, transforms, cfg)
            if site is not None:
                found[name] = site
            continue
        if not name.startswith("layers.") or leaf not in ("qkv", "o", "gate_up", "down", "q", "q_a", "q_b",
                                                           "kv_a", "kv_b"):
            continue
        template, index = name_template(name + ".weight")
        ckpt = weights.get(template)
        if not ckpt or any(split_index(fill_template(p, index))[1] is not None for p in ckpt):
            continue  # experts stored stacked in one tensor: no per-expert module to adapt
        out, _ = linear_shape(mod)
        names = [fill_template(p, index).removesuffix(".weight") for p in ckpt]
        roles = _role_ranges(name, cfg, out)
        if len(names) == 1:
            sizes = [out]
        elif len(names) == len(roles):  # one checkpoint tensor per role, in role order
            sizes = [end - start for (_, end), start in zip(roles, [0] + [e for _, e in roles])]
        else:
            continue
        parts, start = [], 0
        for n, s in zip(names, sizes):
            parts.append(Part(n, start, start + s))
            start += s
        rows = _row_permutation((transforms or {}).get(template), out, cfg, name)
        inv = torch.arange(out) if rows is None else torch.argsort(rows)  # checkpoint row -> lmzoo row
        ends = torch.tensor([e for _, e in roles])
        part_roles = {}
        for p in parts:
            lm_rows = inv[p.start:p.end]
            part_roles[p.name] = frozenset(roles[i][0] for i in torch.bucketize(lm_rows, ends, right=True).unique().tolist())
        found[name] = Site(name, parts, rows, part_roles)
    return found


def _expert_site(name: str, mod: nn.Module, adapter, transforms, cfg) -> Site | None:
    """A routed expert's projection: one part, the stacked parameter it is a slice of (module docstring)."""
    leaf = name.rsplit(".", 1)[-1]
    if adapter.experts is None or leaf not in EXPERT_PARAMS:
        return None
    template, index = name_template(name + ".weight")
    out, inp = linear_shape(mod)
    transposed = _is_transpose((transforms or {}).get(template), out, inp, cfg, name)
    part = Part(f"{fill_template(adapter.experts, index)}.{EXPERT_PARAMS[leaf]}", 0, out)
    roles = frozenset(role for role, _ in _role_ranges(name, cfg, out))
    return Site(name, [part], None, {part.name: roles}, expert=int(index["{e}"]), transposed=transposed)


def _is_transpose(transform, out: int, inp: int, cfg, where: str) -> bool:
    """Whether a layout transform is the (in, out) -> (out, in) transpose (None: no transform)."""
    if transform is None:
        return False
    probe = torch.arange(out * inp, dtype=torch.float64).view(inp, out)
    t = transform(probe, cfg)
    if tuple(t.shape) != (out, inp) or not torch.equal(t, probe.t()):
        raise ConfigError(f"cannot place a LoRA on {where}: its checkpoint layout is not a transpose")
    return True


def _expand_roles(roles: frozenset) -> frozenset:
    return frozenset().union(*({"k", "v"} if r == "kv" else {r} for r in roles))


def select_parts(model: nn.Module, targets, all_sites: dict[str, Site] | None = None) -> dict[str, list[str]]:
    """lmzoo module -> the checkpoint parts `targets` selects (see the module docstring)."""
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    targets = list(targets)
    if not targets:
        raise ConfigError("no LoRA targets given; expected names from q,k,v,o,gate,up,down, 'all-linear', "
                          "or the checkpoint's module names")
    all_sites = all_sites if all_sites is not None else sites(model)
    wanted = set(ROLES) if "all-linear" in targets else {t for t in targets if t in ROLES}
    leaves = {t for t in targets if t not in ROLES and t != "all-linear"}
    known_leaves = {p.name.rsplit(".", 1)[-1] for s in all_sites.values() for p in s.parts}
    unknown = sorted(leaves - known_leaves)
    if unknown:
        raise ConfigError(f"LoRA target(s) {unknown} match no module of this model; expected names from "
                          f"{', '.join(ROLES)}, 'all-linear', or the checkpoint's modules {sorted(known_leaves)}")
    chosen: dict[str, list[str]] = {}
    for s in all_sites.values():
        for p in s.parts:
            roles = _expand_roles(s.roles[p.name])
            leaf = p.name.rsplit(".", 1)[-1]
            if leaf in leaves or roles <= wanted:
                chosen.setdefault(s.module, []).append(p.name)
            elif roles & wanted:
                raise ConfigError(
                    f"this checkpoint stores {'+'.join(sorted(roles))} in one tensor ({leaf}); target all of "
                    f"{','.join(sorted(roles))} or none (asked for {','.join(sorted(roles & wanted))})")
    if not chosen:
        raise ConfigError(f"LoRA targets {targets} match no projection of this model")
    return chosen


def add_lora(model: nn.Module, *, targets="all-linear", r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
             rslora: bool = False, dora: bool = False) -> nn.Module:
    """Wrap the targeted projections in LoraLinear (in place); every other parameter is frozen."""
    if not isinstance(r, int) or r <= 0:
        raise ConfigError(f"LoRA rank must be a positive integer, got r={r!r}")
    if not alpha > 0:
        raise ConfigError(f"lora alpha must be > 0, got {alpha!r}")
    if not 0 <= dropout < 1:
        raise ConfigError(f"lora dropout must be in [0, 1), got {dropout!r}")
    if lora_layers(model):
        raise ConfigError("this model already has LoRA layers; merge them (lmzoo.nn.lora.merge_lora) first")
    all_sites = sites(model)
    chosen = select_parts(model, targets, all_sites)
    if dora or dropout:  # PEFT's stacked-expert LoRA has neither (module docstring)
        chosen = {m: names for m, names in chosen.items() if all_sites[m].expert is None}
        if not chosen:
            raise ConfigError(f"LoRA targets {targets} are routed MoE experts only, which take LoRA without DoRA "
                              f"and without dropout (PEFT's format for them has neither); got dora={dora}, "
                              f"dropout={dropout}")
    for p in model.parameters():
        p.requires_grad_(False)
    for module, names in chosen.items():
        s = all_sites[module]
        parent_name, _, child = module.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, child)
        setattr(parent, child, LoraLinear(base, parts=s.parts, targets=names, rows=s.rows, r=r, alpha=alpha,
                                          dropout=dropout, rslora=rslora, dora=dora).train(model.training))
    return model


# --- PEFT files ------------------------------------------------------------------------------------

def _target_modules(model: nn.Module, layers: dict[str, LoraLinear], all_sites: dict[str, Site]):
    """PEFT's target_modules for the adapted modules that are not routed experts: the leaf names when
    they pick exactly those, else a regex of the full names. Always the regex on MoE models: peft
    re-targets per-expert leaf names (gate_proj, ...) onto transformers' stacked expert tensors."""
    adapted = {n for name, m in layers.items() if all_sites[name].expert is None for n in m.targets}
    every = {p.name for s in all_sites.values() if s.expert is None for p in s.parts}
    leaves = sorted({n.rsplit(".", 1)[-1] for n in adapted})
    if not adapted:
        return []
    if not model.config.n_experts and {n for n in every if n.rsplit(".", 1)[-1] in leaves} == adapted:
        return leaves
    return "^(" + "|".join(re.escape(n) for n in sorted(adapted)) + ")$"


def _expert_keys(params: set[str]) -> dict[str, str]:
    """Stacked parameter -> its module's name in PEFT's keys (nested wrappers, module docstring)."""
    out = {}
    for module in {p.rsplit(".", 1)[0] for p in params}:
        targeted = [f"{module}.{leaf}" for leaf in EXPERT_PARAMS.values() if f"{module}.{leaf}" in params]
        for depth, p in enumerate(reversed(targeted)):
            out[p] = module + ".base_layer" * depth
    return out


def _stack_experts(per_expert: dict[int, tuple[torch.Tensor, torch.Tensor]], n_experts: int,
                   transposed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Each expert's (A (r, in), B (out, r)) -> PEFT's stacked (lora_A (E*r, .), lora_B (., r*E))."""
    pairs = [per_expert[e] for e in range(n_experts)]
    if transposed:  # PEFT's A and B act in the other order on an (in, out) parameter
        pairs = [(B.t(), A.t()) for A, B in pairs]
    A = torch.cat([a for a, _ in pairs])
    B = torch.stack([b for _, b in pairs], dim=-1)
    return A, B.reshape(B.shape[0], -1)


def _unstack_expert(got: dict[str, torch.Tensor], e: int, n_experts: int, transposed: bool, where: str):
    """The inverse of _stack_experts for expert e: {'lora_A': (r, in), 'lora_B': (out, r)}."""
    A, B = got.get("lora_A"), got.get("lora_B")
    if A is None or B is None:
        raise CheckpointError(f"adapter lacks the {'lora_A' if A is None else 'lora_B'} of {where}")
    if A.dim() != 2 or B.dim() != 2 or A.shape[0] % n_experts or B.shape[1] != A.shape[0]:
        raise CheckpointError(f"adapter tensors of {where} have shapes {tuple(A.shape)} and {tuple(B.shape)}; "
                              f"expected (E*r, in) and (out, r*E) for the {n_experts} experts")
    r = A.shape[0] // n_experts
    a, b = A.view(n_experts, r, -1)[e], B.view(B.shape[0], r, n_experts)[:, :, e]
    if transposed:
        a, b = b.t(), a.t()
    return {"lora_A": a.contiguous(), "lora_B": b.contiguous()}


def save_adapter(model: nn.Module, out_dir, *, base_model_name_or_path: str | None = None) -> Path:
    """Write the model's LoRA/DoRA layers as a PEFT adapter directory (atomically: temp files + rename)."""
    from safetensors.torch import save_file

    layers = lora_layers(model)
    if not layers:
        raise ConfigError("the model has no LoRA layers to save")
    first = next(iter(layers.values()))
    if any((m.rslora, m.dora, m.dropout.__class__) != (first.rslora, first.dora, first.dropout.__class__)
           for m in layers.values()):
        raise ConfigError("LoRA layers with different rslora/dora/dropout cannot share one adapter_config.json")
    # the most common rank / alpha is the config's; others go to rank_pattern / alpha_pattern (full names)
    ranks = {n: k for m in layers.values() for n, k in zip(m.targets, m.ranks)}
    alphas = {n: a for m in layers.values() for n, a in zip(m.targets, m.alphas)}
    r0 = max(set(ranks.values()), key=list(ranks.values()).count)
    a0 = max(set(alphas.values()), key=list(alphas.values()).count)
    all_sites = sites(model)
    tensors = {}
    stacked: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
    transposed: dict[str, bool] = {}
    for module, m in layers.items():
        s = all_sites[module]
        for i, name in enumerate(m.targets):
            if s.expert is not None:
                stacked.setdefault(name, {})[s.expert] = (m.lora_A[i].detach().float().cpu(),
                                                          m.lora_B[i].detach().float().cpu())
                transposed[name] = s.transposed
                continue
            tensors[f"{PREFIX}{name}.lora_A.weight"] = m.lora_A[i].detach().float().contiguous().cpu()
            tensors[f"{PREFIX}{name}.lora_B.weight"] = m.lora_B[i].detach().float().contiguous().cpu()
            if m.dora:
                tensors[f"{PREFIX}{name}.lora_magnitude_vector"] = m.magnitude[i].detach().float().contiguous().cpu()
    keys = _expert_keys(set(stacked))
    for name, per_expert in stacked.items():
        if len(per_expert) != model.config.n_experts:
            raise ConfigError(f"{name}: PEFT stacks all {model.config.n_experts} experts' LoRA, but "
                              f"{len(per_expert)} of them carry one")
        A, B = _stack_experts(per_expert, model.config.n_experts, transposed[name])
        tensors[f"{PREFIX}{keys[name]}.lora_A.weight"] = A.contiguous()
        tensors[f"{PREFIX}{keys[name]}.lora_B.weight"] = B.contiguous()
    # stacked experts' rank and alpha always spelled out, and first (peft takes the first matching
    # pattern): peft's transformers-v5 conversion adds `.*\.gate_up_proj` with twice the rank when it
    # reads gate_proj + up_proj among the targets (a v4 adapter's separate gate and up experts fused)
    rank_pattern = {re.escape(n): ranks[n] for n in sorted(stacked)} | \
        {re.escape(n): k for n, k in ranks.items() if k != r0 and n not in stacked}
    alpha_pattern = {re.escape(n): alphas[n] for n in sorted(stacked)} | \
        {re.escape(n): a for n, a in alphas.items() if a != a0 and n not in stacked}
    layout = layout_of(model)
    p = first.dropout.p if isinstance(first.dropout, nn.Dropout) else 0.0
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r0, "lora_alpha": a0,
        "lora_dropout": p, "target_modules": _target_modules(model, layers, all_sites),
        "target_parameters": sorted(stacked) or None, "use_rslora": first.rslora,
        "use_dora": first.dora, "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
        "init_lora_weights": True, "modules_to_save": None, "layers_to_transform": None,
        "base_model_name_or_path": base_model_name_or_path or layout.path or None,
        "revision": None, "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp_w, tmp_c = out / (WEIGHTS_NAME + ".tmp"), out / (CONFIG_NAME + ".tmp")
    save_file(tensors, str(tmp_w), metadata={"format": "pt"})
    tmp_c.write_text(json.dumps(config, indent=2))
    os.replace(tmp_w, out / WEIGHTS_NAME)
    os.replace(tmp_c, out / CONFIG_NAME)
    return out


def read_adapter_config(path) -> dict:
    d = Path(path)
    cfg_path = d / CONFIG_NAME
    if not cfg_path.is_file():
        raise CheckpointError(f"{d} has no {CONFIG_NAME}; expected a PEFT LoRA adapter directory")
    cfg = read_json(cfg_path)
    if not isinstance(cfg, dict) or cfg.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{cfg_path}: peft_type {cfg.get('peft_type') if isinstance(cfg, dict) else cfg!r} "
                              "is not supported; expected 'LORA' (LoRA / DoRA adapters)")
    for key in ("modules_to_save", "layers_to_transform"):
        if cfg.get(key):
            raise CheckpointError(f"{cfg_path}: {key}={cfg[key]!r} is not supported")
    if cfg.get("bias", "none") != "none":
        raise CheckpointError(f"{cfg_path}: bias={cfg['bias']!r} is not supported; expected 'none'")
    return cfg


def load_adapter(model: nn.Module, path) -> nn.Module:
    """Apply a PEFT LoRA/DoRA adapter directory to `model` (in place); frozen, ready for inference."""
    d = Path(path).expanduser()
    cfg = read_adapter_config(d)
    wpath = d / WEIGHTS_NAME
    if not wpath.is_file():
        raise CheckpointError(f"{d} has no {WEIGHTS_NAME}; expected PEFT's safetensors adapter weights")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(wpath))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{wpath} is not a readable safetensors file ({e})") from None
    all_sites = sites(model)
    part_sites: dict[str, list[Site]] = {}
    for s in all_sites.values():
        for p in s.parts:
            part_sites.setdefault(p.name, []).append(s)
    # a stacked-experts key names its module (nested wrappers): back to the parameter it adapts
    targeted = [n for n, ss in part_sites.items() if ss[0].expert is not None and _names_parameter(cfg, n)]
    from_key = {k: n for n, k in _expert_keys(set(targeted)).items()}
    per_part: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in state.items():
        m = re.fullmatch(r"base_model\.model\.(.+)\.(lora_A|lora_B)(?:\.default)?\.weight", key) or \
            re.fullmatch(r"base_model\.model\.(.+)\.(lora_magnitude_vector)(?:\.default)?(?:\.weight)?", key)
        if m is None:
            raise CheckpointError(f"{wpath}: tensor {key!r} is not a LoRA A/B matrix or DoRA magnitude")
        per_part.setdefault(from_key.get(m.group(1), m.group(1)), {})[m.group(2)] = t
    unknown = sorted(set(per_part) - set(part_sites))
    if unknown:
        raise CheckpointError(f"adapter {d} adapts modules this model does not have, e.g. {unknown[:3]}; "
                              "it was trained for another base model")
    r, alpha = int(cfg["r"]), float(cfg.get("lora_alpha", cfg["r"]))
    rank_pattern, alpha_pattern = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    dora = bool(cfg.get("use_dora"))
    chosen: dict[str, list[str]] = {}
    for name in per_part:
        for s in part_sites[name]:
            chosen.setdefault(s.module, []).append(name)
    for p in model.parameters():
        p.requires_grad_(False)
    for module, names in chosen.items():
        s = all_sites[module]
        parent_name, _, child = module.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, child)
        if isinstance(base, LoraLinear):
            raise ConfigError(f"{module} already has a LoRA layer; merge it before loading another adapter")
        # peft's rule (peft.utils.other.get_pattern_key): the first pattern matching the module's name
        ranks = {n: int(_pattern_value(rank_pattern, n, r)) for n in names}
        alphas = {n: float(_pattern_value(alpha_pattern, n, alpha)) for n in names}
        lora = LoraLinear(base, parts=s.parts, targets=names, rows=s.rows, r=ranks, alpha=alphas,
                          dropout=float(cfg.get("lora_dropout") or 0.0), rslora=bool(cfg.get("use_rslora")), dora=dora)
        with torch.no_grad():
            for i, name in enumerate(lora.targets):
                got = per_part[name] if s.expert is None else \
                    _unstack_expert(per_part[name], s.expert, model.config.n_experts, s.transposed, name)
                need = {"lora_A": lora.lora_A[i], "lora_B": lora.lora_B[i]}
                if dora:
                    need["lora_magnitude_vector"] = lora.magnitude[i]
                for kind, param in need.items():
                    if kind not in got:
                        raise CheckpointError(f"adapter {d} lacks {name}.{kind}")
                    if tuple(got[kind].shape) != tuple(param.shape):
                        raise CheckpointError(
                            f"adapter tensor {name}.{kind} has shape {tuple(got[kind].shape)}, but this base "
                            f"model needs {tuple(param.shape)} (r={ranks[name]}); it was trained for another base model")
                    param.copy_(got[kind])
                    param.requires_grad_(False)
        setattr(parent, child, lora.train(model.training))  # an eval-mode model gets no dropout
    return model


def _names_parameter(cfg: dict, name: str) -> bool:
    """Whether PEFT's target_parameters select this parameter (peft: the full name, or a suffix of it)."""
    return any(name == t or name.endswith("." + t) for t in cfg.get("target_parameters") or ())


def _pattern_value(patterns: dict, name: str, default):
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default
