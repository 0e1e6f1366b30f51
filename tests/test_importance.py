"""Importance-guided selection (plan + ops) against a NumPy reference, properties, model wiring, saliency."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tofu_jax import merging as G
from tofu_jax import schedule as S
from tofu_jax.flops import block_flops, model_flops
from tofu_jax.importance import SaliencyProfile, importance_ops, saliency_profile
from tofu_jax.models.vit import ViT, ViTConfig, init_params

TINY = ViTConfig(
    image_size=16, patch_size=4, channels=1, num_classes=4, width=16, depth=2, mlp_dim=32, num_heads=2
)


# --- a plain NumPy reference (loops) ---------------------------------------------------------------
def ref_plan(metric, scores, r, protected):
    """Per batch element: (keep, src, dst) with dst a position in keep."""
    out = []
    for k, s in zip(metric.astype(np.float64), scores.astype(np.float32), strict=True):
        n = len(s)
        ranked = s.copy()
        ranked[:protected] = np.inf
        order = np.argsort(-ranked, kind="stable")
        keep, src = np.sort(order[: n - r]), np.sort(order[n - r :])
        unit = k / np.maximum(np.linalg.norm(k, axis=-1, keepdims=True), 1e-6)
        dst = []
        for i in src:
            best, best_j = -np.inf, -1
            for j, t in enumerate(keep):
                if t < protected:
                    continue
                sim = float(unit[i] @ unit[t])
                if sim > best:
                    best, best_j = sim, j
            dst.append(best_j)
        out.append((keep, src, np.array(dst, np.int64)))
    return out


def ref_merge(x, size, scores, plan, rule, weights, norm="max"):
    xs, ss = [], []
    for xb, sb, scb, (keep, src, dst) in zip(x.astype(np.float64), size, scores, plan, strict=True):
        rows, srows = [], []
        for j, t in enumerate(keep):
            members = [t] + [i for i, d in zip(src, dst, strict=True) if d == j]
            if len(members) == 1:
                rows.append(xb[t])
                srows.append(sb[t, 0])
                continue
            sizes = np.array([sb[i, 0] for i in members], np.float64)
            w = sizes if weights == "size" else sizes * np.maximum([scb[i] for i in members], 1e-6)
            avg = sum(wi * xb[i] for wi, i in zip(w, members, strict=True)) / w.sum()
            if rule == "mlerp":
                norms = np.array([np.linalg.norm(xb[i]) for i in members])
                target = norms.max() if norm == "max" else (w * norms).sum() / w.sum()
                avg = avg / max(np.linalg.norm(avg), 1e-6) * target
            rows.append(avg)
            srows.append(sizes.sum())
        xs.append(np.stack(rows))
        ss.append(np.array(srows)[:, None])
    return np.stack(xs), np.stack(ss)


def _rand(seed, *shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _sizes(seed, b, n):
    return np.random.default_rng(seed + 1).integers(1, 5, size=(b, n, 1)).astype(np.float32)


def _scores(seed, b, n, ties=False):
    rng = np.random.default_rng(seed + 2)
    return (rng.integers(0, 3, size=(b, n)) if ties else rng.random((b, n))).astype(np.float32)


CASES = [
    (17, 5, 1, 8, False),
    (17, 15, 1, 8, False),
    (20, 9, 2, 4, True),
    (11, 10, 0, 6, True),
    (9, 4, 1, 1, True),
]


@pytest.mark.parametrize("n,r,protected,c,ties", CASES)
def test_plan_equals_reference(n, r, protected, c, ties):
    metric, scores = _rand(0, 3, n, c), _scores(0, 3, n, ties)
    plan = G.importance_matching(jnp.asarray(metric), jnp.asarray(scores), r, protected=protected)
    for i, (keep, src, dst) in enumerate(ref_plan(metric, scores, r, protected)):
        np.testing.assert_array_equal(np.asarray(plan.keep_idx[i]), keep)
        np.testing.assert_array_equal(np.asarray(plan.src_idx[i]), src)
        np.testing.assert_array_equal(np.asarray(plan.dst_idx[i]), dst)


@pytest.mark.parametrize("n,r,protected,c,ties", CASES[:3])
@pytest.mark.parametrize(
    "rule,weights,norm",
    [("avg", "size", "max"), ("avg", "importance", "max"), ("mlerp", "size", "max"),
     ("mlerp", "importance", "weighted_mean"), ("mlerp", "size", "weighted_mean")],
)  # fmt: skip
def test_merge_equals_reference(n, r, protected, c, ties, rule, weights, norm):
    metric, scores = _rand(1, 2, n, c), _scores(1, 2, n, ties)
    x, size = _rand(2, 2, n, 6), _sizes(3, 2, n)
    plan = G.importance_matching(jnp.asarray(metric), jnp.asarray(scores), r, protected=protected)
    out, out_s = G.merge_importance(
        jnp.asarray(x), jnp.asarray(size), plan, rule=rule, weights=weights, norm=norm
    )
    ref_x, ref_s = ref_merge(x, size, scores, ref_plan(metric, scores, r, protected), rule, weights, norm)
    np.testing.assert_allclose(np.asarray(out), ref_x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out_s), ref_s, rtol=1e-6)
    pruned, pruned_s = G.prune_unimportant(jnp.asarray(x), jnp.asarray(size), plan)
    keep = np.asarray(plan.keep_idx)
    np.testing.assert_array_equal(np.asarray(pruned), np.take_along_axis(x, keep[..., None], 1))
    np.testing.assert_array_equal(np.asarray(pruned_s), np.take_along_axis(size, keep[..., None], 1))


# --- properties ------------------------------------------------------------------------------------
shapes = st.tuples(st.sampled_from([1, 2]), st.sampled_from([3, 6, 17, 24]), st.sampled_from([1, 4]))


@st.composite
def problems(draw):
    b, n, c = draw(shapes)
    protected = draw(st.sampled_from([0, 1, 2]))
    r = draw(st.integers(0, G.max_importance_reduction(n, protected)))
    return b, n, c, r, protected, draw(st.integers(0, 2**16))


def _plan(p):
    b, n, c, r, protected, seed = p
    metric, scores = _rand(seed + 9, b, n, c), _scores(seed, b, n, ties=seed % 2 == 0)
    return G.importance_matching(jnp.asarray(metric), jnp.asarray(scores), r, protected=protected)


@given(problems(), st.sampled_from(["prune", "avg", "mlerp"]))
def test_protected_tokens_never_removed(p, op):
    b, n, c, r, protected, seed = p
    x = _rand(seed, b, n, c)
    plan = _plan(p)
    keep, src, dst = (np.asarray(a) for a in (plan.keep_idx, plan.src_idx, plan.dst_idx))
    assert keep.shape == (b, n - r) and src.shape == (b, r)
    np.testing.assert_array_equal(
        np.sort(np.concatenate([keep, src], 1), 1), np.broadcast_to(np.arange(n), (b, n))
    )
    np.testing.assert_array_equal(keep[:, :protected], np.broadcast_to(np.arange(protected), (b, protected)))
    assert np.all(src >= protected) and np.all(dst >= protected)  # never removed, never a destination
    assert np.all(np.diff(keep, axis=1) > 0)  # original order
    if op == "prune":
        out, out_s = G.prune_unimportant(jnp.asarray(x), None, plan)
    else:
        out, out_s = G.merge_importance(jnp.asarray(x), None, plan, rule=op)
    np.testing.assert_array_equal(np.asarray(out[:, :protected]), x[:, :protected])
    np.testing.assert_array_equal(np.asarray(out_s[:, :protected, 0]), 1.0)


@given(problems())
def test_avg_preserves_weighted_sum_and_size(p):
    b, n, c, r, protected, seed = p
    x, size = _rand(seed, b, n, c), _sizes(seed, b, n)
    out, out_s = G.merge_importance(jnp.asarray(x), jnp.asarray(size), _plan(p), rule="avg", weights="size")
    np.testing.assert_allclose(np.asarray((out * out_s).sum(1)), (x * size).sum(1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(out_s.sum(1)), size.sum(1), rtol=1e-6)
    _, out_s = G.merge_importance(
        jnp.asarray(x), jnp.asarray(size), _plan(p), rule="avg", weights="importance"
    )
    np.testing.assert_allclose(np.asarray(out_s.sum(1)), size.sum(1), rtol=1e-6)


@given(problems(), st.sampled_from(["size", "importance"]))
def test_mlerp_norm_is_max_and_direction_is_average(p, weights):
    b, n, c, r, protected, seed = p
    x, size = _rand(seed, b, n, c), _sizes(seed, b, n)
    plan = _plan(p)
    avg, _ = G.merge_importance(jnp.asarray(x), jnp.asarray(size), plan, rule="avg", weights=weights)
    ml, _ = G.merge_importance(jnp.asarray(x), jnp.asarray(size), plan, rule="mlerp", weights=weights)
    avg, ml = np.asarray(avg), np.asarray(ml)
    keep, src, dst = (np.asarray(a) for a in (plan.keep_idx, plan.src_idx, plan.dst_idx))
    norms = np.linalg.norm(x, axis=-1)
    for i in range(b):
        for j, t in enumerate(keep[i]):
            members = [t] + list(src[i][dst[i] == j])
            np.testing.assert_allclose(
                np.linalg.norm(ml[i, j]), norms[i, members].max(), rtol=1e-5, atol=1e-5
            )
            if np.linalg.norm(avg[i, j]) > 1e-3:
                a_dir = avg[i, j] / np.linalg.norm(avg[i, j])
                np.testing.assert_allclose(ml[i, j] / np.linalg.norm(ml[i, j]), a_dir, atol=1e-4)


@given(problems(), st.sampled_from(["prune", "avg", "mlerp"]))
def test_r_zero_is_identity(p, op):
    b, n, c, _, protected, seed = p
    p = (b, n, c, 0, protected, seed)
    x, size = _rand(seed, b, n, c), _sizes(seed, b, n)
    plan = _plan(p)
    if op == "prune":
        out, out_s = G.prune_unimportant(jnp.asarray(x), jnp.asarray(size), plan)
    else:
        out, out_s = G.merge_importance(jnp.asarray(x), jnp.asarray(size), plan, rule=op)
    np.testing.assert_array_equal(np.asarray(out), x)
    np.testing.assert_array_equal(np.asarray(out_s), size)


def test_r_out_of_range_is_an_error():
    metric, scores = jnp.zeros((1, 9, 4)), jnp.zeros((1, 9))
    G.importance_matching(metric, scores, 7, protected=1)  # N - protected - 1 is allowed
    with pytest.raises(ValueError, match="can remove 0..7"):
        G.importance_matching(metric, scores, 8, protected=1)
    with pytest.raises(ValueError, match="scores must have shape"):
        G.importance_matching(metric, jnp.zeros((1, 8)), 2)


def test_jit_compiles_once_and_bf16_round_trip():
    traces = []

    @jax.jit
    def step(x, size, metric, scores):
        traces.append(1)
        plan = G.importance_matching(metric, scores, 6, protected=1)
        return G.merge_importance(x, size, plan, rule="mlerp")

    for seed in range(3):
        x = jnp.asarray(_rand(seed, 2, 17, 8), jnp.bfloat16)
        out, s = step(
            x, jnp.ones((2, 17, 1)), jnp.asarray(_rand(seed + 1, 2, 17, 4)), jnp.asarray(_scores(seed, 2, 17))
        )
        assert out.dtype == jnp.bfloat16 and out.shape == (2, 11, 8) and s.dtype == jnp.float32
    assert len(traces) == 1
    x32 = _rand(0, 2, 17, 8)
    plan = G.importance_matching(jnp.asarray(_rand(1, 2, 17, 4)), jnp.asarray(_scores(0, 2, 17)), 6)
    ref, _ = G.merge_importance(jnp.asarray(x32), None, plan)
    low, _ = G.merge_importance(jnp.asarray(x32, jnp.bfloat16), None, plan)
    np.testing.assert_allclose(np.asarray(low, np.float32), np.asarray(ref), rtol=2e-2, atol=2e-2)


# --- schedule, FLOPs and model wiring -------------------------------------------------------------
def test_schedule_limits_and_flops():
    n = TINY.num_tokens  # 17
    ok = S.from_list(["merge_importance_mlerp", "merge_importance_avg"], [15, 0])
    assert ok.token_counts(n) == [17, 2, 2]
    with pytest.raises(S.ScheduleError, match="at most 15"):
        S.from_list(["merge_importance_avg", "none"], [16, 0]).token_counts(n)
    assert S.Schedule.from_json(ok.to_json()) == ok
    base = block_flops(17, 12, TINY, "prune_importance")
    assert block_flops(17, 12, TINY, "merge_importance_mlerp") - base == 2.0 * 5 * 12 * TINY.head_dim
    assert model_flops(TINY, ok).tokens == (17, 2, 2)


@pytest.fixture(scope="module")
def tiny_params():
    params = init_params(TINY)
    params["head"]["kernel"] = jax.random.normal(jax.random.PRNGKey(3), params["head"]["kernel"].shape)
    return params


@pytest.mark.parametrize("op", ["merge_importance_mlerp", "merge_importance_avg"])
@pytest.mark.parametrize("cls_token", [True, False])
def test_model_sizes_and_sources(op, cls_token, tiny_params):
    config = TINY if cls_token else TINY.replace(classifier="gap", cls_token=False)
    params = tiny_params if cls_token else init_params(config)
    images = jnp.asarray(_rand(5, 2, 16, 16, 1))
    sched = S.from_list([op, op], [6, 4])
    logits, state = ViT(config).apply(
        {"params": params}, images, sched, track_sources=True, mutable=["intermediates"]
    )
    assert logits.shape == (2, 4) and np.all(np.isfinite(np.asarray(logits)))
    blk = state["intermediates"]["Transformer"]
    for i, n_out in enumerate(sched.token_counts(config.num_tokens, config.num_prefix)[1:]):
        size = np.asarray(blk[f"encoderblock_{i}"]["size"][0])
        sources = np.asarray(blk[f"encoderblock_{i}"]["sources"][0])
        assert size.shape == (2, n_out, 1)
        np.testing.assert_allclose(size.sum((1, 2)), config.num_tokens)  # merges keep every patch
        np.testing.assert_allclose(sources.sum(-1), size[..., 0])  # each token covers `size` patches
        np.testing.assert_array_equal(sources.sum(1), 1.0)  # every patch in exactly one token
        if cls_token:
            assert np.all(sources[:, 0, 0] == 1) and np.all(size[:, 0, 0] == 1)


# --- gradient saliency -----------------------------------------------------------------------------
def test_saliency_profile(tiny_params, tmp_path):
    images = _rand(7, 5, 16, 16, 1)
    prof = saliency_profile(TINY, tiny_params, images, np.array([0, 1, 2, 3, 0]), batch_size=4)
    assert prof.score == "cls_attention" and prof.num_images == 5 and len(prof.blocks) == 2
    first, last = prof.blocks
    assert -1.0 <= first.agreement <= 1.0 and first.mass > 0 and len(first.prior) == TINY.num_tokens
    np.testing.assert_allclose(np.mean(first.prior[1:]), 1.0, rtol=1e-6)
    # After the last attention only the CLS token reaches the head: zero saliency on patches.
    assert last.prior[0] > 0 and np.allclose(last.prior[1:], 0.0) and np.isnan(last.agreement)
    assert importance_ops(["prune", "merge_mlerp"], prof, min_agreement=-1.0) == [
        "prune_importance",
        "merge_mlerp",
    ]
    prof.save(tmp_path / "s.json")
    loaded = SaliencyProfile.load(tmp_path / "s.json")
    assert loaded.blocks[0] == first and np.isnan(loaded.blocks[1].agreement)
    # No labels: the model's own predictions are the targets; same shapes.
    assert len(saliency_profile(TINY, tiny_params, images[:2]).blocks) == 2
