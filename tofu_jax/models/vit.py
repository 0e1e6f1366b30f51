"""A Linen Vision Transformer with static per-block token reduction (ToMe/ToFu).

Parameter names follow google-research/vision_transformer (``embedding``, ``cls``,
``Transformer/posembed_input/pos_embedding``, ``Transformer/encoderblock_i/{LayerNorm_0,
MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3}``, ``Transformer/encoder_norm``, ``head``),
so AugReg ``.npz`` checkpoints load without renaming. Reduction happens inside each block after the
attention residual and before the MLP (docs/algorithms.md §1), as chosen by a hashable :class:`Schedule`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tofu_jax import reduction
from tofu_jax.attention import ToFuAttention
from tofu_jax.errors import ConfigError, InputError
from tofu_jax.reduction import REDUCTIONS
from tofu_jax.schedule import Schedule
from tofu_jax.schedule import none as no_reduction
from tofu_jax.scoring import key_norm

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


_INPUT_NORMS = ("inception", "imagenet", "clip")  # keys of tofu_jax.data.transforms.INPUT_NORMS
_BOOL_FIELDS = (
    "cls_token", "distilled", "fc_norm", "gelu_approximate", "layer_scale", "norm_pre", "antialias",
)  # fmt: skip
_RESIZE_MODES = ("shorter", "square")  # tofu_jax.data.transforms.RESIZE_MODES
_INTERPOLATIONS = ("bilinear", "bicubic")  # tofu_jax.data.transforms.INTERPOLATIONS
CLASSIFIERS = ("token", "gap", "map")
_POSITIVE_INT_FIELDS = (
    "image_size", "patch_size", "channels", "num_classes", "width", "depth", "mlp_dim", "num_heads",
)  # fmt: skip


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Architecture of a ViT. Hashable, so it can sit in a Linen module field."""

    image_size: int = 224
    patch_size: int = 16
    channels: int = 3
    num_classes: int = 1000
    width: int = 768
    depth: int = 12
    mlp_dim: int = 3072
    num_heads: int = 12
    # "token": CLS readout; "gap": size-weighted mean of the patch tokens; "map": attention pooling of
    # the patch tokens by a learned probe (big_vision's MAPHead, timm's attn_pool), sizes as a log bias
    classifier: str = "token"
    cls_token: bool = True  # only meaningful for "gap"/"map" (MAE keeps a CLS token but pools patches)
    distilled: bool = False  # DeiT distillation token at index 1 (protected like CLS)
    num_registers: int = 0  # register tokens after CLS/distillation (timm reg_token), all protected
    layer_scale: bool = False  # per-channel scales on both residual branches (DeiT III, timm ls1/ls2)
    norm_pre: bool = False  # LayerNorm after the position embedding, before block 0 (CLIP's ln_pre)
    fc_norm: bool = False  # "gap" as in MAE/timm: LayerNorm after pooling instead of before
    representation_size: int | None = None  # Google's optional pre-logits Dense + tanh
    layernorm_eps: float = 1e-6
    gelu_approximate: bool = True  # Google uses tanh GELU; timm/HF use the exact erf form
    dropout_rate: float = 0.0
    dtype: str = "float32"  # compute dtype; parameters stay float32
    # How the data pipeline normalises pixels for this model (a name in data.transforms.INPUT_NORMS);
    # None: unknown (timm weights do not record it), and the CLI asks for --input-norm.
    input_norm: str | None = None
    # How the evaluation pipeline resizes an image for this model (its family's recipe):
    # resize to int(image_size / crop_pct), the shorter side ("shorter", aspect kept: timm) or both
    # sides ("square": Hugging Face, big_vision), then crop the centre image_size x image_size.
    resize: str = "shorter"
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    antialias: bool = True  # PIL-style widened kernel when shrinking; False: tf.image.resize

    def __post_init__(self):
        self._check_types()
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.width % self.num_heads:
            raise ConfigError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.classifier not in CLASSIFIERS:
            raise ConfigError(f"classifier must be one of {', '.join(CLASSIFIERS)}, got {self.classifier!r}")
        if self.classifier == "token" and not self.cls_token:
            raise ConfigError("classifier='token' needs cls_token=True")
        if self.distilled and not self.cls_token:
            raise ConfigError("a distillation token needs a CLS token")
        if self.dtype not in _DTYPES:
            raise ConfigError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")

    def _check_types(self):
        def fail(name, what):
            value = getattr(self, name)
            raise ConfigError(
                f"model config field {name!r} must be {what}, got {value!r} ({type(value).__name__})"
            )

        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in _BOOL_FIELDS and not isinstance(v, bool):
                fail(f.name, "true or false")
            if f.name in _POSITIVE_INT_FIELDS and (not _is_int(v) or v < 1):
                fail(f.name, "a positive integer")
        if not _is_int(self.num_registers) or self.num_registers < 0:
            fail("num_registers", "a non-negative integer")
        if self.representation_size is not None and (
            not _is_int(self.representation_size) or self.representation_size < 1
        ):
            fail("representation_size", "a positive integer or null")
        if not _is_real(self.layernorm_eps) or not 0 < self.layernorm_eps < 1:
            fail("layernorm_eps", "a number in (0, 1)")
        if not _is_real(self.dropout_rate) or not 0 <= self.dropout_rate < 1:
            fail("dropout_rate", "a number in [0, 1)")
        for name in ("classifier", "dtype"):
            if not isinstance(getattr(self, name), str):
                fail(name, "a string")
        if self.resize not in _RESIZE_MODES:
            fail("resize", f"one of {', '.join(_RESIZE_MODES)}")
        if self.interpolation not in _INTERPOLATIONS:
            fail("interpolation", f"one of {', '.join(_INTERPOLATIONS)}")
        if not _is_real(self.crop_pct) or not 0 < self.crop_pct <= 1:
            fail("crop_pct", "a number in (0, 1]")
        if self.input_norm is not None and self.input_norm not in _INPUT_NORMS:
            fail("input_norm", f"null or one of {', '.join(_INPUT_NORMS)}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2

    @property
    def num_prefix(self) -> int:
        """Leading protected tokens: CLS, the distillation token, the register tokens."""
        return int(self.cls_token) + int(self.distilled) + self.num_registers

    @property
    def num_tokens(self) -> int:
        return self.num_patches + self.num_prefix

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    def replace(self, **kw) -> ViTConfig:
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ViTConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"a model config must be a JSON object of fields, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        extra = set(d) - names
        if extra:
            raise ConfigError(f"unknown ViTConfig fields: {sorted(extra)}")
        return cls(**d)


_SIZES = {  # name: (width, depth, mlp_dim, heads)
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "H": (1280, 32, 5120, 16),
}
PRESETS = tuple(f"{s}/{p}" for s in _SIZES for p in (14, 16, 32))


def preset(name: str, **overrides) -> ViTConfig:
    """ViT presets ``Ti|S|B|L|H / 14|16|32``, e.g. ``preset("B/16", num_classes=10)``."""
    try:
        size, patch = name.split("/")
        width, depth, mlp, heads = _SIZES[size]
        patch = int(patch)
        if patch not in (14, 16, 32):
            raise KeyError(patch)
    except (ValueError, KeyError):
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None
    fields = dict(width=width, depth=depth, mlp_dim=mlp, num_heads=heads, patch_size=patch)
    fields.update(overrides)
    return ViTConfig.from_dict(fields)


class MlpBlock(nn.Module):
    """Dense -> GELU -> Dense (Google's ``MlpBlock``)."""

    mlp_dim: int
    gelu_approximate: bool = True
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, deterministic: bool = True):
        """x: ``[..., D]`` -> ``[..., D]``."""
        width = x.shape[-1]
        y = nn.Dense(self.mlp_dim, dtype=self.dtype, name="Dense_0")(x)
        y = nn.gelu(y, approximate=self.gelu_approximate)
        y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
        y = nn.Dense(width, dtype=self.dtype, name="Dense_1")(y)
        return nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)


