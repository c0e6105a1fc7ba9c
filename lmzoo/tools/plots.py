"""Pictures for the sizing and `lmzoo explain` commands (matplotlib, headless Agg backend).

    memory_vs_context(name, ...)   memory against context length, one line per precision
    glm_mask(path) / glm_positions(path)   GLM blank infilling: attention mask (Part A / Part B) and
                                   the 2-D position ids, from lmzoo.train.glm.blank_infilling
    masks(path)                    causal vs prefix (bidirectional prefix) vs sliding-window masks
    alibi(path)                    ALiBi's per-head linear bias (lmzoo.nn.alibi)
    rope(path, name)               RoPE frequency bands: wavelength per rotated pair, with and without
                                   the model's context-extension scaling (lmzoo.nn.rope)

Every drawing function returns the path it wrote. The same data is rendered as text for the terminal
by the `*_text` functions, so `lmzoo explain` works without a display or a PNG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmzoo.errors import ConfigError

SEED_TOKENS = ["x1", "x2", "x3", "x4", "x5", "x6"]
SEED_SPANS = [(2, 3), (4, 6)]  # the seeds' example: [x3] and [x5 x6] blanked
SEED_ORDER = [1, 0]  # Part B shuffled: the [x5 x6] span first, as in the paper's figure


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_plot_path(path: str | Path) -> Path:
    """A PNG path in a directory that exists (a typo must not create directories)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"plots are written as PNG; got {path.name!r} (use a .png name)")
    if not path.parent.is_dir():
        raise ConfigError(f"--plot: the directory {str(path.parent)!r} does not exist; create it first")
    return path


def _save(fig, path: str | Path) -> Path:
    path = check_plot_path(path)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    _plt().close(fig)
    return path


# --------------------------------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------------------------------


def memory_curves(name: Any, *, task: str, batch: int, dtypes: Sequence[str], contexts: Sequence[int],
                  **kw: Any) -> dict[str, list[float]]:
    """GiB per dtype per context (the data behind `memory_vs_context`)."""
    from lmzoo.sizing.estimate import GiB, estimate_memory

    out: dict[str, list[float]] = {}
    for dt in dtypes:
        try:
            out[dt] = [estimate_memory(name, task=task, dtype=dt, context=c, batch=batch, **kw).total / GiB
                       for c in contexts]
        except ConfigError:  # e.g. full training at int4
            continue
    return out


def default_contexts(max_context: int) -> list[int]:
    cs, c = [], 512
    while c < max_context:
        cs.append(c)
        c *= 2
    return cs + [max_context]


