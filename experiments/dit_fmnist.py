"""ToFu in a diffusion transformer: train a small class-conditional DiT on Fashion-MNIST, then sample
with the same noise under none / merge_avg / merge_mlerp / prune (equal FLOPs) and compare.

Token reduction follows ToMe for Stable Diffusion (see :mod:`tofu_jax.models.dit`): in every block the
MLP input is merged (or pruned) to ``N - r`` tokens and the MLP output unmerged back to ``N``.
All reduced methods share one ``r`` per block, hence the same FLOPs. A further baseline spends the
same FLOPs differently: the unreduced model with proportionally fewer sampling steps.

Reported per method (written to ``<out>.json`` and ``<out>.png``):
  (a) fidelity to the unreduced samples drawn from identical noise (MSE, PSNR; images in [-1, 1]),
  (b) a Frechet distance (FID-style) between generated and real test images, on the ``pre_logits``
      features of the bundled Fashion-MNIST ViT classifier (skipped with a message when it is
      missing), plus that classifier's accuracy on the generated images' conditioning labels,
  (c) sampling speed (images/s at ``--bench-batch``; all methods compiled and warmed up, then timed
      interleaved, median of ``--bench-runs`` rounds, so the ratios come from one run).

Resumable: training checkpoints to ``<workdir>/state/`` (Orbax) every ``--ckpt-every`` steps and resumes
from it; the EMA weights go to ``<workdir>/dit_ema.npz`` (Google-style flat npz); generated samples
are cached per method in ``<workdir>/samples/``. Re-running with more ``--train-steps`` continues
training (and invalidates the sample cache).

    python experiments/dit_fmnist.py --workdir /tmp/dit_fmnist                 # full run
    python experiments/dit_fmnist.py --workdir /tmp/dit_smoke --out /tmp/dit_smoke/res \\
        --train-steps 5 --width 32 --depth 2 --patch-size 4 --num-samples 16 --sample-steps 4
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.common import RESULTS, environment, write_json  # noqa: E402
from tofu_jax import schedule as S  # noqa: E402
from tofu_jax.checkpoints import google  # noqa: E402
from tofu_jax.checkpoints.common import CheckpointError, flatten, npz_load, unflatten  # noqa: E402
from tofu_jax.data import idx  # noqa: E402
from tofu_jax.data.transforms import resize_nearest_area, to_model_range  # noqa: E402
from tofu_jax.models import dit as D  # noqa: E402
from tofu_jax.train import OptimConfig, load_train_state, make_optimizer, save_train_state  # noqa: E402

OPS = ("none", "merge_avg", "merge_mlerp", "prune")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default="/tmp/dit_fmnist", help="checkpoints and sample cache")
    p.add_argument("--out", help=f"output stem (default {RESULTS / 'dit_fmnist'})")
    p.add_argument("--data-dir", help="Fashion-MNIST IDX directory (default: tofu_jax.data.idx)")
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("model")
    g.add_argument("--patch-size", type=int, default=2)
    g.add_argument("--width", type=int, default=128)
    g.add_argument("--depth", type=int, default=6)
    g.add_argument("--heads", type=int, default=4)
    g.add_argument("--mlp-ratio", type=float, default=4.0)
    g = p.add_argument_group("training")
    g.add_argument("--train-steps", type=int, default=20000, help="total steps (resumes up to this)")
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--lr", type=float, default=3e-4)
    g.add_argument("--warmup", type=int, default=500)
    g.add_argument("--ema", type=float, default=0.999)
    g.add_argument(
        "--class-dropout", type=float, default=0.1, help="label dropout (classifier-free guidance)"
    )
    g.add_argument("--ckpt-every", type=int, default=1000)
    g.add_argument("--train-only", action="store_true", help="stop after training (no sampling/eval)")
    g.add_argument("--log-every", type=int, default=100)
    g = p.add_argument_group("sampling")
    g.add_argument("--num-samples", type=int, default=1000)
    g.add_argument("--sample-batch", type=int, default=250)
    g.add_argument("--sample-steps", type=int, default=50)
    g.add_argument("--eta", type=float, default=0.0, help="0: DDIM (deterministic), 1: DDPM-like")
    g.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale")
    g.add_argument(
        "--r", type=int, nargs="+",
        help="tokens removed per block, one run per value and op (default: a quarter of the tokens)",
    )  # fmt: skip
    g.add_argument(
        "--deviation-timesteps", type=int, nargs="+", default=[100, 400, 700, 900],
        help="timesteps at which the one-step denoiser deviation from the unreduced model is measured",
    )  # fmt: skip
    g.add_argument("--ops", default=",".join(OPS), help="comma-separated reduction ops")
    g.add_argument("--mlerp-norm", default="max", choices=("max", "weighted_mean"))
    g.add_argument("--no-equal-flops-steps", action="store_true", help="skip the fewer-steps baseline")
    g.add_argument("--bench-runs", type=int, default=5)
    g.add_argument("--bench-batch", type=int, default=64, help="batch of the interleaved speed runs")
    g = p.add_argument_group("evaluation")
    g.add_argument("--classifier-checkpoint", help="feature ViT .npz (default: bundled fmnist_vit.npz)")
    g.add_argument("--classifier-model", help="its config / card JSON (default: bundled card)")
    g.add_argument("--real-images", type=int, default=10000, help="test images for the real statistics")
    return p.parse_args(argv)


def dit_config(args) -> D.DiTConfig:
    return D.DiTConfig(
        image_size=28,
        patch_size=args.patch_size,
        channels=1,
        width=args.width,
        depth=args.depth,
        num_heads=args.heads,
        mlp_ratio=args.mlp_ratio,
        num_classes=10,
    )


def load_images(split: str, data_dir) -> tuple[np.ndarray, np.ndarray]:
    images, labels = idx.load_split(split, data_dir)
    return to_model_range(images), labels


# --- training ------------------------------------------------------------------------------------
def train(args, config: D.DiTConfig, workdir: Path) -> tuple[dict, dict]:
    """Train (or resume) to ``--train-steps``; returns ``(ema_params, summary)``."""
    model, diffusion = D.DiT(config), D.Diffusion()
    state_path, ema_path = workdir / "state", workdir / "dit_ema.npz"
    tx = make_optimizer(
        OptimConfig(
            learning_rate=args.lr, weight_decay=0.0, warmup_steps=args.warmup, total_steps=args.train_steps
        )
    )
    params = D.init_params(config, args.seed)
    opt_state = tx.init(params)
    ema = params
    step, log = 0, []
    meta = {"config": config.to_dict(), "lr": args.lr, "batch_size": args.batch_size}
    if state_path.exists():
        trees, opt_state, step, saved = load_train_state(
            state_path, {"params": params, "ema": ema}, opt_state
        )
        if saved.get("config") != meta["config"]:
            raise SystemExit(
                f"{state_path} holds a different DiT config {saved.get('config')}; use another --workdir"
            )
        params, ema, log = trees["params"], trees["ema"], saved.get("log", [])
        print(f"[train] resumed at step {step}", flush=True)
    if step >= args.train_steps and ema_path.exists():
        return load_ema(ema_path, config), {"steps": step, "log": log, "resumed": True}

    images, labels = load_images("train", args.data_dir)
    null, p_drop, decay = config.num_classes, args.class_dropout, args.ema

    @jax.jit
    def train_step(params, ema, opt_state, x0, y, key, step):
        k_drop, k_loss = jax.random.split(key)
        y = jnp.where(jax.random.bernoulli(k_drop, p_drop, y.shape), null, y)
        loss, grads = jax.value_and_grad(lambda p: D.diffusion_loss(model, p, diffusion, x0, y, k_loss))(
            params
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
        # EMA warm-up: early averages must not be dominated by the random initialisation.
        d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
        ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)
        return params, ema, opt_state, loss

    def checkpoint():
        save_train_state(state_path, {"params": params, "ema": ema}, opt_state, step, {**meta, "log": log})
        google.save_npz(ema_path, ema)

    t0, losses = time.time(), []
    while step < args.train_steps:
        rng = np.random.default_rng([args.seed, step])  # batch depends on the step only: resumable
        sel = rng.integers(0, len(images), args.batch_size)
        key = jax.random.fold_in(jax.random.PRNGKey(args.seed), step)
        params, ema, opt_state, loss = train_step(
            params, ema, opt_state, images[sel], labels[sel], key, jnp.float32(step)
        )
        step += 1
        losses.append(loss)
        if step % args.log_every == 0 or step == args.train_steps:
            mean = float(np.mean(jax.device_get(losses)))
            losses = []
            log.append({"step": step, "loss": mean, "time_s": round(time.time() - t0, 1)})
            print(
                f"[train] step {step}/{args.train_steps} loss {mean:.4f} ({time.time() - t0:.0f}s)",
                flush=True,
            )
        if step % args.ckpt_every == 0 or step == args.train_steps:
            checkpoint()
    return load_ema(ema_path, config), {"steps": step, "log": log, "resumed": False}


def load_ema(path: Path, config: D.DiTConfig) -> dict:
    """Read ``dit_ema.npz`` back (``npz_load``) and check it against the model's parameter shapes."""
    flat = npz_load(path)
    want = flatten(jax.eval_shape(lambda: D.init_params(config)))
    bad = sorted(set(flat) ^ set(want)) + [k for k in flat if k in want and flat[k].shape != want[k].shape]
    if bad:
        raise CheckpointError(f"{path} does not match the DiT config: {bad[:5]}")
    return jax.tree.map(jnp.asarray, unflatten(flat))


