"""Per-block linearity profile of a ViT on calibration images (docs/algorithms.md §6).

For every block the unreduced model is run once; at the point where a schedule would reduce
(after the attention residual) we take the token pairs bipartite matching would merge and, as a
control, random pairs, and measure the linearity ``L`` of

* ``mlp``: the MLP branch ``f(x) = MLP(LayerNorm_2(x))``;
* ``block``: the residual MLP sub-layer ``g(x) = x + f(x)``, i.e. the rest of the block a merged
  token passes through (token-wise; attention mixes tokens and has no per-token form).

Token similarity and norm statistics are recorded beside it; the planner turns the profile into a
schedule. Profiles are versioned JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from tofu_jax import parallel
from tofu_jax.errors import UserError
from tofu_jax.evaluate import check_images
from tofu_jax.linearity import DEFAULT_ALPHAS, interpolation_errors
from tofu_jax.matching import bipartite_soft_matching, gather_tokens, max_reduction, split_ab
from tofu_jax.models.vit import MlpBranch, ViT, ViTConfig

PROFILE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class BlockProfile:
    block: int
    L_mlp_matched: float
    L_mlp_random: float
    L_block_matched: float
    L_block_random: float
    cos_matched: float  # mean cosine of matched pairs' residual tokens
    cos_random: float
    norm_mean: float  # mean token norm (non-prefix tokens)
    norm_cv: float  # coefficient of variation of token norms
    avg_norm_ratio: float  # ||(x1+x2)/2|| / mean(||x1||, ||x2||) on matched pairs (1 = no shrink)


PROFILE_METRICS = tuple(f.name for f in dataclasses.fields(BlockProfile) if f.name != "block")


@dataclasses.dataclass(frozen=True)
class Profile:
    config: dict
    num_images: int
    r_profile: int
    alphas: tuple[float, ...]
    blocks: tuple[BlockProfile, ...]

    def metric(self, name: str = "L_mlp_matched") -> np.ndarray:
        return np.array([getattr(b, name) for b in self.blocks])

    def to_dict(self) -> dict:
        return {
            "version": PROFILE_VERSION,
            "config": self.config,
            "num_images": self.num_images,
            "r_profile": self.r_profile,
            "alphas": list(self.alphas),
            "blocks": [dataclasses.asdict(b) for b in self.blocks],
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        """Read a profile JSON written by :meth:`save`; any malformed field is a :class:`UserError`."""
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read profile {path}: {e}") from None
        if not isinstance(d, dict) or type(d.get("version")) is not int or d["version"] != PROFILE_VERSION:
            version = d.get("version") if isinstance(d, dict) else None
            raise UserError(f"{path} is not a profile (version {version!r}, expected {PROFILE_VERSION})")
        names = [f.name for f in dataclasses.fields(BlockProfile)]
        blocks = d.get("blocks")
        if not isinstance(blocks, list) or not blocks:
            raise UserError(f"profile {path}: 'blocks' must be a non-empty list")
        parsed = []
        for i, b in enumerate(blocks):
            if not isinstance(b, dict) or sorted(b) != sorted(names):
                raise UserError(f"profile {path}: block {i} must be an object with fields {', '.join(names)}")
            bad = [k for k in names if not _finite_number(b[k])]
            if bad:
                raise UserError(f"profile {path}: block {i} has non-numeric or non-finite {', '.join(bad)}")
            parsed.append(BlockProfile(**b))
        for key, kind in (("config", dict), ("num_images", int), ("r_profile", int), ("alphas", list)):
            if not isinstance(d.get(key), kind) or isinstance(d.get(key), bool):
                raise UserError(f"profile {path}: field {key!r} must be a {kind.__name__}")
        if not all(_finite_number(a) for a in d["alphas"]):
            raise UserError(f"profile {path}: 'alphas' must be a list of numbers")
        return cls(
            config=d["config"],
            num_images=d["num_images"],
            r_profile=d["r_profile"],
            alphas=tuple(d["alphas"]),
            blocks=tuple(parsed),
        )

    def check_depth(self, depth: int) -> None:
        """Raise :class:`UserError` unless the profile has one entry per block of a ``depth``-block model."""
        if len(self.blocks) != depth:
            raise UserError(f"the profile has {len(self.blocks)} blocks but the model has {depth}")


def _finite_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _pairs(x, metric, r, protected, rng):
    """Matched pairs ``(x_src, x_dst)`` and random pairs, both ``[P, D]``."""
    m = bipartite_soft_matching(metric, r, protected=protected)
    xa, xb = split_ab(x)
    x1 = gather_tokens(xa, m.src_idx).reshape(-1, x.shape[-1])
    x2 = gather_tokens(xb, m.dst_idx).reshape(-1, x.shape[-1])
    b, n, _ = x.shape
    i = rng.integers(protected, n, size=(b, r))
    j = rng.integers(protected, n, size=(b, r))
    rows = np.arange(b)[:, None]
    xr = np.asarray(x)
    return (
        x1,
        x2,
        jnp.asarray(xr[rows, i].reshape(-1, x.shape[-1])),
        jnp.asarray(xr[rows, j].reshape(-1, x.shape[-1])),
    )


def profile_model(
    config: ViTConfig,
    params,
    images: np.ndarray,
    *,
    r_profile: int | None = None,
    batch_size: int = 64,
    alphas=DEFAULT_ALPHAS,
    seed: int = 0,
) -> Profile:
    """Measure every block's linearity on ``images [B, H, W, C]`` (calibration split, in [-1, 1]).

    Args:
      r_profile: matched pairs per image per block; default ``N // 8`` (the scale of typical r).
    """
    if len(images) == 0:
        raise UserError("profiling needs at least one calibration image")
    check_images(images, "calibration images")
    n, protected = config.num_tokens, config.num_prefix
    r_profile = r_profile if r_profile is not None else max(1, n // 8)
    if not 1 <= r_profile <= max_reduction(n, protected):
        raise UserError(f"r_profile={r_profile} out of range 1..{max_reduction(n, protected)}")
    model = ViT(config)
    branch = MlpBranch(config)
    mesh = parallel.default_mesh()
    params = parallel.on_mesh(params, mesh)

    @jax.jit
    def collect(p, x):
        _, state = model.apply({"params": p}, x, mutable=["intermediates"])
        t = state["intermediates"]["Transformer"]
        return [
            (t[f"encoderblock_{i}"]["attn_out"][0], t[f"encoderblock_{i}"]["metric"][0])
            for i in range(config.depth)
        ]

    @jax.jit
    def errors(bp, x1, x2):
        f = lambda x: branch.apply({"params": bp}, x)
        g = lambda x: x + f(x)
        return interpolation_errors(f, x1, x2, alphas), interpolation_errors(g, x1, x2, alphas)

    rng = np.random.default_rng(seed)
    acc = [dict() for _ in range(config.depth)]

    def add(d, key, value, weight=1.0):
        s, w = d.get(key, (0.0, 0.0))
        d[key] = (s + float(value) * weight, w + weight)

    for start in range(0, len(images), batch_size):
        x = parallel.place_batch(images[start : start + batch_size], mesh)
        per_block = collect(params, x)
        for i, (tokens, metric) in enumerate(per_block):
            bp = params["Transformer"][f"encoderblock_{i}"]
            bp = {"LayerNorm_2": bp["LayerNorm_2"], "MlpBlock_3": bp["MlpBlock_3"]}
            x1, x2, y1, y2 = _pairs(tokens, metric, r_profile, protected, rng)
            (em, sm), (eb, sb) = errors(bp, x1, x2)
            (emr, smr), (ebr, sbr) = errors(bp, y1, y2)
            w = float(x1.shape[0])
            d = acc[i]
            # Ratios of expectations: accumulate numerators and denominators separately.
            add(d, "mlp_err", jnp.mean(em), w), add(d, "mlp_spread", sm, w)
            add(d, "blk_err", jnp.mean(eb), w), add(d, "blk_spread", sb, w)
            add(d, "mlp_err_r", jnp.mean(emr), w), add(d, "mlp_spread_r", smr, w)
            add(d, "blk_err_r", jnp.mean(ebr), w), add(d, "blk_spread_r", sbr, w)
            cos = lambda a, b: jnp.mean(
                jnp.sum(a * b, -1)
                / jnp.maximum(jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1), 1e-6)
            )
            add(d, "cos_m", cos(x1, x2), w), add(d, "cos_r", cos(y1, y2), w)
            norms = jnp.linalg.norm(tokens[:, protected:].astype(jnp.float32), axis=-1)
            add(d, "norm_mean", jnp.mean(norms), w), add(d, "norm_cv", jnp.std(norms) / jnp.mean(norms), w)
            mid = jnp.linalg.norm((x1 + x2) / 2, axis=-1)
            base = (jnp.linalg.norm(x1, axis=-1) + jnp.linalg.norm(x2, axis=-1)) / 2
            add(d, "shrink", jnp.mean(mid / jnp.maximum(base, 1e-6)), w)

    mean = lambda d, k: d[k][0] / d[k][1]
    blocks = tuple(
        BlockProfile(
            block=i,
            L_mlp_matched=mean(d, "mlp_err") / max(mean(d, "mlp_spread"), 1e-12),
            L_mlp_random=mean(d, "mlp_err_r") / max(mean(d, "mlp_spread_r"), 1e-12),
            L_block_matched=mean(d, "blk_err") / max(mean(d, "blk_spread"), 1e-12),
            L_block_random=mean(d, "blk_err_r") / max(mean(d, "blk_spread_r"), 1e-12),
            cos_matched=mean(d, "cos_m"),
            cos_random=mean(d, "cos_r"),
            norm_mean=mean(d, "norm_mean"),
            norm_cv=mean(d, "norm_cv"),
            avg_norm_ratio=mean(d, "shrink"),
        )
        for i, d in enumerate(acc)
    )
    return Profile(config.to_dict(), int(len(images)), int(r_profile), tuple(alphas), blocks)