class MlpBranch(nn.Module):
    """``LayerNorm_2 -> MlpBlock_3`` with a block's own parameter names (for the profiler)."""

    config: ViTConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        dtype = _DTYPES[c.dtype]
        y = nn.LayerNorm(epsilon=c.layernorm_eps, dtype=dtype, name="LayerNorm_2")(x)
        y = MlpBlock(c.mlp_dim, c.gelu_approximate, 0.0, dtype, name="MlpBlock_3")(y)
        return LayerScale(name="ls2")(y) if c.layer_scale else y


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch (DeiT III): ``x [..., D] * scale [D]``."""

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.constant(1e-5), (x.shape[-1],))
        return x * scale.astype(x.dtype)


class Encoder1DBlock(nn.Module):
    """Pre-LN block: attention, then token reduction, then MLP."""

    config: ViTConfig
    reduction_op: str = "none"
    r: int = 0
    prop_attn: bool = True
    mlerp_norm: str = "max"
    metric: str = "keys"

    @nn.compact
    def __call__(self, x, size, sources, *, deterministic: bool = True, runtime=None):
        """x: ``[B, N, D]``, size: ``[B, N, 1]``, sources: ``[B, N, N0]`` or None.

        ``runtime=(n, op, r)`` (int32 scalars) replaces the static op and ``r`` by the fixed-shape
        variant of the op (:func:`tofu_jax.reduction.apply_masked`: live tokens first, dead ones of size 0).
        Returns ``(x, size, sources)`` with ``N - r`` tokens (``N`` under ``runtime``).
        """
        c = self.config
        dtype = _DTYPES[c.dtype]
        y = nn.LayerNorm(epsilon=c.layernorm_eps, dtype=dtype, name="LayerNorm_0")(x)
        attn_size = size if self.prop_attn else None
        if runtime is not None and not self.prop_attn:
            attn_size = (size > 0).astype(jnp.float32)  # bias 0 for live tokens, -inf for dead ones
        uses_scores = runtime is not None or REDUCTIONS[self.reduction_op].uses_scores
        want_cls = uses_scores and c.cls_token
        y, _, keys, *cls = ToFuAttention(c.num_heads, dtype, name="MultiHeadDotProductAttention_1")(
            y, attn_size, return_keys=True, return_cls_attention=want_cls
        )
        cls_attn = cls[0] if want_cls else None
        y = nn.Dropout(c.dropout_rate)(y, deterministic=deterministic)
        if c.layer_scale:
            y = LayerScale(name="ls1")(y)
        x = x + y
        metric = keys.mean(axis=2) if self.metric == "keys" else x
        self.sow("intermediates", "attn_out", x)
        self.sow("intermediates", "metric", metric)
        scores = (cls_attn if cls_attn is not None else key_norm(keys)) if uses_scores else None
        if runtime is not None:
            x, size = reduction.apply_masked(
                x, size, *runtime, metric, scores, protected=c.num_prefix, mlerp_norm=self.mlerp_norm
            )
        else:
            inputs = reduction.Inputs(metric, scores, c.num_prefix, self.mlerp_norm, sources)
            x, size, sources, _ = reduction.apply(self.reduction_op, x, size, self.r, inputs)
        self.sow("intermediates", "size", size)
        if sources is not None:
            self.sow("intermediates", "sources", sources)
        y = nn.LayerNorm(epsilon=c.layernorm_eps, dtype=dtype, name="LayerNorm_2")(x)
        y = MlpBlock(c.mlp_dim, c.gelu_approximate, c.dropout_rate, dtype, name="MlpBlock_3")(
            y, deterministic=deterministic
        )
        if c.layer_scale:
            y = LayerScale(name="ls2")(y)
        self.sow("intermediates", "mlp_in", x)
        self.sow("intermediates", "mlp_out", y)
        return x + y, size, sources


class Encoder(nn.Module):
    """Position embedding + blocks + final norm (Google's ``Transformer``)."""

    config: ViTConfig
    schedule: Schedule

    @nn.compact
    def __call__(self, x, *, deterministic: bool = True, track_sources: bool = False):
        c = self.config
        x = AddPositionEmbs(name="posembed_input")(x)
        x = nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)
        if c.norm_pre:
            x = nn.LayerNorm(epsilon=c.layernorm_eps, dtype=_DTYPES[c.dtype], name="norm_pre")(x)
        batch, n = x.shape[:2]
        size = jnp.ones((batch, n, 1), jnp.float32)
        sources = jnp.broadcast_to(jnp.eye(n, dtype=jnp.float32), (batch, n, n)) if track_sources else None
        for i, b in enumerate(self.schedule.blocks):
            x, size, sources = Encoder1DBlock(
                c,
                b.op,
                b.r,
                self.schedule.prop_attn,
                self.schedule.mlerp_norm,
                self.schedule.metric,
                name=f"encoderblock_{i}",
            )(x, size, sources, deterministic=deterministic)
        if not c.fc_norm:
            x = nn.LayerNorm(epsilon=c.layernorm_eps, dtype=_DTYPES[c.dtype], name="encoder_norm")(x)
        return x, size, sources


