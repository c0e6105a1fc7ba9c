"""The training loop every objective shares: AdamW, warmup + cosine, accumulation, clipping, eval,
metrics, atomic checkpoints and exact resume.

    out_dir/
      run.json                  the run's settings (a resumed run must match them)
      metrics.jsonl             one line per logged step: step, loss, lr, grad_norm, tokens, tokens_per_s, eval_loss
      checkpoints/step-000040/  trainable.safetensors, optimizer.pt, state.json (step, data position, RNG)
      checkpoints/latest        name of the newest complete checkpoint (written last, atomically)
      loss.png                  the loss curve, at the end

A checkpoint is written into a temporary directory and renamed into place, and `latest` changes only
after that, so a run killed at any moment (SIGKILL included) leaves the previous checkpoint whole.
Resume restores the trainable weights, the optimizer, the step (the schedule is a function of it),
the data position (the batch order is a function of the seed and epoch) and the RNG states, so on
CPU a resumed run ends with bitwise the weights of an uninterrupted one. SIGINT / SIGTERM finish
the current step, checkpoint and stop.

Under torchrun (lmzoo.train.parallel) the same loop runs on every rank: each takes its rows of the
global batch, the loss, units, tokens and the stop request are summed over the ranks every step,
and only rank 0 writes run.json, metrics, progress, plots and (replicated runs) checkpoints. An
FSDP2-sharded run writes its checkpoints with torch.distributed.checkpoint instead, every rank its
shards (checkpoints/step-N/dcp/), which a run on any world size loads; the temporary directory,
rename and `latest` are as above.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import time
import warnings
from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from pathlib import Path

import torch
from torch import nn

from lmzoo.errors import ConfigError, LmzooError
from lmzoo.train.data import IGNORE, Batch, Example, batches, n_batches


class TrainError(LmzooError):
    """A run that cannot start or continue (output directory in use, checkpoint unwritable, ...)."""


@dataclass
class TrainConfig:
    lr: float = 2e-4
    min_lr_ratio: float = 0.1        # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    max_steps: int | None = None     # None: epochs over the data
    epochs: float = 1.0
    batch_size: int = 4              # packed rows per micro-batch
    grad_accum: int = 1              # micro-batches per optimizer step
    max_grad_norm: float | None = 1.0
    seq_len: int = 1024
    packing: bool = True
    eval_every: int = 0              # 0: only at the end (when there is eval data)
    save_every: int = 0              # 0: only at the end and on SIGINT / SIGTERM
    log_every: int = 1
    keep_checkpoints: int = 2
    seed: int = 0
    activation_checkpointing: bool = False
    loss_chunk: int = 256
    autocast_bf16: bool | None = None  # bf16 autocast for the forward (fp32 master weights); None: on CUDA only
    parallel: str = "ddp"            # under torchrun: ddp (replicas) | fsdp (FSDP2 shards) | tp (tensor parallel)
    mixed_precision: str = "fp32"    # fsdp: fp32 | bf16 (MixedPrecisionPolicy: bf16 compute, fp32 reduce)
    tp_size: int = 1                 # fsdp: tensor-parallel ranks per FSDP2 replica (a 2-D mesh)
    device: str = "auto"             # auto: cuda:LOCAL_RANK when CUDA is there, else cpu | cpu | cuda
    compile: bool = False            # torch.compile each block in place (torchtitan's per-block compile)

    def validate(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"learning rate must be > 0, got {self.lr}")
        for name in ("batch_size", "grad_accum", "seq_len", "log_every", "keep_checkpoints", "loss_chunk"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        for name in ("warmup_steps", "eval_every", "save_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {v!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise ConfigError(f"max_steps must be a positive integer, got {self.max_steps!r}")
        if not self.epochs > 0:
            raise ConfigError(f"epochs must be > 0, got {self.epochs}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ConfigError(f"max_grad_norm must be > 0 (or None), got {self.max_grad_norm}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.device not in DEVICES:
            raise ConfigError(f"--device {self.device!r}: expected one of {', '.join(DEVICES)}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is visible to this process")
        from lmzoo.train.parallel import check_parallel

        check_parallel(self.parallel, self.mixed_precision, self.tp_size)

    def bf16_on(self, device: torch.device) -> bool:
        """Whether the forward runs under bf16 autocast on `device`: as asked, or by default on CUDA."""
        return device.type == "cuda" if self.autocast_bf16 is None else self.autocast_bf16

    def torch_device(self, local_rank: int = 0) -> torch.device:
        """Where the model and batches live: a rank's own GPU (cuda:LOCAL_RANK) or the CPU."""
        if self.device == "cpu" or not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", local_rank % torch.cuda.device_count())


