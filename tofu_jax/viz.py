"""Plots: schedule comparisons, linearity profiles, token-count pictures.

matplotlib is optional (``pip install 'tofu_jax[plots]'``) and imported only when a plot is drawn.
Figures are ``matplotlib.figure.Figure`` objects rendered by the Agg canvas directly, so drawing one
never selects or changes the global pyplot backend of the program that calls this module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tofu_jax.errors import UserError


def _figure(figsize: tuple[float, float]):
    """A new Figure on its own Agg canvas (no pyplot, no global backend)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise UserError("drawing plots needs matplotlib: pip install 'tofu_jax[plots]'") from e
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def plot_comparison(rows: list[dict], path: str | Path, title: str = "") -> None:
    """Top-1 vs GFLOPs and images/s per schedule, side by side."""
    fig = _figure((10, 4))
    ax1, ax2 = fig.subplots(1, 2)
    for r in rows:
        ax1.scatter(r["gflops"], 100 * r["top1"], s=50)
        ax1.annotate(r["name"], (r["gflops"], 100 * r["top1"]), textcoords="offset points", xytext=(5, 5))
    ax1.set_xlabel("GFLOPs / image")
    ax1.set_ylabel("top-1 (%)")
    ax1.grid(alpha=0.3)
    names = [r["name"] for r in rows]
    ax2.bar(names, [r["images_per_s"] for r in rows], color="tab:blue")
    for i, r in enumerate(rows):
        ax2.text(
            i,
            r["images_per_s"],
            f"{r['speedup']:.2f}x\n(ideal {r['ideal_speedup']:.2f}x)",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax2.set_ylabel(f"images/s (batch {rows[0].get('bench_batch', '?')})")
    ax2.margins(y=0.25)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_profile(profile, path: str | Path, threshold: float | None = None) -> None:
    """Per-block linearity (matched vs random pairs, MLP and block views) on a log scale."""
    blocks = np.arange(len(profile.blocks))
    fig = _figure((10, 4))
    ax1, ax2 = fig.subplots(1, 2)
    for name, style in (
        ("L_mlp_matched", "o-"),
        ("L_mlp_random", "o--"),
        ("L_block_matched", "s-"),
        ("L_block_random", "s--"),
    ):
        ax1.plot(blocks, profile.metric(name), style, label=name)
    if threshold is not None:
        ax1.axhline(threshold, color="k", lw=0.8, ls=":", label="planner threshold")
    ax1.set_yscale("log")
    ax1.set_xlabel("block")
    ax1.set_ylabel("linearity L (0 = linear)")
    ax1.legend(fontsize=7)
    ax1.grid(alpha=0.3)
    ax2.plot(blocks, profile.metric("cos_matched"), "o-", label="cosine, matched pairs")
    ax2.plot(blocks, profile.metric("cos_random"), "o--", label="cosine, random pairs")
    ax2.plot(blocks, profile.metric("avg_norm_ratio"), "s-", label="|avg| / mean |x| (matched)")
    ax2.set_xlabel("block")
    ax2.legend(fontsize=7)
    ax2.grid(alpha=0.3)
    fig.suptitle(f"linearity profile ({profile.num_images} calibration images, r={profile.r_profile})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def token_groups(sources: np.ndarray, num_prefix: int, grid: int) -> np.ndarray:
    """``sources [N_final, N0]`` 0/1 -> ``[grid, grid]`` id of the final token covering each patch.

    Patches no final token covers (pruned) get -1.
    """
    patches = np.asarray(sources)[:, num_prefix:]
    covered = patches.max(axis=0) > 0
    owner = np.where(covered, patches.argmax(axis=0), -1)
    return owner.reshape(grid, grid)


def plot_token_groups(image: np.ndarray, groups: np.ndarray, path: str | Path, title: str = "") -> None:
    """Image beside its patch groups: one colour per final token, pruned patches hatched black."""
    rng = np.random.default_rng(0)
    n_groups = int(groups.max()) + 1
    palette = rng.uniform(0.15, 1.0, (max(n_groups, 1), 3))
    grid = groups.shape[0]
    colours = np.where(groups[..., None] >= 0, palette[np.maximum(groups, 0)], 0.0)
    img = np.asarray(image, np.float32)
    img = (img - img.min()) / max(float(img.max() - img.min()), 1e-6)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    fig = _figure((10, 3.6))
    axes = fig.subplots(1, 3)
    axes[0].imshow(img, cmap="gray" if img.ndim == 2 else None)
    axes[0].set_title("input")
    axes[1].imshow(colours, interpolation="nearest")
    axes[1].set_title(f"{n_groups} final tokens")
    side = img.shape[0]
    up = np.kron(colours, np.ones((side // grid, side // grid, 1)))
    gray = img if img.ndim == 2 else img.mean(-1)
    axes[2].imshow(0.55 * up + 0.45 * gray[..., None], interpolation="nearest")
    pruned = groups < 0
    axes[2].imshow(
        np.kron(pruned, np.ones((side // grid, side // grid))), cmap="Greys", alpha=0.35 * pruned.any()
    )
    axes[2].set_title(f"groups over image ({int(pruned.sum())} patches pruned)")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_schedule(schedule, token_counts: list[int], path: str | Path, title: str = "") -> None:
    """Tokens entering each block's MLP, coloured by the block's op."""
    colours = {
        "none": "tab:gray", "prune": "tab:red", "merge_avg": "tab:blue", "merge_mlerp": "tab:green",
        "prune_importance": "tab:orange", "merge_importance_mlerp": "tab:olive",
        "merge_importance_avg": "tab:cyan",
    }  # fmt: skip
    fig = _figure((7, 3.2))
    ax = fig.subplots()
    ops = [b.op for b in schedule.blocks]
    ax.bar(range(len(ops)), token_counts[1:], color=[colours.get(o, "k") for o in ops])
    for op in dict.fromkeys(ops):
        ax.bar([0], [0], color=colours.get(op, "k"), label=op)
    ax.axhline(token_counts[0], color="k", lw=0.8, ls=":")
    ax.set(xlabel="block", ylabel="tokens after reduction", title=title or schedule.describe())
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