class AddPositionEmbs(nn.Module):
    """Learned position embedding ``pos_embedding [1, N, D]`` (prefix rows included)."""

    @nn.compact
    def __call__(self, x):
        """x: ``[B, N, D]`` -> ``[B, N, D]``."""
        pos = self.param("pos_embedding", nn.initializers.normal(stddev=0.02), (1,) + x.shape[1:])
        return x + pos.astype(x.dtype)


class ViT(nn.Module):
    """Vision Transformer with an optional static token-reduction schedule.

    Call as ``model.apply(params, images, schedule)``; ``images: [B, H, W, C]`` in [-1, 1] ->
    ``logits [B, num_classes]``. Collect per-block intermediates with ``mutable=["intermediates"]``.
    """

    config: ViTConfig

    def setup_check(self, images, schedule):
        c = self.config
        if images.ndim != 4 or images.shape[1:] != (c.image_size, c.image_size, c.channels):
            raise InputError(
                f"images must have shape [B, {c.image_size}, {c.image_size}, {c.channels}] for this "
                f"model, got {tuple(images.shape)}"
            )
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise InputError(
                f"images must be floating point, already normalised (e.g. [-1, 1]), got {images.dtype}; "
                "for 0..255 pixels use images / 127.5 - 1"
            )
        schedule.validate(c.depth, c.num_tokens, c.num_prefix)

    @nn.compact
    def __call__(
        self,
        images,
        schedule: Schedule | None = None,
        *,
        train: bool = False,
        track_sources: bool = False,
    ):
        c = self.config
        schedule = schedule if schedule is not None else no_reduction(c.depth)
        self.setup_check(images, schedule)
        dtype = _DTYPES[c.dtype]
        x = nn.Conv(
            c.width,
            (c.patch_size, c.patch_size),
            strides=(c.patch_size, c.patch_size),
            padding="VALID",
            dtype=dtype,
            name="embedding",
        )(images.astype(dtype))
        x = x.reshape(x.shape[0], -1, c.width)
        prefix = []
        if c.cls_token:
            prefix.append(self.param("cls", nn.initializers.zeros, (1, 1, c.width)))
        if c.distilled:
            prefix.append(self.param("dist", nn.initializers.zeros, (1, 1, c.width)))
        if c.num_registers:
            prefix.append(self.param("reg", nn.initializers.zeros, (1, c.num_registers, c.width)))
        if prefix:
            tiled = [jnp.broadcast_to(p, (x.shape[0], *p.shape[1:])).astype(dtype) for p in prefix]
            x = jnp.concatenate(tiled + [x], axis=1)
        x, size, sources = Encoder(c, schedule, name="Transformer")(
            x, deterministic=not train, track_sources=track_sources
        )
        if sources is not None:
            self.sow("intermediates", "sources", sources)
        self.sow("intermediates", "size", size)
        if c.classifier == "token":
            feats = [x[:, 0]] + ([x[:, 1]] if c.distilled else [])
        elif c.classifier == "map":
            feats = [MAPHead(c, name="MAPHead_0")(x[:, c.num_prefix :], size[:, c.num_prefix :])]
        else:
            tokens, weights = x[:, c.num_prefix :], size[:, c.num_prefix :]
            pooled = (tokens * weights).sum(axis=1) / weights.sum(axis=1)
            if c.fc_norm:
                pooled = nn.LayerNorm(epsilon=c.layernorm_eps, dtype=dtype, name="fc_norm")(pooled)
            feats = [pooled]
        self.sow("intermediates", "pre_logits", feats[0])
        if c.representation_size is not None:
            pre = nn.Dense(c.representation_size, dtype=dtype, name="pre_logits")
            feats = [jnp.tanh(pre(f)) for f in feats]
        head = nn.Dense(c.num_classes, dtype=dtype, kernel_init=nn.initializers.zeros, name="head")
        logits = head(feats[0])
        if c.distilled:
            head_dist = nn.Dense(
                c.num_classes, dtype=dtype, kernel_init=nn.initializers.zeros, name="head_dist"
            )
            logits = (logits + head_dist(feats[1])) / 2
        return logits.astype(jnp.float32)


