"""Gradient saliency of tokens on calibration data: does the in-graph importance score deserve trust?

Importance-guided ops (``prune_importance``, ``merge_importance_mlerp``, ``merge_importance_avg``)
rank tokens inside the compiled model by a cheap proxy: the attention the CLS query pays to each token
(or the key norm in models without a CLS token). A proxy is only as good as its agreement with what
actually moves the prediction. This module measures that once, offline, on calibration images (from the
training split): with the *unreduced* model it takes, at every block, the tokens at the point where the
block would reduce (after the attention residual, before the MLP) and their first-order Taylor
saliency ``|<x, dL/dx>|`` (the loss change if the token were zeroed, to first order), with ``L`` the
cross-entropy against the labels (or, without labels, against the model's own prediction).

Per block it reports

* ``agreement``: Spearman rank correlation, per image over the non-protected tokens, between the
  in-graph score and the gradient saliency, averaged over images. High: the tokens the proxy calls
  unimportant really are, so importance-guided selection (drop or fuse the least important tokens) is
  trustworthy there. Low: prefer redundancy-based selection (bipartite matching of similar tokens).
  :func:`importance_ops` turns a planner's per-block op list into that choice.
* ``prior``: mean saliency per token position, scaled so the patch positions average 1: a per-position
  prior (centre vs border of the image) for inspection or as a static importance score.
* ``mass``: mean total saliency per image (how much the loss depends on this block's tokens).

A block whose saliency is constant over the patch tokens (the last block of a CLS-token classifier:
its MLP is per-token, so only the CLS token reaches the head) has no defined rank correlation; its
``agreement`` is NaN (``null`` in JSON) and :func:`importance_ops` leaves its op unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tofu_jax.errors import UserError
from tofu_jax.models.vit import MultiHeadDotProductAttention, ViT, ViTConfig
from tofu_jax.scoring import gradient_saliency, key_norm

# Redundancy op -> its importance-guided counterpart.
IMPORTANCE_VARIANT = {
    "prune": "prune_importance",
    "merge_avg": "merge_importance_avg",
    "merge_mlerp": "merge_importance_mlerp",
}


@dataclasses.dataclass(frozen=True)
class BlockSaliency:
    block: int
    agreement: float  # mean Spearman(in-graph score, gradient saliency); NaN where undefined
    mass: float  # mean total saliency per image
    prior: tuple[float, ...]  # mean saliency per token position, patch positions averaging 1


@dataclasses.dataclass(frozen=True)
class SaliencyProfile:
    score: str  # "cls_attention" or "key_norm": the in-graph score the agreement refers to
    num_images: int
    protected: int
    blocks: tuple[BlockSaliency, ...]

    def agreement(self) -> np.ndarray:
        return np.array([b.agreement for b in self.blocks], np.float64)

    def to_dict(self) -> dict:
        def clean(v):
            return None if isinstance(v, float) and math.isnan(v) else v

        return {
            "score": self.score,
            "num_images": self.num_images,
            "protected": self.protected,
            "blocks": [
                {"block": b.block, "agreement": clean(b.agreement), "mass": b.mass, "prior": list(b.prior)}
                for b in self.blocks
            ],
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> SaliencyProfile:
        try:
            return cls._parse(json.loads(Path(path).read_text()))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
            raise UserError(
                f"{path} is not a saliency profile written by save(): {type(e).__name__}: {e}"
            ) from None

    @classmethod
    def _parse(cls, d: dict) -> SaliencyProfile:
        blocks = tuple(
            BlockSaliency(
                b["block"],
                float("nan") if b["agreement"] is None else float(b["agreement"]),
                float(b["mass"]),
                tuple(float(v) for v in b["prior"]),
            )
            for b in d["blocks"]
        )
        return cls(d["score"], int(d["num_images"]), int(d["protected"]), blocks)


def _block_index(module: nn.Module) -> int:
    return int(module.path[-2].rsplit("_", 1)[-1])  # ('Transformer', 'encoderblock_i', 'Multi...')


def make_saliency_fn(config: ViTConfig):
    """Jitted ``(params, images, labels, use_labels) -> (saliency [D, B, N], score [D, B, N])``.

    ``labels`` is ignored (the model's own argmax is the target) when ``use_labels`` is False.
    """
    model = ViT(config)
    depth, n = config.depth, config.num_tokens

    def loss(perturb, params, images, labels, use_labels):
        scores = {}

        def intercept(next_fun, args, kwargs, ctx):
            if not (isinstance(ctx.module, MultiHeadDotProductAttention) and ctx.method_name == "__call__"):
                return next_fun(*args, **kwargs)
            i = _block_index(ctx.module)
            out, keys, cls_attn = next_fun(*args, **dict(kwargs, need_cls_attn=config.cls_token))
            scores[i] = cls_attn if cls_attn is not None else key_norm(keys)
            # y + eps enters the residual x + y unchanged: d loss / d eps = d loss / d (attention output).
            return out + perturb[i].astype(out.dtype), keys, cls_attn

        with nn.intercept_methods(intercept):
            logits, state = model.apply({"params": params}, images, mutable=["intermediates"])
        inter = state["intermediates"]["Transformer"]
        tokens = [inter[f"encoderblock_{i}"]["attn_out"][0] for i in range(depth)]
        target = jnp.where(use_labels, labels, jnp.argmax(jax.lax.stop_gradient(logits), axis=-1))
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, target).sum()
        return ce, (tokens, [scores[i] for i in range(depth)])

    @jax.jit
    def fn(params, images, labels, use_labels):
        perturb = [jnp.zeros((images.shape[0], n, config.width), jnp.float32) for _ in range(depth)]
        grads, (tokens, scores) = jax.grad(loss, has_aux=True)(perturb, params, images, labels, use_labels)
        sal = jnp.stack([gradient_saliency(t, g) for t, g in zip(tokens, grads, strict=True)])
        return sal, jnp.stack(scores).astype(jnp.float32)

    return fn


def _spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row Spearman correlation of ``[M, K]`` arrays (ordinal ranks); NaN where a row is constant."""
    ra = np.argsort(np.argsort(a, axis=-1, kind="stable"), axis=-1).astype(np.float64)
    rb = np.argsort(np.argsort(b, axis=-1, kind="stable"), axis=-1).astype(np.float64)
    ra -= ra.mean(-1, keepdims=True)
    rb -= rb.mean(-1, keepdims=True)
    const = (np.ptp(a, axis=-1) <= 1e-12 * np.abs(a).max(axis=-1, initial=1e-30)) | (np.ptp(b, axis=-1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (ra * rb).sum(-1) / np.sqrt((ra**2).sum(-1) * (rb**2).sum(-1))
    return np.where(const, np.nan, rho)


def saliency_profile(
    config: ViTConfig,
    params,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    batch_size: int = 64,
) -> SaliencyProfile:
    """Per-block gradient saliency and its agreement with the in-graph importance score.

    Args:
      images: ``[M, H, W, C]`` float32 calibration images in model range (training split).
      labels: ``[M]`` int class labels, or None to use the model's own predictions as targets.
      batch_size: images per jitted call (the last batch is padded; one compilation).
    """
    images = np.asarray(images, np.float32)
    m = len(images)
    if m == 0:
        raise UserError("saliency_profile needs at least one calibration image")
    use_labels = labels is not None
    labels = np.zeros(m, np.int32) if labels is None else np.asarray(labels, np.int32)
    if labels.shape != (m,):
        raise UserError(f"labels must have shape ({m},), got {labels.shape}")
    fn = make_saliency_fn(config)
    bs = min(batch_size, m)
    sal_parts, score_parts = [], []
    for start in range(0, m, bs):
        xb, yb = images[start : start + bs], labels[start : start + bs]
        valid = len(xb)
        if valid < bs:  # pad to the compiled batch
            xb = np.concatenate([xb, np.repeat(xb[-1:], bs - valid, axis=0)])
            yb = np.concatenate([yb, np.repeat(yb[-1:], bs - valid)])
        sal, score = fn(params, jnp.asarray(xb), jnp.asarray(yb), jnp.asarray(use_labels))
        sal_parts.append(np.asarray(sal)[:, :valid])
        score_parts.append(np.asarray(score)[:, :valid])
    sal, score = np.concatenate(sal_parts, axis=1), np.concatenate(score_parts, axis=1)  # [D, M, N]
    p = config.num_prefix
    blocks = []
    for i in range(config.depth):
        s, sc = sal[i].astype(np.float64), score[i].astype(np.float64)
        rho = _spearman_rows(s[:, p:], sc[:, p:])
        agreement = float(np.nanmean(rho)) if np.any(~np.isnan(rho)) else float("nan")
        prior = s.mean(axis=0)
        scale = prior[p:].mean()
        prior = prior / scale if scale > 0 else prior
        blocks.append(BlockSaliency(i, agreement, float(s.sum(-1).mean()), tuple(float(v) for v in prior)))
    return SaliencyProfile(
        "cls_attention" if config.cls_token else "key_norm", m, config.num_prefix, tuple(blocks)
    )


def importance_ops(ops: Sequence[str], profile: SaliencyProfile, min_agreement: float = 0.3) -> list[str]:
    """Swap in importance-guided selection where the in-graph score agrees with gradient saliency.

    ``ops`` is a per-block list (e.g. from :func:`tofu_jax.planner.choose_ops`); each ``prune`` /
    ``merge_avg`` / ``merge_mlerp`` in a block with ``agreement >= min_agreement`` becomes
    ``prune_importance`` / ``merge_importance_avg`` / ``merge_importance_mlerp``; other blocks (and
    blocks with undefined agreement) keep redundancy-based bipartite matching.
    """
    if len(ops) != len(profile.blocks):
        raise UserError(f"got {len(ops)} ops for a profile of {len(profile.blocks)} blocks")
    agree = profile.agreement()
    return [
        IMPORTANCE_VARIANT.get(op, op) if not np.isnan(a) and a >= min_agreement else op
        for op, a in zip(ops, agree, strict=True)
    ]