def memory_vs_context(name: Any, path: str | Path, *, task: str = "infer", batch: int = 1,
                      dtypes: Sequence[str] = ("fp32", "bf16", "int8", "int4"), max_context: int | None = None,
                      gpu_bytes: float | None = None, title: str | None = None, **kw: Any) -> Path:
    from lmzoo.sizing.estimate import GiB, resolve_arch

    contexts = default_contexts(max_context or resolve_arch(name).max_seq_len)
    curves = memory_curves(name, task=task, batch=batch, dtypes=dtypes, contexts=contexts, **kw)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for dt, ys in curves.items():
        ax.plot(contexts, ys, marker="o", markersize=3, label=dt)
    if gpu_bytes:
        ax.axhline(gpu_bytes / GiB, color="crimson", linestyle="--", linewidth=1)
        ax.text(contexts[0], gpu_bytes / GiB, f" GPU {gpu_bytes / GiB:g} GiB", color="crimson", va="bottom")
    ax.set_xscale("log", base=2)
    ax.set_xticks(contexts)
    ax.set_xticklabels([f"{c // 1024}K" if c >= 1024 and c % 1024 == 0 else str(c) for c in contexts],
                       rotation=45 if len(contexts) > 8 else 0)
    ax.minorticks_off()
    ax.set_xlabel("context length (tokens per sequence)")
    ax.set_ylabel("peak memory (GiB)")
    label = name if isinstance(name, str) else getattr(name, "name", "model")
    ax.set_title(title or f"{label}: {task}, batch {batch}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="weights")
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------
# masks
# --------------------------------------------------------------------------------------------------


def glm_example():
    from lmzoo.train.glm import blank_infilling

    return blank_infilling(SEED_TOKENS, SEED_SPANS, order=SEED_ORDER)


def mask_matrices(n: int = 10, prefix: int = 4, window: int = 3) -> dict[str, list[list[bool]]]:
    """Boolean (query, key) matrices: causal, prefix-LM (bidirectional over the first `prefix`
    tokens), sliding window (built with lmzoo.nn.attention.build_mask)."""

    import torch

    from lmzoo.nn.attention import build_mask

    slots = torch.arange(n)[None]
    causal = build_mask(q_slot=slots, L=n, key_valid=None, window=None)[0, 0]
    sliding = build_mask(q_slot=slots, L=n, key_valid=None, window=window)[0, 0]
    prefix_m = causal.clone()
    prefix_m[:prefix, :prefix] = True  # the prefix sees itself in both directions
    return {"causal": causal.tolist(), f"prefix (first {prefix} bidirectional)": prefix_m.tolist(),
            f"sliding window ({window})": sliding.tolist(), "_n": n}  # type: ignore[dict-item]


def _draw_mask(ax, m, labels=None, title="", split: int | None = None):
    import numpy as np

    arr = np.array(m, dtype=float)
    ax.imshow(arr, cmap="Blues", vmin=0, vmax=1.25)
    n = arr.shape[0]
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    if labels:
        ax.set_xticklabels(labels, rotation=90, fontsize=8)
        ax.set_yticklabels(labels, fontsize=8)
    ax.set_xticks([i - 0.5 for i in range(n + 1)], minor=True)
    ax.set_yticks([i - 0.5 for i in range(n + 1)], minor=True)
    ax.grid(which="minor", color="white", linewidth=1)
    ax.tick_params(which="minor", length=0)
    if split is not None:
        ax.axhline(split - 0.5, color="darkorange", linewidth=2)
        ax.axvline(split - 0.5, color="darkorange", linewidth=2)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query")
    ax.set_title(title, fontsize=10)


def glm_mask(path: str | Path) -> Path:
    ex = glm_example()
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    _draw_mask(ax, ex.attention_mask.tolist(), ex.input_ids, split=ex.part_a_len, title="")
    ax.set_title("GLM blank infilling: Part A sees Part A (both ways);\n"
                 "Part B sees Part A and the Part B tokens before it", fontsize=10, pad=24)
    ax.text(ex.part_a_len / 2 - 0.5, -0.8, "Part A", ha="center", color="darkorange", fontsize=9)
    ax.text((ex.part_a_len + len(ex.input_ids)) / 2 - 0.5, -0.8, "Part B", ha="center", color="darkorange",
            fontsize=9)
    return _save(fig, path)


def glm_positions(path: str | Path) -> Path:
    ex = glm_example()
    pos = ex.position_ids.tolist()
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 2.6))
    n = len(ex.input_ids)
    for row, (vals, name) in enumerate(zip(pos, ("position 1 (where in Part A)", "position 2 (inside the span)"))):
        for i, v in enumerate(vals):
            color = "#cfe3f7" if i < ex.part_a_len else "#fde2c4"
            ax.add_patch(_plt().Rectangle((i, -row - 1), 1, 1, facecolor=color, edgecolor="white"))
            ax.text(i + 0.5, -row - 0.5, str(v), ha="center", va="center", fontsize=11)
        ax.text(-0.2, -row - 0.5, name, ha="right", va="center", fontsize=9)
    for i, tok in enumerate(ex.input_ids):
        ax.text(i + 0.5, 0.35, tok, ha="center", va="center", fontsize=10, fontweight="bold")
    ax.axvline(ex.part_a_len, color="darkorange", linewidth=2)
    ax.set_xlim(-5.5, n + 0.2)
    ax.set_ylim(-2.2, 0.9)
    ax.axis("off")
    ax.set_title("GLM 2-D positions: Part A (blue) | Part B (orange), spans [x3] and [x5 x6]", fontsize=10)
    return _save(fig, path)


def masks(path: str | Path, n: int = 10, prefix: int = 4, window: int = 3) -> Path:
    ms = mask_matrices(n, prefix, window)
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    labels = [str(i) for i in range(n)]
    for ax, (title, m) in zip(axes, [(k, v) for k, v in ms.items() if not k.startswith("_")]):
        _draw_mask(ax, m, labels, title=title, split=prefix if title.startswith("prefix") else None)
    fig.suptitle("Attention masks (blue: the query may attend to the key)", fontsize=11, y=1.05)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------