class MAPHead(nn.Module):
    """Multihead attention pooling: one learned probe attends to the tokens, then a residual MLP.

    Names follow big_vision's ``MAPHead`` (``probe``, ``MultiHeadDotProductAttention_0``,
    ``LayerNorm_0``, ``MlpBlock_0``). Token sizes enter as the proportional-attention bias, so a merged
    token weighs as much as the patches it stands for (zero bias without reduction).
    """

    config: ViTConfig

    @nn.compact
    def __call__(self, x, size):
        """x: ``[B, N, D]``, size: ``[B, N, 1]`` -> ``[B, D]``."""
        c = self.config
        dtype = _DTYPES[c.dtype]
        width = x.shape[-1]
        probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, width))
        probe = jnp.broadcast_to(probe, (x.shape[0], 1, width)).astype(dtype)
        y, _ = ToFuAttention(c.num_heads, dtype, name="MultiHeadDotProductAttention_0")(probe, size, kv=x)
        z = nn.LayerNorm(epsilon=c.layernorm_eps, dtype=dtype, name="LayerNorm_0")(y)
        y = y + MlpBlock(c.mlp_dim, c.gelu_approximate, 0.0, dtype, name="MlpBlock_0")(z)
        return y[:, 0]


def make_apply(model: ViT):
    """``apply(params, images, schedule=None) -> logits`` jitted with the schedule static.

    One XLA program is compiled per (schedule, image shape); new data never recompiles.
    """

    @functools.partial(jax.jit, static_argnames=("schedule",))
    def apply(params, images, schedule: Schedule | None = None):
        return model.apply({"params": params}, images, schedule)

    return apply


def init_params(config: ViTConfig, seed: int = 0) -> dict:
    """Random parameters for ``config`` (no compilation of the full forward pass)."""
    model = ViT(config)
    images = jnp.zeros((1, config.image_size, config.image_size, config.channels), jnp.float32)
    return jax.jit(model.init)(jax.random.PRNGKey(seed), images)["params"]
