"""Distributed training on PyTorch's own engine: torchrun, DDP, FSDP2, DTensor tensor parallelism and
distributed checkpoints (torch.distributed.checkpoint). The model code stays single-device; this
module wraps or transforms a built model.

    torchrun --nproc-per-node 2 -m lmzoo pretrain ... [--parallel ddp|fsdp|tp] [--mixed-precision bf16]

Data: `--batch-size` is the global batch (rows per micro-batch summed over ranks); rank r of w takes
rows [r B / w, (r + 1) B / w) of every batch, so a run's batches, step count and data position do not
depend on the world size (a run resumes on another). Loss: every rank scales its summed loss by
w / (units of the whole step, all-reduced before backward); DDP / FSDP2 average gradients over the
w ranks, so the step's gradient is that of one process holding the whole batch.

    ddp    DistributedDataParallel: a full replica per rank, gradients all-reduced
    fsdp   FSDP2 (torch.distributed.fsdp.fully_shard): each block, then the root (embeddings, final
           norm, head); parameters, gradients and optimizer state sharded; MixedPrecisionPolicy for
           bf16 compute with fp32 master weights and fp32 gradient reduction
    tp     tensor parallelism over every rank (`tensor_parallel`, below): one model split by heads and
           MLP width, every rank reading the whole batch (the data-parallel world is 1)
    fsdp with tp_size T > 1: both, on a 2-D (dp, tp) mesh (torchtitan's layout): ranks
           [k T, (k + 1) T) hold one model split by tensor parallelism, FSDP2 shards it over the
           world / T such groups, each group reading its rows of the batch

           rank:   0    1    2    3          (world 4, tp_size 2)
           dp:     0    0    1    1          batch rows: dp 0 -> first half, dp 1 -> second half
           tp:     0    1    0    1          heads / MLP slice

The data-parallel coordinates (`Dist.dp_rank`, `Dist.dp_world`) are what batches, losses and token
counts are split and summed over; under `tp` they are (0, 1) on every rank, and the ranks compute
the same loss from the same rows.

Tensor parallelism (`tensor_parallel`) is a transform of a built model, one plan for every family by
canonical parameter names (TP_PLAN). lmzoo fuses projections (attn.qkv = [q; k; v] rows, mlp.gate_up
= [gate; up] rows), so a plain column split would hand rank 0 all of q and part of k: the rows are
first reordered rank-major ([q_0 k_0 v_0 | q_1 k_1 v_1 ...], [gate_0 up_0 | gate_1 up_1 ...]) so that
DTensor's Shard(0) gives each rank its own heads of q, k and v and its own slice of gate and of up;
the attention then runs n_head / w query and n_kv_head / w key/value heads per rank.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, fields, is_dataclass, replace

import torch
import torch.distributed as dist
from torch import nn

from lmzoo.errors import ConfigError

PARALLEL = ("ddp", "fsdp", "tp")
SHARDED = ("fsdp", "tp")  # modes that split the weights: full training only
MIXED_PRECISION = {"fp32": None, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    tp: int = 1  # tensor-parallel ranks per data-parallel replica

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def dp_rank(self) -> int:
        return self.rank // self.tp

    @property
    def dp_world(self) -> int:
        return self.world // self.tp

    @property
    def active(self) -> bool:
        return dist.is_available() and dist.is_initialized()


def env_world() -> int:
    """The world size torchrun announces (WORLD_SIZE), 1 outside torchrun."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def check_batch(batch_size: int, world: int | None = None, parallel: str = "ddp", tp_size: int = 1) -> None:
    """The one-line error for a global batch the data-parallel ranks cannot share equally (`world`:
    the data-parallel world, default torchrun's over the tensor-parallel size; 1 under `tp`)."""
    if world is None:
        check_tp_size(parallel, tp_size, env_world())
        world = 1 if parallel == "tp" else env_world() // (tp_size if parallel == "fsdp" else 1)
    if batch_size % world:
        raise ConfigError(f"--batch-size {batch_size} is not divisible by the world size {world} (each rank takes "
                          f"batch-size / world rows of every batch); use a multiple of {world}")


def check_tp_size(parallel: str, tp_size: int, world: int) -> None:
    if parallel == "fsdp" and world % tp_size:
        raise ConfigError(f"--tp-size {tp_size} does not divide the world size {world}")