# --- sampling ------------------------------------------------------------------------------------
def methods(args, config: D.DiTConfig) -> list[dict]:
    """``none`` first; then every reduced op at every ``r``; then, per distinct FLOPs ratio, the
    unreduced model with proportionally fewer sampling steps (the same FLOPs spent differently)."""
    n = config.num_tokens
    rs = args.r if args.r else [n // 4]
    base_flops = D.dit_flops(config)
    ops = [op.strip() for op in args.ops.split(",")]
    out = []
    if "none" in ops:
        out.append(dict(name="none", op="none", r=0, steps=args.sample_steps, schedule=S.none(config.depth)))
    for r in rs:
        for op in ops:
            if op == "none":
                continue
            sched = S.constant(config.depth, r, op, mlerp_norm=args.mlerp_norm)
            out.append(dict(name=f"{op} r={r}", op=op, r=r, steps=args.sample_steps, schedule=sched))
    for m in out:
        D.validate_schedule(m["schedule"], config)
        m["flops_ratio"] = D.dit_flops(config, m["schedule"]) / base_flops
    if not args.no_equal_flops_steps:
        for ratio in sorted({m["flops_ratio"] for m in out if m["op"] != "none"}, reverse=True):
            steps = max(1, round(args.sample_steps * ratio))
            if steps < args.sample_steps:
                out.append(
                    dict(name=f"none, {steps} steps", op="none", r=0, steps=steps,
                         schedule=S.none(config.depth), flops_ratio=steps / args.sample_steps)
                )  # fmt: skip
    return out


def denoiser_deviations(args, config, params, methods_, x0, y) -> dict[str, dict[str, float]]:
    """Per method and timestep, the relative L2 deviation ``||eps_reduced - eps_none|| / ||eps_none||``
    of one denoiser call on the same noisy test images: the per-step error that sampling accumulates.
    The unreduced reference is computed once per timestep and shared by all methods."""
    model, diffusion = D.DiT(config), D.Diffusion()
    fn = jax.jit(lambda x, t, s: model.apply({"params": params}, x, t, y, s), static_argnums=2)
    out = {m["name"]: {} for m in methods_}
    for t in args.deviation_timesteps:
        tt = jnp.full((len(x0),), t, jnp.int32)
        noise = jax.random.normal(jax.random.PRNGKey(args.seed + 3 + t), x0.shape)
        xt = diffusion.q_sample(jnp.asarray(x0), tt, noise)
        ref = fn(xt, tt, S.none(config.depth))
        for m in methods_:
            got = fn(xt, tt, m["schedule"])
            out[m["name"]][str(t)] = float(jnp.linalg.norm(got - ref) / jnp.linalg.norm(ref))
    return out


def make_run(args, config, params, method):
    sampler = D.make_sampler(
        D.DiT(config), D.Diffusion(), method["steps"], eta=args.eta, cfg_scale=args.cfg_scale
    )
    key = jax.random.PRNGKey(args.seed + 2) if args.eta > 0 else None
    return (lambda x, y, k: sampler(params, x, y, k, schedule=method["schedule"])), key


def generate(args, config, params, method, noise, labels, workdir: Path, train_steps: int) -> np.ndarray:
    """``[num_samples, 28, 28, 1]`` samples of one method, cached in ``<workdir>/samples``."""
    key_text = json.dumps(
        [train_steps, method["name"], method["schedule"].to_dict(), method["steps"], args.eta, args.cfg_scale,
         args.num_samples, args.seed, config.to_dict(), args.sample_batch],
        sort_keys=True,
    )  # fmt: skip
    cache = workdir / "samples" / (hashlib.sha1(key_text.encode()).hexdigest()[:16] + ".npz")
    if cache.exists():
        with np.load(cache, allow_pickle=False) as f:
            print(f"[sample] {method['name']}: cached", flush=True)
            return f["images"]
    run, key = make_run(args, config, params, method)
    bs = min(args.sample_batch, len(noise))
    t0 = time.time()
    chunks = []
    for i in range(0, len(noise), bs):
        k = None if key is None else jax.random.fold_in(key, i)
        x, y = noise[i : i + bs], labels[i : i + bs]
        if len(x) < bs:  # keep one compiled shape: pad the last batch
            pad = bs - len(x)
            x, y = np.concatenate([x, noise[:pad]]), np.concatenate([y, labels[:pad]])
            chunks.append(np.asarray(run(x, y, k))[: bs - pad])
        else:
            chunks.append(np.asarray(run(x, y, k)))
    images = np.concatenate(chunks)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, images=images)
    print(f"[sample] {method['name']}: {len(images)} images in {time.time() - t0:.0f}s", flush=True)
    return images


