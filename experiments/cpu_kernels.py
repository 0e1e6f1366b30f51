"""Why token reduction beats its FLOPs-ideal speedup on the CPU: per-kernel throughput.

Times the three kinds of work in one block of the bundled model's shape (197 tokens, width 96,
3 heads, batch 128): the dense projections/MLP, the batched attention matmuls, and the softmax.
Writes experiments/results/cpu_kernels.json.

    python -m experiments.cpu_kernels
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

from experiments.common import RESULTS, environment, write_json


def _time(fn, *args, runs=10):
    fn(*args).block_until_ready()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(*args).block_until_ready()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    b, n, d, h, m = 128, 197, 96, 3, 384
    hd = d // h
    x = jnp.ones((b * n, d))
    w = jnp.ones((d, m))
    q = jnp.ones((b, h, n, hd))
    logits = jnp.ones((b, h, n, n))
    dense_s = _time(jax.jit(lambda a, c: a @ c), x, w)
    attn_s = _time(jax.jit(lambda a, c: jnp.einsum("bhqd,bhkd->bhqk", a, c)), q, q)
    soft_s = _time(jax.jit(lambda s: jax.nn.softmax(s, axis=-1)), logits)
    res = {
        "environment": environment(),
        "shape": {"batch": b, "tokens": n, "width": d, "heads": h, "mlp": m},
        "dense_gflops_per_s": 2 * b * n * d * m / dense_s / 1e9,
        "attention_logits_gflops_per_s": 2 * b * h * n * n * hd / attn_s / 1e9,
        "softmax_ms": soft_s * 1e3,
        "softmax_elements_per_s": b * h * n * n / soft_s,
    }
    write_json(RESULTS / "cpu_kernels.json", res)
    print({k: v for k, v in res.items() if k != "environment"})


if __name__ == "__main__":
    main()
