"""One process of tests/test_parallel.py, on N forced CPU devices (XLA_FLAGS set by the caller).

``python parallel_worker.py '{"fsdp": 1, "role": "base"|"resume"|"reference", "dir": ...}'``

Evaluates two schedules with uneven final batches (sharded), fine-tunes with a merging schedule and
prints one JSON line. ``base``: sharded steps 0-1, checkpoint at step 2, steps 2-3 uninterrupted.
``resume``: restore that checkpoint onto this process's mesh and run sharded steps 2-3.
``reference``: also count top-1/top-5 in NumPy from plain ``model.apply`` logits (an independent
check of the sharded counts), then resume like ``resume``. Final states go to ``{dir}/final_{N}.npz``.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from tofu_jax import parallel as par  # noqa: E402
from tofu_jax import schedule as S  # noqa: E402
from tofu_jax import train  # noqa: E402
from tofu_jax.data.batching import batches  # noqa: E402
from tofu_jax.emulate import Emulator  # noqa: E402
from tofu_jax.evaluate import accuracy, predict_fn  # noqa: E402
from tofu_jax.models.vit import ViT, ViTConfig, make_apply  # noqa: E402
from tofu_jax.profiler import profile_model  # noqa: E402
from tofu_jax.train import OptimConfig, make_optimizer, make_train_step  # noqa: E402

CFG = ViTConfig(
    image_size=16, patch_size=4, channels=1, num_classes=4, width=16, depth=2, mlp_dim=32, num_heads=2
)
MERGE = S.from_list(["prune", "merge_mlerp"], [3, 3])
EVALS = {"none": (None, 8), "merge": (MERGE, 6)}  # 13 examples: 8 + 5, and 6 + 6 + 1
TRAIN_SCHEDULE = S.from_list(["none", "merge_mlerp"], [0, 3])  # cheaper to compile than MERGE
OPTIM = OptimConfig(learning_rate=1e-3, warmup_steps=1, total_steps=8)
CKPT_STEP, STEPS, TRAIN_BATCH = 2, 4, 8
MIN_SIZE = 0  # shard even this tiny model's kernels under FSDP


def data():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (13, 16, 16, 1)).astype(np.float32)
    y = rng.integers(0, CFG.num_classes, 13).astype(np.int32)
    tx = rng.uniform(-1, 1, (STEPS, TRAIN_BATCH, 16, 16, 1)).astype(np.float32)
    ty = rng.integers(0, CFG.num_classes, (STEPS, TRAIN_BATCH)).astype(np.int32)
    return x, y, tx, ty


def random_params():
    """Random weights drawn in NumPy from the model's shapes (no compilation)."""
    shapes = jax.eval_shape(lambda: ViT(CFG).init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1))))["params"]
    rng = np.random.default_rng(1)
    return jax.tree_util.tree_map_with_path(
        lambda path, s: (
            jax.tree_util.keystr(path).endswith("['scale']") + rng.normal(0, 0.2, s.shape)
        ).astype(np.float32),
        shapes,
    )


def flat_state(params, opt_state) -> dict:
    flat = {}
    for prefix, tree in (("params", params), ("opt", opt_state)):
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            flat[prefix + jax.tree_util.keystr(path)] = np.asarray(jax.device_get(leaf))
    return flat


def main(args: dict) -> dict:
    t0 = time.perf_counter()
    out: dict = {"devices": jax.device_count(), "timings": {}}
    mesh = par.make_mesh(fsdp=args["fsdp"])
    x, y, train_x, train_y = data()
    params = random_params()
    tx = make_optimizer(OPTIM)
    out["timings"]["setup"] = time.perf_counter() - t0

    # --- sharded evaluation (parameters FSDP-sharded on an fsdp mesh) ---
    t = time.perf_counter()
    placed = par.shard_tree(params, mesh, min_size=MIN_SIZE)
    out["eval"] = {}
    for name, (schedule, bs) in EVALS.items():
        r = accuracy(CFG, placed, batches(x, y, bs), schedule, mesh, return_logits=True)
        out["eval"][name] = {
            "top1": r["top1"],
            "top5": r["top5"],
            "n": r["n"],
            "logits": r["logits"].tolist(),
        }
    if args["role"] == "reference":  # counted in NumPy from the plain program's logits
        schedule, _ = EVALS["merge"]
        top = np.argsort(-np.asarray(make_apply(ViT(CFG))(params, jnp.asarray(x), schedule)), axis=-1)[:, :5]
        out["reference_eval"] = {
            "top1": float(np.mean(top[:, 0] == y)),
            "top5": float(np.mean((top == y[:, None]).any(-1))),
            "n": len(y),
        }
    out["predict"] = np.asarray(predict_fn(CFG, mesh)(placed, x[:5], MERGE)).tolist()  # 5 rows: padded
    out["timings"]["eval"] = time.perf_counter() - t

    # --- calibration passes on the default mesh (every device): profiler and emulator ---
    t = time.perf_counter()
    calib = x[:8]  # 8 rows: split over 1, 2 and 8 devices alike
    profile = profile_model(CFG, params, calib, r_profile=2)
    out["profile"] = [b.L_mlp_matched for b in profile.blocks]
    out["emulated"] = Emulator(ViT(CFG), params, calib).logits(MERGE).tolist()
    out["timings"]["calibration"] = time.perf_counter() - t

    # --- fine-tuning with a static merging schedule; checkpoint across device counts ---
    t = time.perf_counter()
    ckpt = os.path.join(args["dir"], "ckpt")
    if args["role"] == "base":
        p = par.shard_tree(params, mesh, min_size=MIN_SIZE)
        o = train.init_opt_state(tx, p, mesh, min_size=MIN_SIZE)
        first = 0
    else:
        opt_like = jax.eval_shape(tx.init, params)  # abstract: only structure, shapes and dtypes
        p, o, first, meta = train.load_train_state(ckpt, params, opt_like, mesh, min_size=MIN_SIZE)
        out["restored_step"], out["restored_meta"] = first, meta
        saved = np.load(os.path.join(args["dir"], "at_ckpt.npz"))
        out["restore_max_diff"] = max(float(np.abs(saved[k] - v).max()) for k, v in flat_state(p, o).items())
    out["fsdp_sharded_leaves"] = sum(
        any(a is not None for a in leaf.sharding.spec) for leaf in jax.tree.leaves((p, o))
    )
    step = make_train_step(ViT(CFG), tx, mesh, OPTIM.label_smoothing)
    losses = []
    for i in range(first, STEPS):
        images, labels, _ = par.shard_batch(train_x[i], train_y[i], None, mesh)
        p, o, metrics = step(p, o, images, labels, jax.random.PRNGKey(i), TRAIN_SCHEDULE)
        losses.append(float(metrics["loss"]))
        if args["role"] == "base" and i + 1 == CKPT_STEP:
            train.save_train_state(ckpt, p, o, CKPT_STEP, {"devices": jax.device_count()})
            np.savez(os.path.join(args["dir"], "at_ckpt.npz"), **flat_state(p, o))
    out["losses"] = losses
    np.savez(os.path.join(args["dir"], f"final_{jax.device_count()}.npz"), **flat_state(p, o))
    out["timings"]["train"] = time.perf_counter() - t
    out["timings"]["total"] = time.perf_counter() - t0
    return out


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(json.loads(sys.argv[1]))))