def check_parallel(parallel: str, mixed_precision: str, tp_size: int = 1) -> None:
    if not isinstance(tp_size, int) or tp_size < 1:
        raise ConfigError(f"--tp-size must be a positive integer, got {tp_size!r}")
    if tp_size > 1 and parallel != "fsdp":
        raise ConfigError("--tp-size splits each FSDP2 replica by tensor parallelism; use it with --parallel fsdp "
                          "(--parallel tp splits over every rank)")
    if parallel not in PARALLEL:
        raise ConfigError(f"--parallel {parallel!r}: expected one of {', '.join(PARALLEL)}")
    if mixed_precision not in MIXED_PRECISION:
        raise ConfigError(f"--mixed-precision {mixed_precision!r}: expected one of {', '.join(MIXED_PRECISION)}")
    if mixed_precision != "fp32" and parallel != "fsdp":
        raise ConfigError("--mixed-precision is FSDP2's policy; use it with --parallel fsdp")


_TP = {"size": 1, "dp_group": None}  # set by init / wrap: the tensor-parallel size, the 2-D mesh's dp group


def init(parallel: str = "ddp", tp_size: int = 1) -> Dist:
    """Join torchrun's process group (gloo on CPU, NCCL for CUDA tensors) once; outside torchrun a
    single process, with a process group of one when FSDP2 asks for one."""
    if dist.is_available() and dist.is_initialized():
        return current()
    world = env_world()
    check_tp_size(parallel, tp_size, world)
    if world == 1 and parallel != "fsdp":
        return Dist()
    _TP["size"] = world if parallel == "tp" else tp_size if parallel == "fsdp" else 1
    timeout = datetime.timedelta(seconds=float(os.environ.get("LMZOO_DIST_TIMEOUT", 1800)))
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if "MASTER_ADDR" in os.environ:
        dist.init_process_group(backend, timeout=timeout)
    else:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    return current()


def current() -> Dist:
    if not (dist.is_available() and dist.is_initialized()):
        return Dist()
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), _TP["size"])