# ALiBi and RoPE
# --------------------------------------------------------------------------------------------------


def alibi_matrix(n_head: int = 8, n: int = 8) -> tuple[list[float], list[list[list[float]]]]:
    """Slopes (n_head,) and the per-head bias -slope * (query - key) on causal positions (n, n)."""
    from lmzoo.nn.alibi import alibi_slopes

    slopes = alibi_slopes(n_head).tolist()
    mats = [[[(-s * (i - j) if j <= i else float("nan")) for j in range(n)] for i in range(n)] for s in slopes]
    return slopes, mats


def alibi(path: str | Path, n_head: int = 8, n: int = 12) -> Path:
    import numpy as np

    slopes, mats = alibi_matrix(n_head, n)
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), gridspec_kw={"wspace": 0.35})
    ax = axes[0]
    im = ax.imshow(np.array(mats[0]), cmap="magma", vmax=0)
    ax.set_title(f"head 1 (slope {slopes[0]:g}): bias per (query, key)\nwhite: masked (future)", fontsize=10)
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
    fig.colorbar(im, ax=ax, shrink=0.85, label="bias added to the score")
    ax = axes[1]
    dist = np.arange(0, 257)
    for h, s in enumerate(slopes):
        ax.plot(dist, -s * dist, label=f"head {h + 1}")
    ax.set_xlabel("distance q - k (tokens)")
    ax.set_ylabel("bias")
    ax.set_ylim(-16, 0.5)
    ax.set_title("every head: a straight line, steeper for early heads\n(early heads look locally, late heads far)",
                 fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    ax = axes[2]
    ax.semilogy(range(1, n_head + 1), slopes, marker="o")
    ax.set_xlabel("head")
    ax.set_ylabel("slope (log scale)")
    ax.set_title(f"slopes: a geometric sequence 2^(-8h/{n_head})", fontsize=10)
    fig.suptitle("ALiBi: no position embedding; each head adds -slope_h * (q - k) to its scores", fontsize=11, y=1.05)
    return _save(fig, path)


def rope_bands(name: Any = "Llama-3.1-8B") -> dict[str, Any]:
    """Per rotated pair i: base inverse frequency, the model's (scaled) one, and wavelengths in tokens."""
    from lmzoo.nn.rope import inv_frequencies
    from lmzoo.sizing.estimate import resolve_arch

    cfg = resolve_arch(name)
    if cfg.position != "rope":
        raise ConfigError(f"{name} does not use RoPE (position={cfg.position!r})")
    scaled, _ = inv_frequencies(cfg)
    base, _ = inv_frequencies(cfg.replace(rope_scaling={}))
    return {"theta": cfg.rope_theta, "rope_dim": cfg.rope_dim, "scaling": cfg.rope_scaling.kind,
            "context": cfg.max_seq_len, "original": cfg.rope_scaling.original_max_position,
            "base": base.tolist(), "scaled": scaled.tolist(),
            "wavelength_base": [2 * math.pi / f for f in base.tolist()],
            "wavelength_scaled": [2 * math.pi / f for f in scaled.tolist()]}


def rope(path: str | Path, name: Any = "Llama-3.1-8B") -> Path:
    import numpy as np

    b = rope_bands(name)
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.4))
    i = np.arange(len(b["base"]))
    ax1.semilogy(i, b["wavelength_base"], label=f"θ = {b['theta']:g}, no scaling")
    if b["scaling"] != "none":
        ax1.semilogy(i, b["wavelength_scaled"], label=f"{b['scaling']} scaling", linestyle="--")
    for ctx, lab in ((b["original"], "trained context"), (b["context"], "extended context")):
        if ctx:
            ax1.axhline(ctx, color="grey", linewidth=0.8, linestyle=":")
            ax1.text(0, ctx, f" {lab} {ctx:,}", fontsize=8, va="bottom", color="grey")
    ax1.set_xlabel("rotated pair i (dims i and i + d/2)")
    ax1.set_ylabel("wavelength 2π / θ_i (tokens)")
    ax1.set_title("frequency bands: high-frequency pairs (left) encode local order,\n"
                  "low-frequency pairs (right) turn less than once over the context", fontsize=10)
    ax1.legend(fontsize=8)
    pos = np.arange(0, 256)
    angles = np.cos(np.outer(pos, np.array(b["scaled"])))
    ax2.imshow(angles.T, aspect="auto", cmap="RdBu", vmin=-1, vmax=1, origin="lower")
    ax2.set_xlabel("position")
    ax2.set_ylabel("pair i")
    ax2.set_title("cos(position · θ_i): each pair rotates at its own speed", fontsize=10)
    label = name if isinstance(name, str) else "model"
    fig.suptitle(f"RoPE in {label} (rotary dims {b['rope_dim']})", fontsize=11, y=1.05)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------