DEVICES = ("auto", "cpu", "cuda")


def hold_frozen_linears(model: nn.Module, dtype: torch.dtype | None):
    """Store the frozen weights of the linear layers in `dtype`, the dtype autocast computes them in
    anyway: a LoRA base is cast once, not at every forward (autocast caches casts of trainable leaves
    only), and takes half the memory; the matmuls see the same values.
    Embedding tables (and heads tied to them) stay as they are: they feed the float32 residual stream.
    Returns `restore()`, which gives the weights back their dtype (holding the rounded values the run
    computed with). dtype None: nothing changes."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    held = []
    if dtype is not None:
        for m in model.modules():
            w = getattr(m, "weight", None)
            if (isinstance(m, nn.Linear) and not w.requires_grad and w.is_floating_point() and w.dtype != dtype
                    and id(w) not in tables):
                held.append((w, w.dtype))
                w.data = w.data.to(dtype)

    def restore() -> None:
        for w, was in held:
            w.data = w.data.to(was)
    return restore


def lr_at(step: int, cfg: TrainConfig, total: int) -> float:
    """Linear warmup to cfg.lr over warmup_steps, then cosine down to lr * min_lr_ratio at `total`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, total - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on matrices, none on biases, norms and 1-D gains (DoRA magnitudes)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ConfigError("the model has no trainable parameters")
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def checkpoint_blocks(model: nn.Module) -> None:
    """Activation checkpointing per block: each block's activations are recomputed in backward."""
    from torch.utils.checkpoint import checkpoint

    for layer in model.layers:
        if getattr(layer, "_lmzoo_checkpointed", False):
            continue
        inner = layer.forward
        layer.forward = (lambda f: lambda *a, **k: checkpoint(f, *a, use_reentrant=False, **k))(inner)
        layer._lmzoo_checkpointed = True


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


class Objective:
    """What a training objective tells the loop: the summed loss of a batch (and extra metrics to
    log), and how many units (target tokens, preference pairs) that sum is over."""

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def units(self, batch) -> int:
        raise NotImplementedError


class SFTObjective(Objective):
    """Next-token cross-entropy on the target tokens (prompt tokens masked), never all logits at once."""

    def __init__(self, loss_chunk: int = 256) -> None:
        self.loss_chunk = loss_chunk

    def loss(self, model, b: Batch):
        from lmzoo.train.loss import token_losses_sum

        h = model(b.ids, segment_ids=b.segments, hidden_only=True)
        return token_losses_sum(model, h, b.targets, chunk=self.loss_chunk)[0], {}

    def units(self, b: Batch) -> int:
        return int((b.targets != IGNORE).sum())


