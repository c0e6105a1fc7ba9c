"""The KV cache: an object the caller owns and passes to the model (gpt-fast / mlx-lm style).

The model keeps no request state. Everything a generation accumulates lives here:

    k[i], v[i]   (B, n_kv_head, L, head_dim) per layer      keys / values, slot by slot
    valid        (B, L) bool                                 slot holds a real token (not left padding)
    pos          (B, L) long                                 the position of the token in each slot
    lengths      (B,)                                        slots written per row (the next write slot)
    n_valid      (B,)                                        real tokens per row (the next position)
    prefix_*     (B,)                                        GLM prefix-LM: first real slot, <sop> slot, [gMASK] position
    ntk_len      (B,)                                        Qwen v1 NTK: the prompt length its alpha was fixed at

Every row has its own length, so rows at different positions share one batch (continuous
batching): a forward on rows R writes row r's T new tokens at slots [lengths[r], lengths[r] + T)
and attends to the slots written so far. A row is recycled with `reset(rows)`.

    slot:     0    1    2    3    4    5    6    7        L = 8
    row 0:  [pad][pad] a    b    c    .    .    .        lengths 5, n_valid 3, positions 0 1 2
    row 1:   x    y    z    w    v    u    t    .        lengths 7

An eager cache (the default) grows on demand: it starts with room for `initial` slots per row and
doubles (up to `max_len`) when a forward needs more, so memory follows the longest row written,
not the longest allowed — 16 rows of a 4,096-token limit cost nothing until a request uses them.
Growing copies the written slots into larger buffers; every forward reads slots [0, end) only, so
the results do not depend on the buffers' size.

`static=True` makes every step attend over the whole buffer (masking unwritten slots) instead of
slicing to the longest row: the shapes of a decode step never change, which is what torch.compile
and CUDA graphs need (runtime.compiled). The host-side copy of the lengths is then not kept, so a
compiled step never synchronises with the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmzoo.errors import ContextLengthError, GenerationError


class KVCache:
    GROW_STEP = 256  # an eager cache's slots are allocated in multiples of this

    def __init__(self, model, batch: int, max_len: int, *, dtype=None, device=None, static: bool = False,
                 mla_cache: str | None = None, initial: int | None = None) -> None:
        cfg = model.config
        if max_len > cfg.max_seq_len:
            raise ContextLengthError(
                f"cache length {max_len} exceeds the model's context of {cfg.max_seq_len} tokens")
        if batch < 1 or max_len < 1:
            raise ValueError(f"cache needs batch >= 1 and max_len >= 1, got batch={batch}, max_len={max_len}")
        dt, dev = model.token_dtype_device()
        dtype, device = dtype or dt, torch.device(device or dev)
        # MLA's cache form (lmzoo.nn.mla): per-head keys/values or the compressed latent
        self.layout = (mla_cache or cfg.mla_cache) if cfg.attention == "mla" else "standard"
        if self.layout not in ("standard", "expanded", "latent"):
            raise ValueError(f"mla_cache must be 'expanded' or 'latent', got {mla_cache!r}")
        self.batch, self.max_len, self.static = batch, max_len, static
        # slots allocated per row: all of them for a static cache (fixed shapes), else a first step
        self.capacity = max_len if static else min(max_len, initial or self.GROW_STEP)
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor | None] = []
        for layer in model.layers:
            (hk, dk), vshape = layer.attn.cache_shapes(self.layout)
            self.k.append(torch.zeros(batch, hk, self.capacity, dk, dtype=dtype, device=device))
            self.v.append(None if vshape is None else
                          torch.zeros(batch, vshape[0], self.capacity, vshape[1], dtype=dtype, device=device))
        z = lambda dt=torch.long: torch.zeros(batch, dtype=dt, device=device)  # noqa: E731
        self.valid = torch.zeros(batch, self.capacity, dtype=torch.bool, device=device)
        self.pos = torch.zeros(batch, self.capacity, dtype=torch.long, device=device)
        self.lengths, self.n_valid, self.ntk_len = z(), z(), z()
        self.prefix_first, self.prefix_sop, self.prefix_mask = z(), z(), z()
        self.host_lengths = [0] * batch  # eager mode: the lengths on the host (no device sync per step)
        self.host_padded = [False] * batch  # eager mode: the row holds left padding

    @property
    def device(self) -> torch.device:
        return self.valid.device

    def nbytes(self) -> int:
        """Bytes of keys and values allocated now (an eager cache grows: see `full_nbytes`)."""
        return sum(t.numel() * t.element_size() for t in self.k + self.v if t is not None)

    def full_nbytes(self) -> int:
        """Bytes of keys and values once every row holds `max_len` slots."""
        return self.nbytes() * self.max_len // self.capacity

    def _grow(self, need: int) -> None:
        """Room for `need` slots per row: double (at least), in GROW_STEP multiples, up to max_len."""
        step = self.GROW_STEP
        cap = min(self.max_len, max(need, 2 * self.capacity) + (-max(need, 2 * self.capacity)) % step)

        def wider(t: torch.Tensor, dim: int) -> torch.Tensor:
            shape = list(t.shape)
            shape[dim] = cap
            out = t.new_zeros(shape)
            out.narrow(dim, 0, self.capacity).copy_(t)
            return out

        self.k = [wider(t, 2) for t in self.k]
        self.v = [None if t is None else wider(t, 2) for t in self.v]
        self.valid, self.pos = wider(self.valid, 1), wider(self.pos, 1)
        self.capacity = cap

    # --- row bookkeeping ---------------------------------------------------------------------------
    def _index(self, rows) -> torch.Tensor:
        """Row selector -> a long tensor of row indices (b,)."""
        if rows is None:
            return torch.arange(self.batch, device=self.device)
        if isinstance(rows, slice):
            return torch.arange(self.batch, device=self.device)[rows]
        if isinstance(rows, torch.Tensor):
            return rows.to(device=self.device, dtype=torch.long)
        return torch.tensor(list(rows), dtype=torch.long, device=self.device)

    def row_lengths(self, rows=None) -> list[int]:
        idx = self._index(rows)
        return self.lengths[idx].tolist() if self.static else [self.host_lengths[i] for i in idx.tolist()]

    def reset(self, rows=None) -> None:
        """Empty these rows (their slots are overwritten by the next forward)."""
        idx = self._index(rows)
        for t in (self.lengths, self.n_valid, self.ntk_len):
            t[idx] = 0
        self.valid[idx] = False
        for i in idx.tolist():
            self.host_lengths[i] = 0
            self.host_padded[i] = False

    def rewind(self, row: int, length: int) -> None:
        """Drop everything from slot `length` on in one row (speculative decoding's rejected drafts)."""
        have = self.row_lengths([row])[0]
        if not 0 <= length <= have:
            raise ValueError(f"rewind to {length} outside the row's {have} slots")
        self._keep(row, length)

    def copy_prefix(self, src: int, dst: int, length: int) -> None:
        """Row dst becomes the first `length` slots of row src (keys, values, validity and positions):
        a prefix shared by two requests is computed once (Engine's prompt cache)."""
        have = self.row_lengths([src])[0]
        if not 0 <= length <= have:
            raise ValueError(f"copy of {length} slots outside row {src}'s {have}")
        for t in self.k + self.v:
            if t is not None:
                t[dst, :, :length] = t[src, :, :length]
        self.valid[dst, :length] = self.valid[src, :length]
        self.pos[dst, :length] = self.pos[src, :length]
        self.host_padded[dst] = self.host_padded[src]
        self._keep(dst, length)

    def _keep(self, row: int, length: int) -> None:
        """The row holds its first `length` slots, the next write goes to slot `length`."""
        self.lengths[row] = length
        self.valid[row, length:] = False
        self.n_valid[row] = self.valid[row, :length].sum()
        self.host_lengths[row] = length

    # --- one forward ------------------------------------------------------------------------------
    def begin(self, rows, T: int, attention_mask: torch.Tensor | None) -> CacheStep:
        """Reserve slots for T new tokens per selected row and record them; returns what the model
        needs for this forward. attention_mask (b, T): 1 for real tokens, 0 for left padding."""
        idx = self._index(rows)
        b = idx.shape[0]
        dev = self.device
        starts_host = None
        if not self.static:
            starts_host = [self.host_lengths[i] for i in idx.tolist()]
            end = max(starts_host) + T
            if end > self.max_len:
                raise ContextLengthError(
                    f"{T} new tokens after {max(starts_host)} cached do not fit the cache of {self.max_len} slots")
            if end > self.capacity:
                self._grow(end)
        else:
            end = self.max_len
        starts = self.lengths[idx]  # (b,)
        q_slot = starts[:, None] + torch.arange(T, device=dev)  # (b, T)
        if attention_mask is None:
            real = torch.ones(b, T, dtype=torch.bool, device=dev)
            positions = self.n_valid[idx][:, None] + torch.arange(T, device=dev)
        else:
            real = attention_mask.to(device=dev).bool()
            positions = (self.n_valid[idx][:, None] + real.long().cumsum(-1) - 1).clamp(min=0)
        rows_b = idx[:, None].expand(b, T)
        if self.static:  # out-of-range slots (a finished row stepped again) are dropped, not wrapped
            q_slot = q_slot.clamp(max=self.max_len - 1)
        self.valid.index_put_((rows_b, q_slot), real)
        self.pos.index_put_((rows_b, q_slot), positions)
        self.lengths.index_add_(0, idx, torch.full_like(idx, T))
        self.n_valid.index_add_(0, idx, real.long().sum(-1))
        dense = None
        if starts_host is not None:
            padded = attention_mask is not None and not bool(real.all())
            for i in idx.tolist():
                self.host_lengths[i] += T
                self.host_padded[i] = self.host_padded[i] or padded
            # every row at the same length with no padding: the keys are exactly [0, end) for all
            dense = len(set(starts_host)) == 1 and not any(self.host_padded[i] for i in idx.tolist())
        whole = rows is None
        # every row of the cache written at the same T slots: the writes are plain slice copies
        slot0 = starts_host[0] if whole and starts_host and len(set(starts_host)) == 1 else None
        return CacheStep(cache=self, idx=idx, whole=whole, q_slot=q_slot, positions=positions, end=end,
                         starts=starts_host, dense=bool(dense), slot0=slot0,
                         first=None if starts_host is None else all(s == 0 for s in starts_host),
                         key_valid=(self.valid if whole else self.valid[idx])[:, :end],
                         key_pos=(self.pos if whole else self.pos[idx])[:, :end])


@dataclass
class CacheStep:
    """One forward's view of the cache: the new tokens' slots and positions (b, T), every visible
    slot's validity and position (b, end), and per-layer writes."""

    cache: KVCache
    idx: torch.Tensor  # (b,) rows of the cache
    whole: bool  # every row, in order: read the buffers as views
    q_slot: torch.Tensor  # (b, T)
    positions: torch.Tensor  # (b, T)
    end: int  # slots [0, end) are attended to
    starts: list[int] | None  # each row's length before this forward (host copy; None for a static cache)
    dense: bool  # all rows at the same length and without padding (False when unknown: static)
    first: bool | None  # every row starts empty (a prefill's first chunk); None when unknown (static)
    key_valid: torch.Tensor  # (b, end)
    key_pos: torch.Tensor  # (b, end)
    slot0: int | None = None  # all rows written at slots [slot0, slot0 + T) (None: per-row slots)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor | None):
        """Write k, v (b, heads, T, dim) at this step's slots of `layer`; return all visible (b, heads, end,
        dim), in k's dtype (a float16 cache under float32 activations: stored rounded, read widened)."""
        c = self.cache
        if self.slot0 is not None:
            s = slice(self.slot0, self.slot0 + self.q_slot.shape[1])
            c.k[layer][:, :, s] = k
            if v is not None:
                c.v[layer][:, :, s] = v
            return self.read(layer, k.dtype)
        rows = self.idx[:, None].expand_as(self.q_slot)
        # advanced indices around a slice put the indexed dims first: (b, T, heads, dim)
        c.k[layer][rows, :, self.q_slot] = k.transpose(1, 2).to(c.k[layer].dtype)
        if v is not None:
            c.v[layer][rows, :, self.q_slot] = v.transpose(1, 2).to(c.v[layer].dtype)
        return self.read(layer, k.dtype)

    def read(self, layer: int, dtype: torch.dtype | None = None):
        c = self.cache
        if self.whole:
            k = c.k[layer][:, :, : self.end]
            v = c.v[layer][:, :, : self.end] if c.v[layer] is not None else None
        else:
            k = c.k[layer][self.idx, :, : self.end]
            v = c.v[layer][self.idx, :, : self.end] if c.v[layer] is not None else None
        if dtype is not None and k.dtype != dtype:
            k, v = k.to(dtype), None if v is None else v.to(dtype)
        return k, v

    def check_not_mixed(self, what: str) -> None:
        """Per-row state fixed at a prefill (GLM's prefix, Qwen v1's alpha) needs each row's first
        forward to be its own: a batch mixing new rows with running ones cannot be told apart."""
        if self.starts is None:
            raise GenerationError(f"{what} needs an eager cache (static=False) to record its prefill")
        if any(s == 0 for s in self.starts):
            raise GenerationError(f"{what}: a forward mixes rows starting their prompt with running rows; "
                                  "prefill new rows in a call of their own")