# text renderings
# --------------------------------------------------------------------------------------------------


def _grid(m, labels: Sequence[str], split: int | None = None) -> str:
    w = max(len(s) for s in labels)
    cw = max(3, w)
    lines = [" " * w + "".join((("|" if split is not None and j == split else " ") + s.rjust(cw))
                               for j, s in enumerate(labels))]
    for i, row in enumerate(m):
        cells = [("|" if split is not None and j == split else " ") + ("■" if v else "·").rjust(cw)
                 for j, v in enumerate(row)]
        lines.append(labels[i].rjust(w) + "".join(cells))
        if split is not None and i == split - 1:
            lines.append(" " * w + "-" * ((cw + 1) * len(row)))
    return "\n".join(lines)


def glm_mask_text() -> str:
    ex = glm_example()
    return ("GLM attention mask (■ = may attend; rows: queries, columns: keys; | and --- split Part A / B)\n"
            + _grid(ex.attention_mask.tolist(), ex.input_ids, split=ex.part_a_len))


def glm_positions_text() -> str:
    ex = glm_example()
    toks, (p1, p2) = ex.input_ids, ex.position_ids.tolist()
    w = max(len(t) for t in toks) + 1
    row = lambda name, vals: name.ljust(12) + "".join(str(v).rjust(w) for v in vals)  # noqa: E731
    return "\n".join(["GLM 2-D positions (Part A then Part B; a span's tokens sit at its [M]'s position)",
                      row("token", toks), row("position 1", p1), row("position 2", p2),
                      row("target", ["-" if t is None else t for t in ex.targets])])


def masks_text(n: int = 10, prefix: int = 4, window: int = 3) -> str:
    ms = mask_matrices(n, prefix, window)
    labels = [str(i) for i in range(n)]
    return "\n\n".join(f"{k}\n{_grid(v, labels)}" for k, v in ms.items() if not k.startswith("_"))


def alibi_text(n_head: int = 8, n: int = 8) -> str:
    slopes, mats = alibi_matrix(n_head, n)
    lines = ["ALiBi slopes: " + ", ".join(f"{s:.4g}" for s in slopes), "",
             f"head 1 bias (-slope * distance), {n} positions:"]
    for row in mats[0]:
        lines.append(" ".join("     ." if math.isnan(v) else f"{v + 0.0:6.2f}" for v in row))
    return "\n".join(lines)


def rope_text(name: Any = "Llama-3.1-8B") -> str:
    b = rope_bands(name)
    n = len(b["base"])
    lines = [f"RoPE: θ = {b['theta']:g}, {b['rope_dim']} rotary dims, scaling = {b['scaling']}",
             "pair   wavelength (tokens)   scaled wavelength   turns over context"]
    for i in sorted({0, 1, 2, n // 4, n // 2, 3 * n // 4, n - 2, n - 1}):
        turns = b["context"] / b["wavelength_scaled"][i]
        lines.append(f"{i:4d}   {b['wavelength_base'][i]:19,.1f}   {b['wavelength_scaled'][i]:17,.1f}   {turns:18,.2f}")
    return "\n".join(lines)


EXPLAIN = {
    "glm-mask": (glm_mask, glm_mask_text, "GLM blank-infilling attention mask (Part A / Part B)"),
    "glm-positions": (glm_positions, glm_positions_text, "GLM's 2-D position ids"),
    "masks": (masks, masks_text, "causal vs prefix vs sliding-window masks"),
    "alibi": (alibi, alibi_text, "ALiBi's linear distance bias per head"),
    "rope": (rope, rope_text, "RoPE frequency bands (and context-extension scaling)"),
}