def shutdown() -> None:
    """Leave the process group at the end of a finished torchrun run (every rank gets here): a barrier
    first, so no rank tears gloo down while another still talks to it (pytorch/gloo#155 — a rank
    aborting with "terminate called without an active exception" after a finished run)."""
    if dist.is_available() and dist.is_initialized():
        barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_sum(values: list[float], *, data: bool = False) -> list[float]:
    """Element-wise sum over the ranks (float64), the values themselves in a single process; data=True
    sums over the data-parallel ranks only (a tensor-parallel group holds one copy of the data)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(values)
    if data and current().dp_world == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, group=_TP["dp_group"] if data and current().tp > 1 else None)
    return t.tolist()


def agree(ok: bool) -> bool:
    """True on every rank when `ok` is true on every rank (a failure on one rank fails all)."""
    return all_sum([0.0 if ok else 1.0])[0] == 0


# --- batches: each rank's rows --------------------------------------------------------------------

def n_rows(b) -> int:
    if hasattr(b, "ref") and hasattr(b, "batch"):  # DPO: rows 2i, 2i + 1 are one pair
        return int(b.ref.shape[0]) // 2
    return int(b.ids.shape[0])


def take_rows(b, lo: int, hi: int):
    """Rows [lo, hi) of a batch dataclass (Batch, GLMBatch, PairBatch by pairs)."""
    if hasattr(b, "ref") and hasattr(b, "batch"):
        return replace(b, batch=take_rows(b.batch, 2 * lo, 2 * hi), ref=b.ref[2 * lo:2 * hi])
    n = n_rows(b)
    if not is_dataclass(b):
        raise TypeError(f"cannot split a {type(b).__name__} between ranks")
    out = {}
    for f in fields(b):
        v = getattr(b, f.name)
        if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n:
            v = v[lo:hi]
        elif isinstance(v, list) and len(v) == n:
            v = v[lo:hi]
        out[f.name] = v
    return replace(b, **out)


def local_part(b, rank: int, world: int):
    """(this rank's rows of a global batch, dummy). A batch with fewer rows than ranks leaves some
    ranks none: they get row 0 as a dummy whose loss the loop multiplies by 0 (every rank must run
    the forward and backward: DDP and FSDP2 communicate in them)."""
    if world == 1:
        return b, False
    n = n_rows(b)
    lo, hi = rank * n // world, (rank + 1) * n // world
    if hi > lo:
        return take_rows(b, lo, hi), False
    return take_rows(b, 0, 1), True


# --- wrapping -----------------------------------------------------------------------------------

class Replica:
    """What the objectives call: the DDP wrapper's forward (its gradient hooks), the model's attributes
    (lm_head, config, logits ...)."""

    def __init__(self, wrapper: nn.Module, module: nn.Module) -> None:
        object.__setattr__(self, "_wrapper", wrapper)
        object.__setattr__(self, "_module", module)

    def __call__(self, *args, **kwargs):
        return self._wrapper(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._module, name)


def wrap(model: nn.Module, parallel: str, d: Dist, mixed_precision: str = "fp32"):
    """The model as the loop runs it: itself (one process, DDP-free), a DDP replica, or sharded in
    place by FSDP2 (per block, then the root)."""
    check_parallel(parallel, mixed_precision)
    if parallel in SHARDED and any(not p.requires_grad for p in model.parameters()):
        raise ConfigError(f"--parallel {parallel} splits full training (pretrain, finetune --method full); "
                          "adapters (LoRA / DoRA) and frozen parts train with --parallel ddp")
    if parallel == "tp":
        return tensor_parallel(model) if d.world > 1 else model
    if parallel == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if not d.active:
            raise ConfigError("--parallel fsdp needs a process group (lmzoo.train.parallel.init)")
        from torch.distributed.device_mesh import init_device_mesh

        dtype = MIXED_PRECISION[mixed_precision]
        mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype else MixedPrecisionPolicy()
        dev = next(model.parameters()).device.type  # where the weights are
        if d.tp > 1:  # 2-D: tensor parallelism inside each group of tp ranks, FSDP2 across the groups
            mesh2 = init_device_mesh(dev, (d.dp_world, d.tp), mesh_dim_names=("dp", "tp"))
            tensor_parallel(model, mesh2["tp"])
            mesh = mesh2["dp"]
            _TP["dp_group"] = mesh.get_group()
        else:
            mesh = init_device_mesh(dev, (d.world,))
        for layer in model.layers:
            fully_shard(layer, mesh=mesh, mp_policy=mp)
        fully_shard(model, mesh=mesh, mp_policy=mp)
        return model
    if d.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    dev = next(model.parameters()).device
    # buffers (RoPE tables, ALiBi slopes) are computed alike on every rank: no broadcast per forward;
    # the non-persistent ones (those, and quantised layers' tiles, packed alike from the same file)
    # are not broadcast at the start either (gloo has no int16, which int8 tiles' sums of codes are)
    DDP._set_params_and_buffers_to_ignore_for_model(model, [
        f"{name}.{b}" if name else b for name, mod in model.named_modules()
        for b in mod._non_persistent_buffers_set if b in mod._buffers])
    ddp = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None, forward_sync_buffers=False)
    return Replica(ddp, model)


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer as one full CPU tensor (collective for a sharded model: every rank
    calls it; rank 0 receives the tensors, the others an empty dict)."""
    if not is_sharded(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def unsharded_copy(model: nn.Module) -> nn.Module | None:
    """A plain single-device copy of an FSDP2-sharded or tensor-parallel lmzoo Transformer (collective;
    rank 0 gets the model, the others None), e.g. to save it as an HF checkpoint."""
    from lmzoo.nn.transformer import Transformer

    tp = getattr(model, "_lmzoo_tp", 1) > 1
    sd = tp_full_state_dict(model) if tp else full_state_dict(model)
    if not current().main:
        return None
    plain = Transformer(model.config)
    if tp:  # the parameters only: buffers (RoPE tables, a rank's ALiBi slopes) come from the config
        sd = {k: v for k, v in sd.items() if k in dict(plain.named_parameters())}
    plain.load_state_dict(sd, strict=False)
    for k, v in vars(model).items():
        if not k.startswith("_") and k not in vars(plain):
            setattr(plain, k, v)
    return plain


# --- tensor parallelism -----------------------------------------------------------------------------

# one plan for every family, by canonical module names (what each Linear becomes)
TP_PLAN = {
    "layers.*.attn.qkv": "colwise_fused",     # [q; k; v] rows, each split by heads
    "layers.*.attn.o": "rowwise",             # its input columns are the rank's heads
    "layers.*.mlp.gate_up": "colwise_fused",  # [gate; up] rows (gated MLPs), or up alone
    "layers.*.mlp.down": "rowwise",
}


def _rank_major(t: torch.Tensor, parts: list[int], world: int) -> torch.Tensor:
    """Rows [p_0; p_1; ...] -> [p_0 slice 0; p_1 slice 0; ... | p_0 slice 1; ...]: each part split in
    `world` equal row blocks, grouped by rank (what Shard(0) then hands rank r)."""
    pieces = [p.chunk(world, dim=0) for p in t.split(parts, dim=0)]
    return torch.cat([pieces[j][r] for r in range(world) for j in range(len(parts))], dim=0)


def _from_rank_major(t: torch.Tensor, parts: list[int], world: int) -> torch.Tensor:
    per_rank = [p // world for p in parts]
    blocks = t.chunk(world, dim=0)
    return torch.cat([torch.cat([blocks[r].split(per_rank, dim=0)[j] for r in range(world)], dim=0)
                      for j in range(len(parts))], dim=0)


def _fused_parts(model: nn.Module, name: str) -> list[int]:
    """Row blocks of a fused projection in canonical order (q, k, v / gate, up / up)."""
    cfg = model.config
    if name.endswith("attn.qkv"):
        return [cfg.q_size, cfg.kv_size, cfg.kv_size]
    return [cfg.intermediate_size] * (2 if cfg.gated_mlp else 1)


def tp_check(cfg, world: int) -> None:
    """ConfigErrors for a config whose heads / MLP width the ranks cannot share."""
    bad = [f"{k} {v}" for k, v in (("n_head", cfg.n_head), ("n_kv_head", cfg.n_kv_head),
                                   ("intermediate_size", cfg.intermediate_size)) if v % world]
    if bad:
        raise ConfigError(f"tensor parallelism over {world} ranks splits heads and MLP width evenly; "
                          f"{', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not divisible by {world}")
    if cfg.qk_norm and cfg.qk_norm_kind == "layernorm_per_head":
        raise ConfigError("tensor parallelism does not shard per-head q/k LayerNorms (qk_norm_kind "
                          "'layernorm_per_head')")


def tp_modules(model: nn.Module) -> dict[str, str]:
    """{module name: style} for the modules TP_PLAN names in this model. Attention other than MHA / GQA
    (MLA) and MoE layers stay replicated (whole on every rank)."""
    import fnmatch

    from lmzoo.nn.attention import Attention
    from lmzoo.nn.mlp import MLP

    out = {}
    for name, mod in model.named_modules():
        for pattern, style in TP_PLAN.items():
            if not fnmatch.fnmatchcase(name, pattern):
                continue
            parent = model.get_submodule(name.rsplit(".", 1)[0])
            if isinstance(parent, (Attention, MLP)) and isinstance(mod, nn.Linear):
                out[name] = style
    return out


def tensor_parallel(model: nn.Module, mesh=None) -> nn.Module:
    """Shard a built lmzoo Transformer's attention and MLP over a 1-D device mesh (default: every rank
    of the process group) with DTensor: fused projections column-wise (rank-major rows, see the
    module's docstring), o / down row-wise (their outputs all-reduced); embeddings, norms, head and
    unplanned layers replicated. Every rank must hold the same weights (build with the same seed or
    load the same checkpoint). Returns the model, changed in place."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    from lmzoo.nn.attention import Attention

    if mesh is None:
        dev = next(model.parameters()).device.type
        mesh = init_device_mesh(dev, (dist.get_world_size(),))
    world = mesh.size()
    tp_check(model.config, world)
    if model.config.position == "alibi":  # each rank's heads get their own slopes
        r = mesh.get_local_rank()
        per = model.config.n_head // world
        model.alibi_slopes = model.alibi_slopes[r * per:(r + 1) * per].clone()
    plan = {}
    with torch.no_grad():
        for name, style in tp_modules(model).items():
            lin = model.get_submodule(name)
            if style == "colwise_fused":
                parts = _fused_parts(model, name)
                lin.weight.copy_(_rank_major(lin.weight, parts, world))
                if lin.bias is not None:
                    lin.bias.copy_(_rank_major(lin.bias, parts, world))
                plan[name] = ColwiseParallel()
            else:
                plan[name] = RowwiseParallel()
    parallelize_module(model, mesh, plan)
    for name in plan:
        attn = model.get_submodule(name.rsplit(".", 1)[0])
        if isinstance(attn, Attention) and name.endswith(".qkv"):  # the rank's heads
            attn.n_head //= world
            attn.n_kv_head //= world
            attn.q_size //= world
            attn.kv_size //= world
    model._lmzoo_tp = world
    return model


def tp_full_state_dict(model: nn.Module, *, grads: bool = False) -> dict[str, torch.Tensor]:
    """A tensor-parallel model's weights (or, grads=True, their gradients) in lmzoo's canonical layout
    (fused rows back in q, k, v / gate, up order), full tensors on every rank (collective)."""
    from torch.distributed.tensor import DTensor

    world = getattr(model, "_lmzoo_tp", 1)
    fused = {n for n, s in tp_modules(model).items() if s == "colwise_fused"}
    out = {}
    items = ((n, p.grad) for n, p in model.named_parameters() if p.grad is not None) if grads \
        else model.state_dict().items()
    for k, v in items:
        t = v.full_tensor() if isinstance(v, DTensor) else v
        mod = k.rsplit(".", 1)[0]
        if mod in fused:
            t = _from_rank_major(t, _fused_parts(model, mod), world)
        out[k] = t.detach().cpu()
    return out
