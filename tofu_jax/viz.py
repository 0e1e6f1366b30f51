"""Plots: schedule comparisons, linearity profiles, token-count pictures."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_comparison(rows: list[dict], path: str | Path, title: str = "") -> None:
    """Top-1 vs GFLOPs and images/s per schedule, side by side."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
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
    plt.close(fig)


def plot_profile(profile, path: str | Path, threshold: float | None = None) -> None:
    """Per-block linearity (matched vs random pairs, MLP and block views) on a log scale."""
    blocks = np.arange(len(profile.blocks))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
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
    plt.close(fig)