def check_out_dir(out, *, resume: bool, overwrite: bool) -> None:
    """Refuse an output directory that holds another run (unless resuming or overwriting) — called
    before any model is loaded, so the mistake costs no time."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TrainError(f"output {out} exists and is not a directory")
    if (out / "run.json").exists() and not resume and not overwrite:
        raise TrainError(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")


class Trainer:
    def __init__(self, model: nn.Module, cfg: TrainConfig, train: list, *, out_dir, eval_data: list | None = None,
                 objective: Objective | None = None, make_batches=None, batches_per_epoch: int | None = None,
                 resume: bool = False, sharded_batches: bool = False,
                 overwrite: bool = False, run_info: dict | None = None, progress: bool = True) -> None:
        from lmzoo.train import parallel

        cfg.validate()
        self.dist = parallel.init(cfg.parallel, cfg.tp_size)
        parallel.check_batch(cfg.batch_size, self.dist.dp_world)
        self.model, self.cfg, self.train, self.eval_data = model, cfg, train, eval_data or []
        self.out = Path(out_dir)
        self.objective = objective or SFTObjective(cfg.loss_chunk)
        self._sft_data = make_batches is None
        self.make_batches = make_batches or self._sft_batches
        self.sharded_batches = sharded_batches  # make_batches yields this rank's rows already
        self.progress = progress and self.dist.main
        self.run_info = {"config": _jsonable(asdict(cfg)), **(run_info or {})}
        self._prepare_dir(resume, overwrite)
        self.device = cfg.torch_device(self.dist.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        model.to(self.device)
        if cfg.activation_checkpointing:
            checkpoint_blocks(model)
        if cfg.compile:
            for layer in model.layers:  # in place: parameter names (checkpoints, saving) stay as they are
                layer.compile()
        self.net = parallel.wrap(model, cfg.parallel, self.dist, cfg.mixed_precision)  # what the objective calls
        self.sharded = parallel.is_sharded(model)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas,
                                     foreach=False)
        per_epoch = batches_per_epoch or self._batches_in_epoch(0)
        self.total = cfg.max_steps or max(1, int(cfg.epochs * per_epoch) // cfg.grad_accum)
        self.step = 0          # optimizer steps done
        self.micro = 0         # micro-batches consumed (the data position)
        self.tokens = 0
        self._stop = False
        if resume:
            self._load_latest()

    # --- data -------------------------------------------------------------------------------------
    def _sft_batches(self, data: list, epoch: int, shuffle_seed: int):
        c = self.cfg
        return batches(data, seq_len=c.seq_len, rows_per_batch=c.batch_size, packing=c.packing,
                       seed=shuffle_seed, epoch=epoch)

    def _batches_in_epoch(self, epoch: int) -> int:
        c = self.cfg
        if self._sft_data and self.train and isinstance(self.train[0], Example):
            return n_batches(self.train, seq_len=c.seq_len, rows_per_batch=c.batch_size, packing=c.packing,
                             seed=c.seed, epoch=epoch)
        return sum(1 for _ in self.make_batches(self.train, epoch, c.seed))

    def _local(self, b):
        """(this rank's rows of a global batch, dummy: no rows of its own, its loss counts 0)."""
        from lmzoo.train.parallel import local_part

        if self.sharded_batches:
            return b, False
        return local_part(b, self.dist.dp_rank, self.dist.dp_world)

    def _stream(self):
        """This rank's micro-batches from the current data position on, epoch after epoch."""
        skip, epoch = self.micro, 0
        while True:
            for b in self.make_batches(self.train, epoch, self.cfg.seed):
                if skip:
                    skip -= 1
                    continue
                local, dummy = self._local(b)
                yield to_device(local, self.device), dummy
            epoch += 1

    # --- directory, checkpoints -------------------------------------------------------------------
    def _prepare_dir(self, resume: bool, overwrite: bool) -> None:
        from lmzoo.train.parallel import barrier

        barrier()  # every rank checks the directory before rank 0 changes it
        run = self.out / "run.json"
        check_out_dir(self.out, resume=resume, overwrite=overwrite)
        if resume and run.exists():
            def flat(info: dict) -> dict:
                return {**{k: v for k, v in info.items() if k != "config"}, **info.get("config", {})}

            old, new = flat(json.loads(run.read_text())), flat(_jsonable(self.run_info))
            free = ("max_steps", "epochs", "eval_every", "save_every", "log_every", "keep_checkpoints", "parallel",
                    "mixed_precision", "tp_size", "activation_checkpointing", "device", "compile")  # how, not what, it computes
            changed = {k: (old.get(k), v) for k, v in new.items() if k not in free and old.get(k) != v}
            if changed:
                raise TrainError(f"cannot resume {self.out}: settings differ from the run's ({changed}); "
                                 "resume with the same settings")
        barrier()
        if self.dist.main:
            if run.exists() and not resume:
                shutil.rmtree(self.out)  # --overwrite
            self.out.mkdir(parents=True, exist_ok=True)
            _atomic_write(run, json.dumps(self.run_info, indent=2))
        barrier()

    def _ckpt_root(self) -> Path:
        return self.out / "checkpoints"

    def save_checkpoint(self) -> Path:
        """Write checkpoints/step-N (rank 0; every rank its shards when FSDP2 shards the model), then
        `latest`. Collective under torchrun: a failure on any rank is a TrainError on every rank."""
        from torch.distributed.checkpoint.api import CheckpointException

        from lmzoo.train.parallel import agree, all_sum

        main = self.dist.main
        root = self._ckpt_root()
        name = f"step-{self.step:06d}"
        final = root / name
        tmp = root / f".{name}.tmp-{int(all_sum([os.getpid() if main else 0])[0])}"  # rank 0's pid

        def failed(e) -> TrainError:
            prev = (root / "latest").read_text().strip() if (root / "latest").exists() else None
            why = (e.strerror or e) if isinstance(e, OSError) else "another rank failed" if e is None else _dcp_cause(e)
            return TrainError(f"checkpoint at step {self.step} could not be written ({why}); "
                              + (f"the previous checkpoint {prev} is intact" if prev else "no earlier checkpoint"))

        err = None
        if main:
            try:
                root.mkdir(exist_ok=True)
                if tmp.exists():
                    shutil.rmtree(tmp)
                tmp.mkdir()
            except OSError as e:
                err = e
        if agree(err is None):
            try:
                if self.sharded:
                    self._save_dcp(tmp / "dcp")  # every rank writes its shards
                elif main:
                    from safetensors.torch import save_file

                    save_file(trainable_state(self.model), str(tmp / "trainable.safetensors"))
                    torch.save(self.opt.state_dict(), tmp / "optimizer.pt")
            except (Exception, CheckpointException) as e:  # noqa: BLE001 - OSError, or DCP's (a BaseException)
                err = e
        if agree(err is None) and main:
            try:
                state = {"step": self.step, "micro": self.micro, "tokens": self.tokens, "total": self.total,
                         "world": self.dist.world, "tp": self.dist.tp, "rng_torch": torch.get_rng_state().tolist(),
                         "rng_python": _py_rng_state()}
                (tmp / "state.json").write_text(json.dumps(state))
                for f in tmp.rglob("*"):
                    if f.is_file():
                        _fsync(f)
                if final.exists():
                    shutil.rmtree(final)
                os.replace(tmp, final)
                _atomic_write(root / "latest", name)
            except OSError as e:
                err = e
        if not agree(err is None):
            if main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise failed(err) from None
        if main:
            kept = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
            for old in kept[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def _dcp_state(self) -> dict:
        """{"model": trainable parameters, "optim": optimizer state}, by parameter name (DCP's
        layout-free form: it reshards on load)."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        msd, osd = get_state_dict(self.model, self.opt)
        names = {n for n, p in self.model.named_parameters() if p.requires_grad}
        return {"model": {k: v for k, v in msd.items() if k in names}, "optim": osd}

    def _save_dcp(self, path: Path) -> None:
        import torch.distributed.checkpoint as dcp

        dcp.save(self._dcp_state(), checkpoint_id=str(path))

    def _load_dcp(self, path: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.api import CheckpointException
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        state = self._dcp_state()
        try:
            with warnings.catch_warnings():  # a single process loading shards is what is meant
                warnings.filterwarnings("ignore", message="torch.distributed is disabled")
                dcp.load(state, checkpoint_id=str(path))
        except (Exception, CheckpointException) as e:  # noqa: BLE001 - DCP's (a BaseException) wraps the cause
            raise TrainError(f"checkpoint {path.parent} does not match this model or optimizer "
                             f"({_dcp_cause(e)})") from None
        set_state_dict(self.model, self.opt, model_state_dict=state["model"], optim_state_dict=state["optim"],
                       options=StateDictOptions(strict=False))

    def _load_latest(self) -> None:
        from safetensors.torch import load_file

        latest = self._ckpt_root() / "latest"
        if not latest.exists():
            return  # nothing saved yet: start from the beginning
        d = self._ckpt_root() / latest.read_text().strip()
        state = json.loads((d / "state.json").read_text())
        if state.get("tp", 1) != self.dist.tp:  # tensor parallelism keeps fused rows in its ranks' order
            raise TrainError(f"checkpoint {d} was written by a run with {state.get('tp', 1)} tensor-parallel "
                             f"rank(s), this run has {self.dist.tp}; resume with the same --parallel and world size")
        if (d / "dcp").is_dir():
            self._load_dcp(d / "dcp")
        else:
            weights = load_file(str(d / "trainable.safetensors"))
            params = dict(self.model.named_parameters())
            missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
            if missing or set(weights) - set(params):
                raise TrainError(f"checkpoint {d} does not match this model's trainable parameters "
                                 f"(e.g. {(missing or sorted(set(weights) - set(params)))[:3]})")
            shapes = [f"{n} {tuple(t.shape)} vs {tuple(params[n].shape)}" for n, t in weights.items()
                      if tuple(t.shape) != tuple(params[n].shape)]
            if shapes:
                raise TrainError(f"checkpoint {d} was written by another model config (e.g. {shapes[0]})")
            opt_state = torch.load(d / "optimizer.pt", weights_only=True)
            if self.sharded:
                self._load_full(weights, opt_state)
            else:
                with torch.no_grad():
                    for n, t in weights.items():
                        params[n].copy_(t)
                self.opt.load_state_dict(opt_state)
        self.step, self.micro, self.tokens = state["step"], state["micro"], state["tokens"]
        torch.set_rng_state(torch.tensor(state["rng_torch"], dtype=torch.uint8))
        random.setstate(_py_rng_from(state["rng_python"]))
        if self.dist.main:
            _truncate_metrics(self.out / "metrics.jsonl", self.step)

    def _load_full(self, weights: dict, opt_state: dict) -> None:
        """A replicated run's checkpoint (full tensors; optimizer state by parameter index) into a
        sharded model: by name, every rank keeping its shards."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        names = {id(p): n for n, p in self.model.named_parameters()}
        order = [names[id(p)] for g in self.opt.param_groups for p in g["params"]]
        optim = {"state": {order[int(i)]: st for i, st in opt_state["state"].items()},
                 "param_groups": [{**g, "params": [order[int(i)] for i in g["params"]]}
                                  for g in opt_state["param_groups"]]}
        set_state_dict(self.model, self.opt, model_state_dict=weights, optim_state_dict=optim,
                       options=StateDictOptions(full_state_dict=True, strict=False))

    # --- the loop ---------------------------------------------------------------------------------
    @property
    def bf16(self) -> bool:
        """bf16 autocast (TrainConfig.bf16_on). On CPUs with bf16 dot products (AVX512-BF16, AMX) its
        matmuls run ~4x float32's (benchmarks/RESULTS.md)."""
        return self.cfg.bf16_on(self.device)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _on_signal(self, signum, frame) -> None:
        self._stop = True

    def evaluate(self) -> float | None:
        from lmzoo.train.parallel import all_sum

        if not self.eval_data:
            return None
        was = self.model.training
        self.model.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for g in self.make_batches(self.eval_data, 0, self.cfg.seed):
                b, dummy = self._local(g)
                b = to_device(b, self.device)
                with self._autocast():
                    s, _ = self.objective.loss(self.net, b)
                if not dummy:
                    total, n = total + float(s), n + self.objective.units(b)
        total, n = all_sum([total, n], data=True)
        self.model.train(was)
        return total / max(n, 1)

    def _grad_norm(self, params: list) -> float:
        """The global gradient norm, accumulated in float64 (sharded gradients, FSDP2's and tensor
        parallelism's: each rank's shards, squares summed over the ranks; replicated ones counted once),
        and the gradients clipped to max_grad_norm when set (clip_grad_norm_'s rule)."""
        from lmzoo.train.parallel import all_sum

        c = self.cfg
        grads = [p.grad for p in params if p.grad is not None]
        split = [g for g in grads if hasattr(g, "to_local")]  # DTensors: this rank's shards
        whole = [g for g in grads if not hasattr(g, "to_local")]  # the same on every rank (replicated)
        local = [g.to_local() for g in split] + whole
        world = self.dist.world

        def sq(g) -> float:
            return float(torch.linalg.vector_norm(g, dtype=torch.float64)) ** 2

        def copies(g) -> int:  # ranks holding this shard: outside its mesh, and along its replicated dims
            mesh = g.device_mesh
            return world // mesh.size() * math.prod(mesh.size(i) for i, p in enumerate(g.placements)
                                                    if p.is_replicate())

        sharded = sum(sq(g.to_local()) / copies(g) for g in split)
        total = ((all_sum([sharded])[0] if self.sharded else 0.0) + sum(sq(g) for g in whole)) ** 0.5
        if c.max_grad_norm is not None:
            coef = c.max_grad_norm / (total + 1e-6)
            if coef < 1.0:
                for g in local:
                    g.mul_(coef)
        return total

    def fit(self) -> dict:
        from lmzoo.train.parallel import all_sum

        c = self.cfg
        main, world = self.dist.main, self.dist.dp_world
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        stream = self._stream()
        metrics_f = open(self.out / "metrics.jsonl", "a") if main else None
        bar = _Progress(self.total, self.step, enabled=self.progress)
        last, stopping = {}, False
        restore = hold_frozen_linears(self.model, torch.bfloat16 if self.bf16 and not self.sharded else None)
        try:
            if self.step == 0 and self.eval_data:
                base = self.evaluate()  # the starting point, so the curve shows what training changed
                if main:
                    metrics_f.write(json.dumps({"step": 0, "eval_loss": base, "tokens": 0}) + "\n")
                    metrics_f.flush()
            self.model.train()
            while self.step < self.total and not stopping:
                t0 = time.perf_counter()
                micro = [next(stream) for _ in range(c.grad_accum)]  # (this rank's rows, dummy)
                lr = lr_at(self.step, c, self.total)
                for g in self.opt.param_groups:
                    g["lr"] = lr
                # each micro-batch's summed loss over the step's units (tokens or pairs) of every rank,
                # times the world size (DDP / FSDP2 average the ranks' gradients): the step's gradient
                # equals that of one batch holding all of them
                units, step_tokens = all_sum([sum(0 if d else self.objective.units(b) for b, d in micro),
                                              sum(0 if d else b.n_tokens for b, d in micro)], data=True)
                units, step_tokens = int(units), int(step_tokens)
                self.opt.zero_grad(set_to_none=True)
                loss_sum, extras = 0.0, []
                for b, dummy in micro:
                    with self._autocast():
                        total, extra = self.objective.loss(self.net, b)
                    if dummy:
                        total = total * 0.0
                    (total * world / max(units, 1)).backward()
                    loss_sum += float(total.detach())
                    if not dummy:
                        extras.append(extra)
                params = [p for g in self.opt.param_groups for p in g["params"]]
                gn = self._grad_norm(params)
                self.opt.step()
                self.step += 1
                self.micro += c.grad_accum
                keys = sorted({k for e in extras for k in e})
                summed = all_sum([loss_sum, len(extras)] + [sum(float(e[k]) for e in extras if k in e) for k in keys],
                                 data=True)
                loss_sum, stopping = summed[0], all_sum([float(self._stop)])[0] > 0  # a stop on any rank
                self.tokens += step_tokens
                dt = time.perf_counter() - t0
                last = {"step": self.step, "loss": loss_sum / max(units, 1), "lr": lr, "grad_norm": gn,
                        "tokens": self.tokens, "tokens_per_s": step_tokens / dt if dt > 0 else None}
                for k, v in zip(keys, summed[2:]):
                    last[k] = v / max(summed[1], 1)
                if self.eval_data and ((c.eval_every and self.step % c.eval_every == 0) or self.step == self.total):
                    last["eval_loss"] = self.evaluate()
                if main and (self.step % c.log_every == 0 or "eval_loss" in last or self.step == self.total):
                    metrics_f.write(json.dumps(last) + "\n")
                    metrics_f.flush()
                bar.update(self.step, last)
                if c.save_every and self.step % c.save_every == 0 and self.step < self.total:
                    self.save_checkpoint()
            self.save_checkpoint()
        finally:
            restore()
            bar.close()
            if metrics_f is not None:
                metrics_f.close()
            for s, h in handlers.items():
                signal.signal(s, h)
        if self.step >= self.total and main:
            from lmzoo.train.plot import plot_metrics

            plot_metrics(self.out / "metrics.jsonl", self.out / "loss.png")
        self._stop = self._stop or stopping
        return {**last, "finished": self.step >= self.total, "stopped": self._stop}

    def export_model(self) -> nn.Module | None:
        """The trained model as one plain module to save: itself, or (FSDP2) an unsharded copy on
        rank 0 (collective; None on the other ranks)."""
        from lmzoo.train.parallel import unsharded_copy

        if not self.sharded:
            return self.model.cpu() if self.dist.main else None
        return unsharded_copy(self.model)


# --- helpers ---------------------------------------------------------------------------------------

def to_device(b, device: torch.device):
    """A batch dataclass (Batch, GLMBatch, PairBatch with its inner Batch) with its tensors on `device`."""
    if device.type == "cpu":
        return b
    moved = {}
    for f in fields(b):
        v = getattr(b, f.name)
        moved[f.name] = v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else \
            to_device(v, device) if is_dataclass(v) else v
    return replace(b, **moved)


class _Progress:
    def __init__(self, total: int, start: int, *, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                TextColumn("{task.fields[info]}"), transient=False)
            self.task = self.bar.add_task("train", total=total, completed=start, info="")
            self.bar.start()

    def update(self, step: int, m: dict) -> None:
        if self.bar is not None:
            info = f"loss {m['loss']:.4f}  lr {m['lr']:.2e}"
            if m.get("tokens_per_s"):
                info += f"  {m['tokens_per_s']:.0f} tok/s"
            if m.get("eval_loss") is not None:
                info += f"  eval {m['eval_loss']:.4f}"
            self.bar.update(self.task, completed=step, info=info)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _dcp_cause(e: BaseException) -> str:
    """The first rank's own error inside DCP's CheckpointException (whose text is every rank's traceback)."""
    failures = getattr(e, "failures", None)
    if failures:
        e = next(iter(failures.values()))[0]
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return " ".join(str(e).split())[:300]


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=str))


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _py_rng_state():
    v, state, gauss = random.getstate()
    return [v, list(state), gauss]


def _py_rng_from(s):
    return (s[0], tuple(s[1]), s[2])


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after the checkpoint a run resumes from (they will be written again)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    if step == 0:
        keep = [line for line in keep if "loss" not in json.loads(line)]
    _atomic_write(path, "".join(k + "\n" for k in keep))
