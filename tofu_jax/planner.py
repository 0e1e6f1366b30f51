"""Turn a linearity profile and a FLOPs budget into a static :class:`Schedule` (the ToFu policy).

1. **Op per block.** Blocks whose linearity ``L`` is small behave like linear maps between the tokens
   matching would merge, so merging (MLERP) is safe there; where ``L`` is large, pruning is preferred.
   The threshold is Otsu's split of ``log L`` over the blocks (the cut that best separates the
   profile into two groups), so it comes from the data, not a constant.
   * ``per_block``: each block takes its own side of the threshold;
   * ``split``: the paper-style recipe, prune up to block ``k`` and merge after, with ``k`` the split
     that disagrees least (in ``|log L - log threshold|``) with the per-block choice.
2. **Tokens per block.** ``r`` as constant as possible across blocks, then topped up one token at a
   time from the last block backwards until the analytic FLOPs meet the target.
3. **Search** (optional): score candidate plans on held-out calibration images and keep the best.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Sequence

import numpy as np

from tofu_jax.errors import UserError
from tofu_jax.flops import model_flops
from tofu_jax.matching import max_reduction
from tofu_jax.models.vit import ViTConfig
from tofu_jax.profiler import PROFILE_METRICS, Profile
from tofu_jax.schedule import IMPORTANCE_OPS, BlockReduction, Schedule

MODES = ("per_block", "split", "search")
SELECTIONS = ("redundancy", "importance")
# Importance-guided counterpart of each redundancy-guided (bipartite matching) op.
IMPORTANCE_VARIANT = {
    "prune": "prune_importance",
    "merge_mlerp": "merge_importance_mlerp",
    "merge_avg": "merge_importance_avg",
}


def with_selection(ops: Sequence[str], selection: str) -> list[str]:
    """Map ops to their importance-guided variants (``selection="importance"``) or keep them."""
    if selection not in SELECTIONS:
        raise UserError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    if selection == "redundancy":
        return list(ops)
    return [IMPORTANCE_VARIANT.get(op, op) for op in ops]


class BudgetError(UserError):
    """A budget that no schedule of the requested kind can meet."""


def otsu_threshold(values: Sequence[float]) -> float:
    """Threshold on ``log(values)`` maximising between-group variance; returned in value space."""
    logs = np.log(np.maximum(np.asarray(values, np.float64), 1e-12))
    order = np.sort(logs)
    if len(order) < 2 or order[0] == order[-1]:
        return float(np.exp(order[-1]))
    best, best_t = -1.0, order[0]
    for i in range(1, len(order)):
        lo, hi = order[:i], order[i:]
        var = len(lo) * len(hi) * (lo.mean() - hi.mean()) ** 2
        if var > best:
            best, best_t = var, (order[i - 1] + order[i]) / 2
    return float(np.exp(best_t))


def choose_ops(
    profile: Profile,
    mode: str = "per_block",
    *,
    metric: str = "L_mlp_matched",
    merge_op: str = "merge_mlerp",
    prune_op: str = "prune",
) -> tuple[list[str], dict]:
    """Per-block op (prune or merge) from the profile; returns ``(ops, info)``."""
    if metric not in PROFILE_METRICS:
        raise UserError(f"unknown profile metric {metric!r}; choose from {', '.join(PROFILE_METRICS)}")
    values = profile.metric(metric)
    tau = otsu_threshold(values)
    merge_ok = values <= tau
    if mode == "per_block":
        ops = [merge_op if ok else prune_op for ok in merge_ok]
        return ops, {"threshold": tau, "metric": metric}
    if mode != "split":
        raise UserError(f"mode must be one of {MODES}, got {mode!r}")
    margin = np.abs(np.log(np.maximum(values, 1e-12)) - np.log(tau))
    costs = []
    for k in range(len(values) + 1):
        wrong_prune = margin[:k][merge_ok[:k]].sum()  # linear blocks that would be pruned
        wrong_merge = margin[k:][~merge_ok[k:]].sum()  # non-linear blocks that would be merged
        costs.append(wrong_prune + wrong_merge)
    k = int(np.argmin(costs))
    return [prune_op] * k + [merge_op] * (len(values) - k), {"threshold": tau, "metric": metric, "split": k}


def check_budget(budget: float | None, target_gflops: float | None = None) -> None:
    """Raise :class:`BudgetError` unless exactly one of a fraction in [0, 1) or a GFLOPs target is given."""
    if (budget is None) == (target_gflops is None):
        raise BudgetError("give exactly one of budget (fraction of FLOPs removed) or target_gflops")
    for name, value in (("budget", budget), ("target_gflops", target_gflops)):
        if value is not None and (not isinstance(value, numbers.Real) or isinstance(value, bool)):
            raise BudgetError(f"{name} must be a number, got {value!r}")
    if budget is not None and not 0.0 <= budget < 1.0:  # also refuses NaN
        raise BudgetError(f"budget must be a fraction of FLOPs to remove in [0, 1), got {budget}")
    if target_gflops is not None and not 0 < target_gflops < float("inf"):
        raise BudgetError(f"target_gflops must be positive, got {target_gflops}")


def _fill(config: ViTConfig, ops: Sequence[str], rs: Sequence[int], **options) -> Schedule:
    """Schedule with ``rs`` clamped to what each block can remove."""
    n, protected = config.num_tokens, config.num_prefix
    blocks = []
    for op, r in zip(ops, rs, strict=True):
        limit = max_reduction(n, protected) if op not in IMPORTANCE_OPS else max(0, n - protected - 1)
        r = 0 if op == "none" else min(int(r), limit)
        blocks.append(BlockReduction(op if r else "none", r))
        n -= r
    return Schedule(tuple(blocks), **options)


def allocate(
    config: ViTConfig,
    ops: Sequence[str],
    budget: float | None = None,
    *,
    target_gflops: float | None = None,
    **options,
) -> Schedule:
    """Choose per-block ``r`` so analytic FLOPs just meet the target (at or below it).

    The overshoot is at most one token in one block, about 0.5 % of the FLOPs of a 197-token
    ViT; models with very few tokens have coarser steps.

    Args:
      ops: one op per block (``"none"`` blocks never reduce).
      budget: fraction of FLOPs to remove, in (0, 1); or give ``target_gflops`` instead.
    """
    if len(ops) != config.depth:
        raise UserError(f"got {len(ops)} ops for a model of depth {config.depth}")
    base = model_flops(config).total
    check_budget(budget, target_gflops)
    if budget is not None:
        target = base * (1.0 - budget)
    else:
        target = target_gflops * 1e9
        if not 0 < target <= base:
            raise BudgetError(
                f"target {target_gflops} GFLOPs out of range: the unreduced model needs {base / 1e9:.4f}"
            )
    flops = lambda s: model_flops(config, s).total
    depth = config.depth
    lo, hi = 0, config.num_tokens
    while lo < hi:  # largest constant r that does not overshoot the target
        mid = (lo + hi + 1) // 2
        if flops(_fill(config, ops, [mid] * depth, **options)) >= target:
            lo = mid
        else:
            hi = mid - 1
    rs = [lo] * depth
    sched = _fill(config, ops, rs, **options)
    while flops(sched) > target:
        progressed = False
        for i in reversed(range(depth)):
            trial = _fill(config, ops, rs[:i] + [rs[i] + 1] + rs[i + 1 :], **options)
            if trial.blocks[i].r > sched.blocks[i].r:
                rs[i] += 1
                sched = trial
                progressed = True
                if flops(sched) <= target:
                    break
        if not progressed:
            break
    if flops(sched) > target:
        most = 1 - flops(_fill(config, ops, [config.num_tokens] * depth, **options)) / base
        raise BudgetError(
            f"cannot reach {target / 1e9:.4f} GFLOPs ({1 - target / base:.1%} fewer FLOPs) with ops "
            f"{sorted(set(ops))}: at most {most:.1%} can be removed"
        )
    return sched


@dataclasses.dataclass(frozen=True)
class Plan:
    schedule: Schedule
    mode: str
    info: dict

    def meta(self, config: ViTConfig) -> dict:
        rep = model_flops(config, self.schedule)
        return {
            "mode": self.mode,
            "gflops": rep.gflops,
            "flops_ratio": rep.total / model_flops(config).total,
            "tokens": list(rep.tokens),
            **self.info,
        }


def plan(
    profile: Profile,
    config: ViTConfig,
    budget: float | None = None,
    *,
    target_gflops: float | None = None,
    mode: str = "per_block",
    metric: str = "L_mlp_matched",
    score: Callable[[Schedule], float] | None = None,
    selection: str = "redundancy",
    progress: Callable[[str, float], None] | None = None,
    **options,
) -> Plan:
    """Profile + budget -> :class:`Plan`. ``mode="search"`` needs ``score`` (higher is better).

    ``progress(name, score)`` is called after each search candidate is scored.
    ``selection="importance"`` makes the chosen ops pick their source tokens by importance (CLS
    attention) instead of redundancy; in search mode both selections are candidates regardless.
    """
    if len(profile.blocks) != config.depth:
        raise UserError(f"profile has {len(profile.blocks)} blocks, the model has depth {config.depth}")
    check_budget(budget, target_gflops)
    if selection not in SELECTIONS:
        raise UserError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    alloc = lambda ops: allocate(config, ops, budget, target_gflops=target_gflops, **options)
    if mode in ("per_block", "split"):
        ops, info = choose_ops(profile, mode, metric=metric)
        return Plan(alloc(with_selection(ops, selection)), mode, info | {"selection": selection})
    if mode != "search":
        raise UserError(f"mode must be one of {MODES}, got {mode!r}")
    if score is None:
        raise UserError("mode='search' needs a score function (held-out calibration accuracy)")
    per_ops, per_info = choose_ops(profile, "per_block", metric=metric)
    split_ops, split_info = choose_ops(profile, "split", metric=metric)
    k = split_info["split"]
    candidates = {"per_block": per_ops, f"split@{k}": split_ops}
    for kk in sorted({max(0, k - 3), min(config.depth, k + 3), config.depth // 2}):
        candidates.setdefault(f"split@{kk}", ["prune"] * kk + ["merge_mlerp"] * (config.depth - kk))
    candidates.setdefault("merge_mlerp_all", ["merge_mlerp"] * config.depth)
    candidates.setdefault("prune_all", ["prune"] * config.depth)
    candidates["per_block+importance"] = with_selection(per_ops, "importance")
    candidates[f"split@{k}+importance"] = with_selection(split_ops, "importance")
    unique: dict[str, list[str]] = {}
    for name, ops in candidates.items():  # identical op lists (e.g. split@0 = all MLERP) score once
        if ops not in unique.values():
            unique[name] = ops
    candidates = unique
    scores = {}
    best = None
    failures = []
    for name, ops in candidates.items():
        try:
            sched = alloc(ops)
        except BudgetError as e:
            failures.append(f"{name}: {e}")
            continue
        scores[name] = float(score(sched))
        if progress:
            progress(name, scores[name])
        if best is None or scores[name] > scores[best[0]]:
            best = (name, sched)
    if best is None:
        raise BudgetError("no candidate schedule meets the budget; " + "; ".join(failures))
    info = {"threshold": per_info["threshold"], "metric": metric, "chosen": best[0], "scores": scores}
    return Plan(best[1], "search", info)
