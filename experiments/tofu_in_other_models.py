"""ToFu outside ViT classification: two non-ViT Flax models built on :mod:`tofu_jax.blocks`.

1. ``TokenTagger`` (Linen): a text/sequence transformer (token ids -> per-token logits, no CLS token).
   ToMe-style: every block reduces the residual stream after attention, later blocks run on fewer
   tokens with proportional attention, and the per-token head output is unmerged back to the full
   sequence at the end with :func:`tofu_jax.blocks.restore_all`.
2. ``SetEncoderNNX`` (flax.nnx): a permutation-equivariant set/point-cloud encoder (no positions at
   all) in the ToMe-for-Stable-Diffusion style: each block merges only the MLP input and unmerges the
   MLP output, so the residual stream keeps every token.

For each model and op the script prints the max deviation of the reduced model's (dense) output from
the unreduced one on random input (random weights), and the FLOP-proportional speed-up
(XLA ``cost_analysis`` FLOPs of the compiled forward pass, no timing).

    python experiments/tofu_in_other_models.py [--r 8] [--seq 64]
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from tofu_jax.attention import ToFuAttention, ToFuAttentionNNX
from tofu_jax.blocks import TokenReducer, restore_all

OPS = ("none", "prune", "merge_avg", "merge_mlerp")


# --- 1. Linen sequence tagger, reduced tokens carried through the stack --------------------------
class TaggerBlock(nn.Module):
    reducer: TokenReducer
    num_heads: int = 4
    mlp_dim: int = 256

    @nn.compact
    def __call__(self, x, size):
        y, metric = ToFuAttention(self.num_heads, name="attn")(nn.LayerNorm(name="ln1")(x), size)
        x = x + y
        x, size, state = self.reducer(x, size, metric)  # N -> N - r
        h = nn.Dense(self.mlp_dim, name="fc1")(nn.LayerNorm(name="ln2")(x))
        x = x + nn.Dense(x.shape[-1], name="fc2")(nn.gelu(h))
        return x, size, state


class TokenTagger(nn.Module):
    reducers: tuple[TokenReducer, ...]
    vocab: int = 256
    width: int = 64
    num_tags: int = 12

    @nn.compact
    def __call__(self, ids):
        x = nn.Embed(self.vocab, self.width, name="embed")(ids)
        x = x + self.param("pos", nn.initializers.normal(0.02), (1, ids.shape[1], self.width))
        size, states = None, []
        for i, reducer in enumerate(self.reducers):
            x, size, state = TaggerBlock(reducer, name=f"block_{i}")(x, size)
            states.append(state)
        logits = nn.Dense(self.num_tags, name="head")(nn.LayerNorm(name="ln_f")(x))
        return restore_all(states, logits)  # [B, N - sum(r), tags] -> [B, N, tags]


# --- 2. NNX set encoder, merge/unmerge around each MLP -----------------------------------------------
class SetBlockNNX(nnx.Module):
    def __init__(self, width: int, num_heads: int, mlp_dim: int, *, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(width, rngs=rngs)
        self.attn = ToFuAttentionNNX(width, num_heads, rngs=rngs)
        self.ln2 = nnx.LayerNorm(width, rngs=rngs)
        self.fc1 = nnx.Linear(width, mlp_dim, rngs=rngs)
        self.fc2 = nnx.Linear(mlp_dim, width, rngs=rngs)

    def __call__(self, x, reducer: TokenReducer):
        y, metric = self.attn(self.ln1(x))
        x = x + y
        mlp = lambda h: self.fc2(nnx.gelu(self.fc1(h)))
        return x + reducer.apply(mlp, self.ln2(x), metric)  # the MLP sees N - r tokens


class SetEncoderNNX(nnx.Module):
    def __init__(self, in_dim=3, width=64, depth=4, num_heads=4, mlp_dim=256, out_dim=8, *, rngs: nnx.Rngs):
        self.embed = nnx.Linear(in_dim, width, rngs=rngs)
        self.blocks = nnx.List([SetBlockNNX(width, num_heads, mlp_dim, rngs=rngs) for _ in range(depth)])
        self.head = nnx.Linear(width, out_dim, rngs=rngs)

    def __call__(self, points, reducers: tuple[TokenReducer, ...]):
        x = self.embed(points)
        for block, reducer in zip(self.blocks, reducers, strict=True):
            x = block(x, reducer)
        return self.head(x)


# --- driver -------------------------------------------------------------------------------------------
def _compile(fn, *args):
    """``(compiled, flops)`` of ``fn`` for the shapes of ``args``."""
    compiled = jax.jit(fn).lower(*args).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return compiled, float(cost["flops"])


def _report(name, op, outs, fulls, ratio, results):
    row = {"flops_ratio": ratio}
    text = []
    for kind in outs:
        out, full = outs[kind], fulls[kind]
        dev = float(jnp.abs(out - full).max())
        rel = float(jnp.linalg.norm(out - full) / jnp.linalg.norm(full))
        row[kind] = {"max_dev": dev, "rel_dev": rel, "output_max": float(jnp.abs(full).max())}
        text.append(f"{kind}: max|dev| {dev:.4f} (|out| <= {float(jnp.abs(full).max()):.2f}), rel {rel:.3f}")
    results[f"{name}/{op}"] = row
    print(f"{name:16s} {op:12s} FLOPs x{ratio:.3f} (speed-up x{1 / ratio:.2f})  " + "; ".join(text))


def run(seq: int = 64, depth: int = 4, r: int = 8, batch: int = 4, seed: int = 0) -> dict:
    """Inputs: ``random`` (i.i.d. tokens/points) and ``redundant`` (runs of 4 equal token ids; points
    in tight clusters of 4), the case token reduction is meant for."""
    results = {}
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    ids = {
        "random": jax.random.randint(k1, (batch, seq), 0, 256),
        "redundant": jnp.repeat(jax.random.randint(k1, (batch, seq // 4), 0, 256), 4, axis=1),
    }
    centers = jnp.repeat(jax.random.normal(k2, (batch, seq // 4, 3)), 4, axis=1)
    points = {
        "random": jax.random.normal(k2, (batch, seq, 3)),
        "redundant": centers + 0.01 * jax.random.normal(k3, centers.shape),
    }

    def reducers(op):
        return tuple(TokenReducer(op, 0 if op == "none" else r, protected=0) for _ in range(depth))

    params = TokenTagger(reducers("none")).init(jax.random.PRNGKey(seed + 1), ids["random"])
    fulls, full_flops = None, None
    for op in OPS:
        model = TokenTagger(reducers(op))  # same parameters: a reducer adds none
        fn, flops = _compile(model.apply, params, ids["random"])
        outs = {kind: fn(params, x) for kind, x in ids.items()}
        if op == "none":
            fulls, full_flops = outs, flops
        _report("Linen TokenTagger", op, outs, fulls, flops / full_flops, results)

    graphdef, state = nnx.split(SetEncoderNNX(depth=depth, rngs=nnx.Rngs(seed + 2)))
    for op in OPS:
        red = reducers(op)
        forward = lambda s, p, red=red: nnx.merge(graphdef, s)(p, red)
        fn, flops = _compile(forward, state, points["random"])
        outs = {kind: fn(state, x) for kind, x in points.items()}
        if op == "none":
            fulls, full_flops = outs, flops
        _report("NNX SetEncoder", op, outs, fulls, flops / full_flops, results)
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seq", type=int, default=64, help="tokens per sequence / points per set")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--r", type=int, default=8, help="tokens removed per block")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    run(a.seq, a.depth, a.r, a.batch, a.seed)


if __name__ == "__main__":
    main()