def time_methods(args, config, params, methods_, noise, labels) -> dict[str, dict]:
    """Sampling speed of every method, measured together: compile and warm up each, then
    ``--bench-runs`` rounds that time every method once (interleaved), median per method."""
    bs = min(args.bench_batch, len(noise))
    x, y = noise[:bs], labels[:bs]
    runs, out = {}, {}
    for m in methods_:
        run, key = make_run(args, config, params, m)
        t0 = time.time()
        jax.block_until_ready(run(x, y, key))
        out[m["name"]] = {"compile_s": time.time() - t0}
        jax.block_until_ready(run(x, y, key))  # warm-up
        runs[m["name"]] = (run, key)
    times = {name: [] for name in runs}
    for _ in range(max(args.bench_runs, 1)):
        for name, (run, key) in runs.items():
            t0 = time.time()
            jax.block_until_ready(run(x, y, key))
            times[name].append(time.time() - t0)
    for name, ts in times.items():
        out[name]["images_per_s"] = bs / float(np.median(ts))
        print(f"[speed] {name}: {out[name]['images_per_s']:.1f} images/s", flush=True)
    return out


# --- evaluation ------------------------------------------------------------------------------------
def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets ``[N, F]`` (FID formula)."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    w, v = np.linalg.eigh(s1)
    s1_half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(s1_half @ s2 @ s1_half)
    tr_sqrt = np.sqrt(np.clip(cross, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)


def load_classifier(args):
    """``features(images) -> (pre_logits, logits)`` of the feature ViT, or None (with a message)."""
    from tofu_jax.models.loading import load_model
    from tofu_jax.models.vit import ViT

    try:
        config, params = load_model(args.classifier_checkpoint, args.classifier_model)
    except (FileNotFoundError, CheckpointError, ValueError) as e:
        print(f"[eval] no feature classifier ({e}); skipping the Frechet distance and class accuracy")
        return None
    model = ViT(config)

    @jax.jit
    def feats(x):
        logits, state = model.apply({"params": params}, x, mutable=["intermediates"])
        return state["intermediates"]["pre_logits"][0], logits

    def features(images: np.ndarray, batch: int = 500):
        images = resize_nearest_area(np.asarray(images, np.float32), config.image_size)
        if images.shape[-1] != config.channels:
            images = np.repeat(images, config.channels, axis=-1)
        out_f, out_l = [], []
        for i in range(0, len(images), batch):
            x = images[i : i + batch]
            pad = batch - len(x) if len(images) > batch else 0
            f, lg = feats(np.concatenate([x, images[:pad]]) if pad else x)
            out_f.append(np.asarray(f)[: len(x)])
            out_l.append(np.asarray(lg)[: len(x)])
        return np.concatenate(out_f), np.concatenate(out_l)

    return features


def plot(path: Path, results: list[dict], samples: dict[str, np.ndarray], per_row: int = 10) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(results)
    fig, axes = plt.subplots(rows, 1, figsize=(per_row * 0.9 + 0.5, rows * 1.15 + 0.4), squeeze=False)
    for ax, res in zip(axes[:, 0], results, strict=True):
        imgs = samples[res["name"]][:per_row, ..., 0]
        ax.imshow(np.concatenate(list(imgs), axis=1), cmap="gray", vmin=-1, vmax=1)
        bits = [res["name"], f"FLOPs x{res['flops_ratio']:.2f}"]
        if res.get("psnr_db") is not None and np.isfinite(res["psnr_db"]):
            bits.append(f"PSNR {res['psnr_db']:.1f} dB")
        if res.get("eps_deviation"):
            bits.append(f"eps dev {np.mean(list(res['eps_deviation'].values())):.2f}")
        if res.get("frechet") is not None:
            bits.append(f"FD {res['frechet']:.2f}")
        bits.append(f"{res['images_per_s']:.0f} img/s")
        ax.set_title(" | ".join(bits), fontsize=8, loc="left")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    config = dit_config(args)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else RESULTS / "dit_fmnist"
    print(f"[setup] DiT {config.to_dict()}; {config.num_tokens} tokens; devices {jax.devices()}", flush=True)

    params, train_summary = train(args, config, workdir)
    if args.train_only:
        print(f"[train] done at step {train_summary['steps']} (--train-only)")
        return {"train": train_summary}

    n = args.num_samples
    labels = (np.arange(n) % config.num_classes).astype(np.int32)
    noise = np.asarray(jax.random.normal(jax.random.PRNGKey(args.seed + 1), (n, 28, 28, 1)), np.float32)
    samples, results = {}, []
    dev_x, dev_y = load_images("test", args.data_dir)
    dev_x, dev_y = dev_x[:256], jnp.asarray(dev_y[:256])
    all_methods = methods(args, config)
    for m in all_methods:
        samples[m["name"]] = generate(args, config, params, m, noise, labels, workdir, train_summary["steps"])
    speed = time_methods(args, config, params, all_methods, noise, labels)
    reduced = [m for m in all_methods if m["op"] != "none"]
    deviation = denoiser_deviations(args, config, params, reduced, dev_x, dev_y)
    for m in all_methods:
        res = {k: m[k] for k in ("name", "op", "r", "steps", "flops_ratio")}
        res.update(speed[m["name"]])
        if m["name"] in deviation:
            res["eps_deviation"] = deviation[m["name"]]
        results.append(res)

    ref = samples[results[0]["name"]] if results[0]["op"] == "none" else None
    base_speed = results[0]["images_per_s"]
    for res in results:
        res["speedup"] = res["images_per_s"] / base_speed
        if ref is not None:
            mse = float(np.mean((samples[res["name"]] - ref) ** 2))
            res["mse_vs_unreduced"] = mse
            res["psnr_db"] = float(10 * np.log10(4.0 / mse)) if mse > 0 else float("inf")

    features = load_classifier(args)
    fid_note = None
    if features is not None:
        real_x, _ = load_images("test", args.data_dir)
        real_x = real_x[: args.real_images] if args.real_images else real_x
        real_f, _ = features(real_x)
        train_x, _ = load_images("train", args.data_dir)
        floor_x = train_x[np.random.default_rng(args.seed).permutation(len(train_x))[:n]]
        floor = frechet_distance(features(floor_x)[0], real_f)
        fid_note = f"Frechet distance of {n} real train images to {len(real_x)} test images: {floor:.3f}"
        print(f"[eval] {fid_note}")
        for res in results:
            f, logits = features(samples[res["name"]])
            res["frechet"] = frechet_distance(f, real_f)
            res["class_accuracy"] = float(np.mean(np.argmax(logits, -1) == labels))

    print(
        f"\n{'method':24s} {'FLOPs':>6s} {'eps dev':>8s} {'PSNR dB':>8s} {'FD':>8s} {'acc':>6s} "
        f"{'img/s':>8s} {'speedup':>7s}"
    )
    for res in results:
        psnr = res.get("psnr_db", float("nan"))
        fd, acc = res.get("frechet", float("nan")), res.get("class_accuracy", float("nan"))
        dev = np.mean(list(res["eps_deviation"].values())) if "eps_deviation" in res else 0.0
        print(
            f"{res['name']:24s} {res['flops_ratio']:6.3f} {dev:8.3f} {psnr:8.2f} {fd:8.3f} {acc:6.3f} "
            f"{res['images_per_s']:8.1f} {res['speedup']:7.2f}"
        )

    payload = {
        "config": config.to_dict(),
        "num_tokens": config.num_tokens,
        "gflops_per_forward": D.dit_flops(config) / 1e9,
        "train": {"steps": train_summary["steps"], "batch_size": args.batch_size, "lr": args.lr,
                  "final_loss": train_summary["log"][-1]["loss"] if train_summary["log"] else None},
        "sampling": {"num_samples": n, "steps": args.sample_steps, "eta": args.eta,
                     "bench_batch": args.bench_batch, "bench_runs": args.bench_runs,
                     "cfg_scale": args.cfg_scale, "sample_batch": args.sample_batch,
                     "mlerp_norm": args.mlerp_norm},
        "frechet_note": fid_note or "skipped: no feature classifier",
        "results": results,
        "environment": environment(),
        "command": " ".join(sys.argv),
    }  # fmt: skip
    write_json(out.with_suffix(".json"), payload)
    plot(out.with_suffix(".png"), results, samples)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return payload


if __name__ == "__main__":
    main()
