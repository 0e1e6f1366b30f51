"""A small DiT (Peebles & Xie, 2023) in Linen with ToMe-for-Stable-Diffusion style token reduction.

Architecture: patchify (strided conv + fixed 2-D sin-cos position embedding), conditioning
``c = t_embed(t) + y_embed(label)``, ``depth`` adaLN-Zero blocks, an adaLN final layer and unpatchify.
The network predicts the noise ``eps`` (fixed variances, no learned sigma). Label ``num_classes`` is
the null label of classifier-free guidance (label dropout is applied by the training loop).

Token reduction inside each block (a static :class:`~tofu_jax.schedule.Schedule`, one
:class:`~tofu_jax.schedule.BlockReduction` per block): attention runs on all ``N`` tokens; then the
MLP input ``modulate(LN(x))`` is reduced by bipartite soft matching on the attention keys (averaged
over heads), the MLP runs on ``N - r`` tokens, and its output is unmerged back to ``N`` tokens before
the gated residual -- so every block outputs all tokens (a diffusion model's output is dense).
Supported ops: ``none``, ``merge_avg``, ``merge_mlerp`` and ``prune``; with the unmerge, ``prune`` is
"copy the MLP output of the nearest kept token". Sizes restart at 1 in every block, so the
schedule's ``prop_attn`` has no effect here; ``mlerp_norm`` and ``metric`` (``keys``/``tokens``) do.
Each block's ``r`` is bounded by ``N // 2`` (no protected tokens) and does not accumulate.

Also here: a DDPM noise schedule, the training loss, a jit-able DDIM/DDPM sampler (fixed steps,
deterministic given the initial noise, and given ``key`` when ``eta > 0``) and analytic FLOPs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tofu_jax import reduction
from tofu_jax.attention import ToFuAttention
from tofu_jax.blocks import TokenReducer
from tofu_jax.errors import UserError
from tofu_jax.schedule import Schedule, ScheduleError
from tofu_jax.schedule import none as no_reduction

_XAVIER = nn.initializers.xavier_uniform()
_ZEROS = nn.initializers.zeros


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    """Architecture of a DiT. Hashable, so it can be a Linen module field."""

    image_size: int = 28
    patch_size: int = 2
    channels: int = 1
    width: int = 128
    depth: int = 6
    num_heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 10  # labels 0..num_classes-1; num_classes is the null (unconditional) label
    freq_dim: int = 256  # sinusoidal timestep features

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            ok = isinstance(value, numbers.Real if f.name == "mlp_ratio" else numbers.Integral)
            if not ok or isinstance(value, bool) or not 0 < value < float("inf"):
                kind = "number" if f.name == "mlp_ratio" else "integer"
                raise UserError(f"DiTConfig.{f.name} must be a positive {kind}, got {value!r}")
        if self.image_size % self.patch_size:
            raise UserError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.num_heads:
            raise UserError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.width % 4:
            raise UserError(f"width {self.width} must be a multiple of 4 (2-D sin-cos position embedding)")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid**2

    @property
    def mlp_dim(self) -> int:
        return int(self.width * self.mlp_ratio)

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    def replace(self, **kw) -> DiTConfig:
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DiTConfig:
        extra = set(d) - {f.name for f in dataclasses.fields(cls)}
        if extra:
            raise UserError(f"unknown DiTConfig fields: {sorted(extra)}")
        return cls(**d)


# --- schedules ------------------------------------------------------------------------------------
def validate_schedule(schedule: Schedule, config: DiTConfig) -> None:
    """Raise :class:`ScheduleError` unless every block's op and ``r`` fit this DiT."""
    if schedule.depth != config.depth:
        raise ScheduleError(f"schedule has {schedule.depth} blocks but the DiT has depth {config.depth}")
    for i, b in enumerate(schedule.blocks):
        if b.op not in reduction.RESTORABLE_OPS:
            raise ScheduleError(
                f"block {i}: op {b.op!r} is not supported by the DiT (it unmerges every block); use "
                f"{', '.join(reduction.RESTORABLE_OPS)}"
            )
        limit = reduction.limit(b.op, config.num_tokens, 0)
        if b.r > limit:
            raise ScheduleError(
                f"block {i} ({b.op}) asks to remove r={b.r} of {config.num_tokens} tokens; at most {limit}"
            )


