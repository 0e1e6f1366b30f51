"""Linearity profile plot and a reproduction of the paper's Figure 1 for the bundled model.

Figure 1 (ToFu): a pair of tokens that matching would merge is interpolated linearly,
``x(a) = a x1 + (1 - a) x2``, and pushed through a block's MLP branch ``f``. The curve ``f(x(a))``
is projected to 2-D (PCA of the curve). If ``f`` were linear, the output of the average,
``f((x1 + x2) / 2)``, would land on the chord midpoint ``(f(x1) + f(x2)) / 2``; the gap shows the
error that averaging-based merging makes in that block. The MLERP-merged input is marked too.

    python experiments/figure1.py          # writes experiments/results/{profile,figure1}.{json,png}
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import RESULTS, calibration, parser, write_json
from tofu_jax import cli, planner
from tofu_jax.matching import bipartite_soft_matching, gather_tokens, split_ab
from tofu_jax.merging import merge_mlerp
from tofu_jax.models.vit import MlpBranch, ViT
from tofu_jax.profiler import profile_model
from tofu_jax.viz import plot_profile


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--blocks", type=int, nargs="+", help="blocks to draw (default: 4 spread over depth)")
    p.add_argument("--pairs", type=int, default=3, help="token pairs drawn per block")
    args = p.parse_args(argv)
    config, params = cli.model_from_args(args)
    calib_x = calibration(args, config)
    profile = profile_model(config, params, calib_x, seed=args.seed)
    tau = planner.otsu_threshold(profile.metric("L_mlp_matched"))
    profile.save(RESULTS / "profile.json")
    plot_profile(profile, RESULTS / "profile.png", tau)
    ops, info = planner.choose_ops(profile, "per_block")
    split_ops, split_info = planner.choose_ops(profile, "split")
    plans = {}
    for budget in (0.2, 0.4, 0.5):
        for mode in ("per_block", "split"):
            pl = planner.plan(profile, config, budget, mode=mode)
            plans[f"{mode}@{budget}"] = {"schedule": pl.schedule.describe(), **pl.meta(config)}
    write_json(
        RESULTS / "profile_plans.json",
        {"threshold": tau, "per_block_ops": ops, "split": split_info["split"], "plans": plans},
    )

    depth = config.depth
    blocks = args.blocks or [0, depth // 3, 2 * depth // 3, depth - 1]
    x = jnp.asarray(calib_x[:8])
    _, state = ViT(config).apply({"params": params}, x, mutable=["intermediates"])
    inter = state["intermediates"]["Transformer"]
    branch = MlpBranch(config)
    alphas = np.linspace(0, 1, 41)
    import matplotlib

    matplotlib.use("Agg")  # a script that writes PNG files
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(blocks), figsize=(4 * len(blocks), 4))
    record = []
    for ax, i in zip(np.atleast_1d(axes), blocks, strict=True):
        bp = params["Transformer"][f"encoderblock_{i}"]
        f = jax.jit(
            lambda t, bp=bp: branch.apply({"params": {k: bp[k] for k in ("LayerNorm_2", "MlpBlock_3")}}, t)
        )
        tokens, metric = inter[f"encoderblock_{i}"]["attn_out"][0], inter[f"encoderblock_{i}"]["metric"][0]
        m = bipartite_soft_matching(metric, args.pairs, protected=config.num_prefix)
        xa, xb = split_ab(tokens)
        x1s, x2s = gather_tokens(xa, m.src_idx)[0], gather_tokens(xb, m.dst_idx)[0]
        for j in range(args.pairs):
            x1, x2 = x1s[j], x2s[j]
            path_in = alphas[:, None] * x1 + (1 - alphas[:, None]) * x2
            path_out = np.asarray(f(path_in))
            f1, f2 = path_out[-1], path_out[0]
            avg_out = np.asarray(f(((x1 + x2) / 2)[None]))[0]
            pair = jnp.stack([x1, x2])[None]
            pm = bipartite_soft_matching(jnp.stack([jnp.zeros_like(x1), x1, x2])[None], 1, protected=1)
            mlerp_in, _ = merge_mlerp(jnp.concatenate([jnp.zeros_like(pair[:, :1]), pair], 1), None, pm)
            mlerp_out = np.asarray(f(mlerp_in[0, -1:]))[0]
            chord_mid = (f1 + f2) / 2
            centre = path_out.mean(0)
            _, _, vt = np.linalg.svd(path_out - centre, full_matrices=False)
            proj = lambda v, vt=vt, centre=centre: (v - centre) @ vt[:2].T
            pts = proj(path_out)
            ax.plot(
                pts[:, 0],
                pts[:, 1],
                "-",
                color=f"C{j}",
                lw=1.5,
                label="f(interpolated input)" if j == 0 else None,
            )
            ends = proj(np.stack([f1, f2]))
            ax.plot(
                ends[:, 0],
                ends[:, 1],
                ":",
                color=f"C{j}",
                lw=1,
                label="chord f(x1)..f(x2)" if j == 0 else None,
            )
            ax.scatter(
                *proj(chord_mid), marker="x", color=f"C{j}", s=60, label="(f(x1)+f(x2))/2" if j == 0 else None
            )
            ax.scatter(*proj(avg_out), marker="o", facecolors="none", edgecolors=f"C{j}", s=60,
                       label="f(average)" if j == 0 else None)  # fmt: skip
            ax.scatter(*proj(mlerp_out), marker="s", facecolors="none", edgecolors=f"C{j}", s=50,
                       label="f(MLERP)" if j == 0 else None)  # fmt: skip
            scale = np.linalg.norm(f1 - f2) + 1e-9
            record.append({
                "block": i, "pair": j,
                "avg_error_rel": float(np.linalg.norm(avg_out - chord_mid) / scale),
                "mlerp_error_rel": float(np.linalg.norm(mlerp_out - chord_mid) / scale),
                "cosine": float(jnp.dot(x1, x2) / (jnp.linalg.norm(x1) * jnp.linalg.norm(x2))),
            })  # fmt: skip
        ax.set_title(f"block {i}: L_mlp = {profile.blocks[i].L_mlp_matched:.3g}")
        ax.set_xticks([])
        ax.set_yticks([])
    np.atleast_1d(axes)[0].legend(fontsize=7, loc="best")
    fig.suptitle("Figure 1 reproduction: matched token pairs interpolated through MLP branches (2-D PCA)")
    fig.tight_layout()
    fig.savefig(RESULTS / "figure1.png", dpi=120)
    plt.close(fig)
    write_json(RESULTS / "figure1.json", {"blocks": blocks, "pairs": record})
    print(f"threshold {tau:.4g}; per-block ops {ops}; split at {split_info['split']}")
    for b in profile.blocks:
        print(
            f"block {b.block:2d} L_mlp(matched) {b.L_mlp_matched:.4f} (random {b.L_mlp_random:.4f}) "
            f"L_block {b.L_block_matched:.4f} cos {b.cos_matched:.3f} |avg|/|x| {b.avg_norm_ratio:.3f}"
        )
    for k, v in plans.items():
        print(f"{k}: {v['schedule']} ({1 - v['flops_ratio']:.1%} fewer FLOPs)")


if __name__ == "__main__":
    main()