def mlp_token_counts(config: DiTConfig, schedule: Schedule | None = None) -> list[int]:
    """Tokens entering each block's MLP (the attention always sees ``num_tokens``)."""
    schedule = schedule if schedule is not None else no_reduction(config.depth)
    validate_schedule(schedule, config)
    return [config.num_tokens - b.r for b in schedule.blocks]


def dit_flops(config: DiTConfig, schedule: Schedule | None = None) -> float:
    """FLOPs (multiply-adds x 2, matrix products only) of one forward pass for one image."""
    schedule = schedule if schedule is not None else no_reduction(config.depth)
    n, d, m, p2c = config.num_tokens, config.width, config.mlp_dim, config.patch_size**2 * config.channels
    macs = n * p2c * d  # patch embedding
    macs += config.freq_dim * d + d * d  # timestep MLP
    for b, n_mlp in zip(schedule.blocks, mlp_token_counts(config, schedule), strict=True):
        macs += 6 * d * d  # adaLN modulation
        macs += 4 * n * d * d + 2 * n * n * d + 2 * n_mlp * d * m
        if b.r:
            c = config.head_dim if schedule.metric == "keys" else d
            macs += ((n + 1) // 2) * (n // 2) * c
    macs += 2 * d * d + n * d * p2c  # final adaLN and linear
    return 2.0 * macs


# --- model ----------------------------------------------------------------------------------------
def sincos_pos_embed(width: int, grid: int) -> np.ndarray:
    """Fixed 2-D sin-cos position embedding ``[1, grid*grid, width]`` (MAE / DiT)."""
    pos = np.arange(grid, dtype=np.float64)
    gy, gx = np.meshgrid(pos, pos, indexing="ij")
    omega = 1.0 / 10000 ** (np.arange(width // 4, dtype=np.float64) / (width / 4.0))

    def embed_1d(coord):
        out = np.einsum("m,d->md", coord.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([embed_1d(gy), embed_1d(gx)], axis=1)
    return emb[None].astype(np.float32)


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal features ``[B, dim]`` of (possibly fractional) timesteps ``t [B]``."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    return x * (1 + scale) + shift


def _norm(name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False, name=name)


class Mlp(nn.Module):
    mlp_dim: int

    @nn.compact
    def __call__(self, x):
        y = nn.Dense(self.mlp_dim, kernel_init=_XAVIER, name="fc1")(x)
        y = nn.gelu(y, approximate=True)
        return nn.Dense(x.shape[-1], kernel_init=_XAVIER, name="fc2")(y)


class DiTBlock(nn.Module):
    """adaLN-Zero block; the MLP runs on ``N - r`` tokens between a merge and an unmerge."""

    config: DiTConfig
    reduction_op: str = "none"
    r: int = 0
    mlerp_norm: str = "max"
    metric: str = "keys"

    @nn.compact
    def __call__(self, x, c):
        """x: ``[B, N, D]``, c: ``[B, D]`` -> ``[B, N, D]``."""
        cfg = self.config
        mod = nn.Dense(6 * cfg.width, kernel_init=_ZEROS, name="adaLN_modulation")(nn.silu(c))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod[:, None], 6, axis=-1)
        h = modulate(_norm("norm1")(x), shift_msa, scale_msa)
        y, keys = ToFuAttention(cfg.num_heads, kernel_init=_XAVIER, name="attn")(h)
        x = x + gate_msa * y
        h = modulate(_norm("norm2")(x), shift_mlp, scale_mlp)
        reducer = TokenReducer(self.reduction_op, self.r, protected=0, mlerp_norm=self.mlerp_norm)
        h, _, state = reducer(h, None, keys if self.metric == "keys" else h)
        self.sow("intermediates", "mlp_in", h)
        y = state.restore(Mlp(cfg.mlp_dim, name="mlp")(h))
        return x + gate_mlp * y


class DiT(nn.Module):
    """``DiT(config).apply({"params": p}, x [B,H,W,C], t [B], y [B], schedule) -> eps [B,H,W,C]``."""

    config: DiTConfig

    @nn.compact
    def __call__(self, x, t, y, schedule: Schedule | None = None):
        cfg = self.config
        schedule = schedule if schedule is not None else no_reduction(cfg.depth)
        validate_schedule(schedule, cfg)
        if x.ndim != 4 or x.shape[1:] != (cfg.image_size, cfg.image_size, cfg.channels):
            raise UserError(
                f"x must have shape [B, {cfg.image_size}, {cfg.image_size}, {cfg.channels}], "
                f"got {tuple(x.shape)}"
            )
        p = cfg.patch_size
        h = nn.Conv(
            cfg.width, (p, p), strides=(p, p), padding="VALID", kernel_init=_XAVIER, name="x_embedder"
        )(x)
        h = h.reshape(h.shape[0], -1, cfg.width) + jnp.asarray(sincos_pos_embed(cfg.width, cfg.grid))
        temb = timestep_embedding(t, cfg.freq_dim)
        temb = nn.Dense(cfg.width, kernel_init=nn.initializers.normal(0.02), name="t_embedder_0")(temb)
        temb = nn.Dense(cfg.width, kernel_init=nn.initializers.normal(0.02), name="t_embedder_1")(
            nn.silu(temb)
        )
        yemb = nn.Embed(
            cfg.num_classes + 1, cfg.width, embedding_init=nn.initializers.normal(0.02), name="y_embedder"
        )
        c = temb + yemb(y)
        for i, b in enumerate(schedule.blocks):
            h = DiTBlock(cfg, b.op, b.r, schedule.mlerp_norm, schedule.metric, name=f"block_{i}")(h, c)
        shift, scale = jnp.split(
            nn.Dense(2 * cfg.width, kernel_init=_ZEROS, name="final_adaLN")(nn.silu(c))[:, None], 2, -1
        )
        h = modulate(_norm("final_norm")(h), shift, scale)
        h = nn.Dense(p * p * cfg.channels, kernel_init=_ZEROS, name="final_linear")(h)
        return unpatchify(h, cfg)


def unpatchify(h: jax.Array, cfg: DiTConfig) -> jax.Array:
    """``[B, g*g, p*p*C]`` -> ``[B, g*p, g*p, C]``."""
    b, g, p, c = h.shape[0], cfg.grid, cfg.patch_size, cfg.channels
    h = h.reshape(b, g, g, p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return h.reshape(b, g * p, g * p, c)


def init_params(config: DiTConfig, seed: int = 0) -> dict:
    shape = (1, config.image_size, config.image_size, config.channels)
    x, t, y = jnp.zeros(shape), jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32)
    return jax.jit(DiT(config).init)(jax.random.PRNGKey(seed), x, t, y)["params"]


def make_apply(model: DiT):
    """``apply(params, x, t, y, schedule=None) -> eps``, jitted with the schedule static."""

    @functools.partial(jax.jit, static_argnames=("schedule",))
    def apply(params, x, t, y, schedule: Schedule | None = None):
        return model.apply({"params": params}, x, t, y, schedule)

    return apply


# --- diffusion ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Diffusion:
    """DDPM forward process with a linear beta schedule (Ho et al. 2020; DiT uses the same)."""

    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    @property
    def alphas_cumprod(self) -> np.ndarray:
        betas = np.linspace(self.beta_start, self.beta_end, self.num_timesteps, dtype=np.float64)
        return np.cumprod(1.0 - betas)

    def q_sample(self, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
        """``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``."""
        abar = jnp.asarray(self.alphas_cumprod, jnp.float32)[t][:, None, None, None]
        return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * noise

    def sample_timesteps(self, steps: int) -> np.ndarray:
        """``steps`` evenly spaced timesteps, descending from ``T - 1`` (DDIM's "uniform" spacing)."""
        if not 1 <= steps <= self.num_timesteps:
            raise UserError(f"steps must be in 1..{self.num_timesteps}, got {steps}")
        return np.round(np.linspace(self.num_timesteps - 1, 0, steps)).astype(np.int32)


def diffusion_loss(
    model: DiT, params, diffusion: Diffusion, x0, labels, key, schedule: Schedule | None = None
):
    """Epsilon-prediction MSE at uniform random timesteps."""
    k_t, k_n = jax.random.split(key)
    t = jax.random.randint(k_t, (x0.shape[0],), 0, diffusion.num_timesteps)
    noise = jax.random.normal(k_n, x0.shape)
    eps = model.apply({"params": params}, diffusion.q_sample(x0, t, noise), t, labels, schedule)
    return jnp.mean((eps - noise) ** 2)


def make_sampler(model: DiT, diffusion: Diffusion, steps: int, *, eta: float = 0.0, cfg_scale: float = 1.0):
    """A jitted sampler ``sample(params, noise, labels, key=None, schedule=None) -> x0 [B,H,W,C]``.

    DDIM (Song et al. 2021) over ``steps`` evenly spaced timesteps with ``x0`` clipped to [-1, 1]:
    ``eta=0`` is deterministic given ``noise``; ``eta=1`` is DDPM-like ancestral sampling (then
    ``key`` is required and fixes the result). ``cfg_scale != 1`` applies classifier-free guidance
    (two forward passes per step, the second with the null label). ``schedule`` is static: one
    compiled program per schedule.
    """
    ts = diffusion.sample_timesteps(steps)
    abar = diffusion.alphas_cumprod
    abar_t = abar[ts].astype(np.float32)
    abar_prev = np.concatenate([abar[ts[1:]], [1.0]]).astype(np.float32)
    null_label = model.config.num_classes

    @functools.partial(jax.jit, static_argnames=("schedule",))
    def sample(params, noise, labels, key=None, schedule: Schedule | None = None):
        if eta > 0 and key is None:
            raise UserError("eta > 0 needs a PRNG key")
        keys = jax.random.split(key, steps) if key is not None else jnp.zeros((steps, 2), jnp.uint32)

        def eps_fn(x, t):
            tt = jnp.full((x.shape[0],), t, jnp.int32)
            if cfg_scale == 1.0:
                return model.apply({"params": params}, x, tt, labels, schedule)
            both = model.apply(
                {"params": params},
                jnp.concatenate([x, x]),
                jnp.concatenate([tt, tt]),
                jnp.concatenate([labels, jnp.full_like(labels, null_label)]),
                schedule,
            )
            cond, uncond = jnp.split(both, 2)
            return uncond + cfg_scale * (cond - uncond)

        def step(x, inputs):
            t, a_t, a_prev, k = inputs
            eps = eps_fn(x, t)
            x0 = jnp.clip((x - jnp.sqrt(1 - a_t) * eps) / jnp.sqrt(a_t), -1.0, 1.0)
            eps = (x - jnp.sqrt(a_t) * x0) / jnp.sqrt(1 - a_t)
            sigma = eta * jnp.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
            x = jnp.sqrt(a_prev) * x0 + jnp.sqrt(jnp.maximum(1 - a_prev - sigma**2, 0.0)) * eps
            if eta > 0:
                x = x + sigma * jax.random.normal(k, x.shape)
            return x, None

        x, _ = jax.lax.scan(step, noise.astype(jnp.float32), (ts, abar_t, abar_prev, keys))
        return x

    return sample
