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

:func:`solve` (``mode="fidelity"``, the default) goes further: it chooses op and ``r`` per block for
the budget by fidelity to the unreduced model on calibration images, with these profile plans and
ToMe's schedules among its candidates.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Sequence

import numpy as np

from tofu_jax import reduction
from tofu_jax.errors import UserError
from tofu_jax.flops import model_flops
from tofu_jax.matching import max_reduction
from tofu_jax.models.vit import ViTConfig
from tofu_jax.profiler import PROFILE_METRICS, Profile
from tofu_jax.schedule import BlockReduction, Schedule

MODES = ("fidelity", "per_block", "split")
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


def target_flops(config: ViTConfig, budget: float | None, target_gflops: float | None) -> float:
    """Per-image FLOPs a plan must stay at or under, from a fraction removed or a GFLOPs target."""
    check_budget(budget, target_gflops)
    base = model_flops(config).total
    if budget is not None:
        return base * (1.0 - budget)
    if not target_gflops * 1e9 <= base:
        raise BudgetError(
            f"target {target_gflops} GFLOPs out of range: the unreduced model needs {base / 1e9:.4f}"
        )
    return target_gflops * 1e9


def _fill(config: ViTConfig, ops: Sequence[str], rs: Sequence[int], **options) -> Schedule:
    """Schedule with ``rs`` clamped to what each block can remove."""
    n, protected = config.num_tokens, config.num_prefix
    blocks = []
    for op, r in zip(ops, rs, strict=True):
        r = min(int(r), reduction.limit(op, n, protected))
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
    target = target_flops(config, budget, target_gflops)
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


# --- the fidelity solver ---------------------------------------------------------------------------
# Local search keeps a change only if it lowers the KL by this fraction: smaller gains are within the
# noise of a few hundred calibration images and would spend evaluations on overfitting them.
MIN_GAIN = 0.01
SOLVER_OPS = ("prune", "merge_avg", "merge_mlerp", "prune_importance", "merge_importance_mlerp")


@dataclasses.dataclass(frozen=True)
class SolverConfig:
    """Knobs of :func:`solve`.

    Attributes:
      ops: ops the solver may give a block.
      fractions: removal fractions (of a block's non-protected tokens) probed per block and op.
      probe_images: leading calibration images used for the per-block probes (the end-to-end
        scores use all of them).
      search_evals: end-to-end evaluations spent on local search after the candidates.
    """

    ops: tuple[str, ...] = SOLVER_OPS
    fractions: tuple[float, ...] = (0.15, 0.3, 0.5)
    probe_images: int = 32
    search_evals: int = 36

    def __post_init__(self):
        unknown = set(self.ops) - set(SOLVER_OPS) - {"merge_importance_avg"}
        if unknown or not self.ops:
            raise UserError(
                f"solver ops must be a non-empty subset of {SOLVER_OPS + ('merge_importance_avg',)}"
            )
        if not self.fractions or any(not 0 < f <= 0.5 for f in self.fractions):
            raise UserError(f"probe fractions must lie in (0, 0.5], got {self.fractions}")
        if self.probe_images < 1 or self.search_evals < 0:
            raise UserError("probe_images must be >= 1 and search_evals >= 0")


class _CostModel:
    """Additive surrogate of the KL of a schedule: sum over blocks of the probed single-block KL at the
    block's removal fraction ``r / (n_in - protected)`` (linear between probes, 0 at no removal)."""

    def __init__(self, table: np.ndarray, ops: Sequence[str], fractions: Sequence[float], protected: int):
        self.table, self.ops, self.protected = table, list(ops), protected
        self.xs = np.concatenate([[0.0], np.asarray(fractions, np.float64)])
        self.max_fraction = float(self.xs[-1])

    def block(self, block: int, op: str, r, n_in):
        """Surrogate cost of ``r`` removals (scalar or array) from ``n_in`` tokens; inf where not probed."""
        ys = np.concatenate([[0.0], self.table[block, self.ops.index(op)]])
        frac = np.asarray(r, np.float64) / np.maximum(np.asarray(n_in, np.float64) - self.protected, 1)
        cost = np.interp(frac, self.xs, ys)
        return np.where(frac <= self.max_fraction + 1e-9, cost, np.inf)

    def total(self, ops: Sequence[str], rs: Sequence[int], num_tokens: int) -> float:
        n, cost = num_tokens, 0.0
        for i, (op, r) in enumerate(zip(ops, rs, strict=True)):
            if r:
                cost += float(self.block(i, op, r, n))
            n -= r
        return cost


def _schedule(ops: Sequence[str], rs: Sequence[int], options: dict) -> Schedule:
    return Schedule(
        tuple(BlockReduction(op if r else "none", int(r)) for op, r in zip(ops, rs, strict=True)), **options
    )


def _valid(config: ViTConfig, ops, rs) -> bool:
    n = config.num_tokens
    for op, r in zip(ops, rs, strict=True):
        if r < 0 or r > reduction.limit(op, n, config.num_prefix):
            return False
        n -= r
    return True


class _DynamicProgram:
    """Minimise ``surrogate + lam * FLOPs`` over per-block (op, r) exactly, by dynamic programming over
    the token count after each block. Tables are built once; each ``lam`` costs a few thousand
    vector operations."""

    def __init__(self, config: ViTConfig, model: _CostModel, ops: Sequence[str], metric: str):
        from tofu_jax.flops import block_flops

        self.config, self.ops = config, list(ops)
        n0, protected = config.num_tokens, config.num_prefix
        self.sizes = sizes = np.arange(n0 + 1)
        self.max_r = max_reduction(n0, protected)  # per-block r up to the bipartite limit, for every op
        self.keep_flops = block_flops(sizes, sizes, config)
        limits = {op: np.array([reduction.limit(op, int(n), protected) for n in sizes]) for op in self.ops}
        flops = {
            op: [block_flops(sizes[r:], sizes[r:] - r, config, op, metric) for r in range(1, self.max_r + 1)]
            for op in self.ops
        }
        self.tables = []  # [block][op][r - 1] = (surrogate cost, FLOPs) over n_in = r..n0
        for block in range(config.depth):
            per_op = []
            for op in self.ops:
                rows = []
                for r in range(1, self.max_r + 1):
                    cost = model.block(block, op, r, sizes[r:])
                    rows.append((np.where(r <= limits[op][r:], cost, np.inf), flops[op][r - 1]))
                per_op.append(rows)
            self.tables.append(per_op)

    def solve(self, lam: float) -> tuple[list[str], list[int]]:
        n0 = self.config.num_tokens
        value = np.full(n0 + 1, np.inf)
        value[n0] = 0.0
        back = []
        for per_op in self.tables:
            new = value + lam * self.keep_flops
            choice = np.zeros((n0 + 1, 2), np.int64)  # (op index + 1, r); 0 = no reduction
            for k, rows in enumerate(per_op):
                for r, (cost, flops) in enumerate(rows, start=1):
                    total = value[r:] + cost + lam * flops
                    better = total < new[: n0 + 1 - r]
                    new[: n0 + 1 - r] = np.where(better, total, new[: n0 + 1 - r])
                    choice[: n0 + 1 - r][better] = (k + 1, r)
            back.append(choice)
            value = new
        n = int(np.argmin(value))
        ops, rs = [], []
        for choice in reversed(back):
            k, r = choice[n]
            ops.append(self.ops[k - 1] if k else "none")
            rs.append(int(r))
            n += int(r)
        return ops[::-1], rs[::-1]


class _Search:
    """The state of one :func:`solve` call: surrogate, budget and the end-to-end objective."""

    def __init__(self, config, emulator, reference, model, target, options, progress):
        self.config, self.emulator, self.reference = config, emulator, reference
        self.model, self.target, self.options = model, target, options
        self.progress = progress or (lambda text: None)
        self.scored: dict[str, dict] = {}  # schedule.describe() -> fidelity

    def flops(self, ops, rs) -> float:
        return model_flops(self.config, _schedule(ops, rs, self.options)).total

    def score(self, schedule: Schedule) -> dict:
        from tofu_jax.emulate import fidelity

        key = schedule.describe()
        if key not in self.scored:
            fid = fidelity(self.reference, self.emulator.logits(schedule))
            self.scored[key] = {"kl": fid["kl"], "agreement": fid["agreement"]}
        return self.scored[key]

    def fit(self, ops, rs, frozen=()) -> list[int] | None:
        """Move ``rs`` one token at a time to FLOPs at or just under the target, cheapest surrogate
        cost per FLOP first; None if the target cannot be met with these ops."""
        n0, rs = self.config.num_tokens, list(rs)
        cur_f, cur_c = self.flops(ops, rs), self.model.total(ops, rs, n0)
        free = [i for i in range(len(rs)) if i not in frozen and ops[i] != "none"]
        while cur_f > self.target:
            best = None
            for i in free:
                trial = rs[:i] + [rs[i] + 1] + rs[i + 1 :]
                if not _valid(self.config, ops, trial):
                    continue
                f, c = self.flops(ops, trial), self.model.total(ops, trial, n0)
                if np.isfinite(c) and f < cur_f and (best is None or (c - cur_c) / (cur_f - f) < best[0]):
                    best = ((c - cur_c) / (cur_f - f), trial, f, c)
            if best is None:
                return None
            _, rs, cur_f, cur_c = best
        while True:
            best = None
            for i in free:
                if not rs[i]:
                    continue
                trial = rs[:i] + [rs[i] - 1] + rs[i + 1 :]
                f = self.flops(ops, trial)
                if f > self.target or not _valid(self.config, ops, trial):
                    continue
                c = self.model.total(ops, trial, n0)
                gain = (cur_c - c) / max(f - cur_f, 1.0)
                if best is None or gain > best[0]:
                    best = (gain, trial, f, c)
            if best is None:
                return rs
            _, rs, cur_f, cur_c = best


def _probe(emulator, reference, config, solver: SolverConfig, options, progress) -> np.ndarray:
    """KL of reducing one block alone: ``[depth, ops, fractions]``."""
    from tofu_jax.emulate import fidelity

    n0, protected = config.num_tokens, config.num_prefix
    table = np.zeros((config.depth, len(solver.ops), len(solver.fractions)))
    for block in range(config.depth):
        for k, op in enumerate(solver.ops):
            for j, frac in enumerate(solver.fractions):
                r = min(reduction.limit(op, n0, protected), max(1, round(frac * (n0 - protected))))
                rs = [0] * config.depth
                rs[block] = r
                table[block, k, j] = fidelity(
                    reference, emulator.logits(_schedule([op] * config.depth, rs, options))
                )["kl"]
        progress(f"probed block {block + 1}/{config.depth}")
    return np.maximum(np.maximum.accumulate(table, axis=-1), 0.0)  # removing more never costs less


def baseline_schedules(
    config: ViTConfig,
    budget: float | None = None,
    *,
    target_gflops: float | None = None,
    profile: Profile | None = None,
    **options,
) -> dict[str, Schedule]:
    """The schedules the planner competes with, at the budget (those that can meet it).

    ``tome``: ToMe's merge in every block, ``r`` as constant as the budget allows (:func:`allocate`);
    ``tome_decreasing``: ToMe's decreasing schedule (``inflect=-0.5``, clamped as ToMe does) with the
    smallest ``r`` that meets the budget; ``merge_mlerp`` / ``prune``: one op everywhere;
    ``half_split``: the paper's prune-then-MLERP split at half depth; ``per_block``: the linearity
    profile's plan (with ``profile``).
    """
    from tofu_jax.schedule import tome_clamped

    target = target_flops(config, budget, target_gflops)
    options = {"prop_attn": True, **options}
    depth, out = config.depth, {}
    half = depth // 2
    families = {
        "tome": ["merge_avg"] * depth,
        "merge_mlerp": ["merge_mlerp"] * depth,
        "prune": ["prune"] * depth,
        "half_split": ["prune"] * half + ["merge_mlerp"] * (depth - half),
    }
    if profile is not None:
        families["per_block"] = choose_ops(profile, "per_block")[0]
    for name, ops in families.items():
        try:
            out[name] = allocate(config, ops, budget, target_gflops=target_gflops, **options)
        except BudgetError:
            continue
    for r in range(1, config.num_tokens):
        s = tome_clamped(depth, r, config.num_tokens, config.num_prefix, inflect=-0.5, **options)
        if model_flops(config, s).total <= target:
            out["tome_decreasing"] = s
            break
    return out


def _local_search(search: _Search, ops, rs, evals: int) -> tuple[list[str], list[int], int]:
    """First-improvement search scored end to end: change a block's op to the surrogate's next best,
    or move ``delta`` tokens of removal into or out of a block (the other blocks refit the budget)."""
    config, model = search.config, search.model
    n0, protected = config.num_tokens, config.num_prefix
    delta = max(1, round(0.04 * (n0 - protected)))
    best = search.score(_schedule(ops, rs, search.options))["kl"]
    spent = 0

    def moves(ops, rs):
        counts = _schedule(ops, rs, search.options).token_counts(n0, protected)
        for i in range(config.depth):
            if rs[i]:
                costs = {op: float(model.block(i, op, rs[i], counts[i])) for op in model.ops if op != ops[i]}
                alt = min(costs, key=costs.get)
                yield ops[:i] + [alt] + ops[i + 1 :], rs, (i,)
        for i in range(config.depth):
            for step in (delta, -delta):
                trial = rs[:i] + [max(0, rs[i] + step)] + rs[i + 1 :]
                yield ops, trial, (i,)

    improved = True
    while improved and spent < evals:
        improved = False
        for new_ops, new_rs, frozen in moves(ops, rs):
            if spent >= evals:
                break
            new_ops = [o if o != "none" else ops[i] for i, o in enumerate(new_ops)]
            if not _valid(config, new_ops, new_rs):
                continue
            fitted = search.fit(new_ops, new_rs, frozen)
            if fitted is None:
                continue
            schedule = _schedule(new_ops, fitted, search.options)
            if schedule.describe() in search.scored:
                continue
            kl = search.score(schedule)["kl"]
            spent += 1
            if kl < best * (1 - MIN_GAIN):
                search.progress(f"local search: {schedule.describe()}  KL {kl:.3g}")
                ops, rs, best, improved = new_ops, fitted, kl, True
                break
    return ops, rs, spent


def solve(
    config: ViTConfig,
    params: dict,
    images,
    budget: float | None = None,
    *,
    target_gflops: float | None = None,
    profile: Profile | None = None,
    solver: SolverConfig = SolverConfig(),
    progress: Callable[[str], None] | None = None,
    **options,
) -> Plan:
    """The ToFu planner: per-block op and ``r`` for a FLOPs budget, by fidelity to the unreduced model.

    1. **Probe**: the KL(unreduced || reduced) of reducing each block alone, per op and removal
       fraction, on the first ``solver.probe_images`` calibration images.
    2. **Allocate**: an exact dynamic program over the token count after each block minimises the
       summed probe costs plus ``lambda`` x FLOPs; ``lambda`` is bisected to the budget and a greedy
       refit lands the analytic FLOPs at or just under the target.
    3. **Select**: ToMe's constant and decreasing schedules, the single-op schedules, the paper's half
       split (and the profile's per-block plan) compete with it on the end-to-end KL over all
       calibration images, computed by :class:`~tofu_jax.emulate.Emulator` (no compile per schedule).
    4. **Refine**: local search from the best of them, scored end to end.

    Args:
      images: ``[B, H, W, C]`` calibration images, normalised for the model; never the test split
        (no labels are used).
      budget: fraction of FLOPs to remove, or ``target_gflops``.
      profile: optional linearity profile: adds its per-block plan as a candidate and reports, per
        block, whether the chosen op agrees with "prune where non-linear, merge where linear".
      progress: called with one line of text per stage.
    Returns:
      A :class:`Plan` whose ``info`` holds the objective (KL, top-1 agreement), every candidate
      scored, the probe table and the planning time.
    """
    import time

    from tofu_jax.emulate import Emulator
    from tofu_jax.models.vit import ViT

    t0 = time.time()
    target = target_flops(config, budget, target_gflops)
    say = progress or (lambda text: None)
    options = {"prop_attn": True, **options}
    model = ViT(config)
    emulator = Emulator(model, params, images)
    probe_em = emulator
    if solver.probe_images < len(images):
        probe_em = Emulator(model, params, images[: solver.probe_images])
    unreduced = Schedule(tuple(BlockReduction() for _ in range(config.depth)), **options)
    say(f"probing {config.depth} blocks x {len(solver.ops)} ops x {len(solver.fractions)} fractions "
        f"on {min(len(images), solver.probe_images)} images")  # fmt: skip
    table = _probe(probe_em, probe_em.logits(unreduced), config, solver, options, say)
    surrogate = _CostModel(table, solver.ops, solver.fractions, config.num_prefix)
    search = _Search(config, emulator, emulator.logits(unreduced), surrogate, target, options, say)

    program = _DynamicProgram(config, surrogate, solver.ops, options.get("metric", "keys"))
    fallback = [solver.ops[int(np.argmin(table[b, :, 0]))] for b in range(config.depth)]
    lo, hi = -20.0, 0.0  # log10 lambda: bisect to the smallest that meets the budget
    for _ in range(40):
        mid = (lo + hi) / 2
        ops, rs = program.solve(10.0**mid)
        if search.flops(ops, rs) <= target:
            hi = mid
        else:
            lo = mid
    ops, rs = program.solve(10.0**hi)
    ops = [o if o != "none" else f for o, f in zip(ops, fallback, strict=True)]
    candidates = {}
    fitted = search.fit(ops, rs)
    if fitted is not None:
        candidates["solver"] = (ops, fitted)
    for name, s in baseline_schedules(
        config, budget, target_gflops=target_gflops, profile=profile, **options
    ).items():
        candidates[name] = (
            [b.op if b.op != "none" else "merge_avg" for b in s.blocks],
            [b.r for b in s.blocks],
        )
    if not candidates:
        raise BudgetError(f"no schedule of ops {solver.ops} reaches {target / 1e9:.4f} GFLOPs")
    scores = {}
    for name, (c_ops, c_rs) in candidates.items():
        s = _schedule(c_ops, c_rs, options)
        scores[name] = {"schedule": s.describe(), "gflops": model_flops(config, s).gflops, **search.score(s)}
        say(f"candidate {name:<16s} KL {scores[name]['kl']:.4g}  agreement {scores[name]['agreement']:.2%}  "
            f"{s.describe()}")  # fmt: skip
    start = min(scores, key=lambda n: scores[n]["kl"])
    ops, rs = candidates[start]
    ops = [o if o != "none" else f for o, f in zip(ops, fallback, strict=True)]
    ops, rs, spent = _local_search(search, ops, rs, solver.search_evals)
    schedule = _schedule(ops, rs, options)
    final = search.score(schedule)
    chosen = start if schedule.describe() == scores[start]["schedule"] else f"{start}+local_search"
    info = {
        "objective": "mean KL(unreduced || reduced) on calibration images",
        "kl": final["kl"],
        "agreement": final["agreement"],
        "chosen": chosen,
        "candidates": scores,
        "calibration_images": int(len(images)),
        "evaluations": len(search.scored) + table.size,
        "local_search_evaluations": spent,
        "probe": {"ops": list(solver.ops), "fractions": list(solver.fractions), "kl": table.tolist()},
        "seconds": time.time() - t0,
    }
    if profile is not None:
        info["linearity"] = linearity_agreement(profile, schedule)
    say(f"chose {chosen}: KL {final['kl']:.4g}, agreement {final['agreement']:.2%} ({info['seconds']:.0f}s)")
    return Plan(schedule, "fidelity", info)


def linearity_agreement(profile: Profile, schedule: Schedule, metric: str = "L_mlp_matched") -> dict:
    """Per block: does the op follow "prune where non-linear, merge where linear" (Otsu threshold)?"""
    values = profile.metric(metric)
    tau = otsu_threshold(values)
    blocks = []
    for i, (value, b) in enumerate(zip(values, schedule.blocks, strict=True)):
        family = "merge" if "merge" in b.op else "prune" if "prune" in b.op else "none"
        expected = "merge" if value <= tau else "prune"
        blocks.append({"block": i, metric: float(value), "expected": expected, "op": b.op, "r": b.r,
                       "agrees": None if family == "none" else family == expected})  # fmt: skip
    judged = [b["agrees"] for b in blocks if b["agrees"] is not None]
    return {"metric": metric, "threshold": tau, "blocks": blocks,
            "agreement": (sum(judged) / len(judged)) if judged else None}  # fmt: skip


def plan(
    profile: Profile | None,
    config: ViTConfig,
    budget: float | None = None,
    *,
    target_gflops: float | None = None,
    mode: str = "fidelity",
    metric: str = "L_mlp_matched",
    selection: str = "redundancy",
    params: dict | None = None,
    images=None,
    solver: SolverConfig = SolverConfig(),
    progress: Callable[[str], None] | None = None,
    **options,
) -> Plan:
    """Profile and/or calibration images + budget -> :class:`Plan`.

    ``mode="fidelity"`` (default) is :func:`solve` and needs ``params`` and calibration ``images``;
    ``"per_block"`` and ``"split"`` follow the linearity profile alone (:func:`choose_ops`), with
    ``selection="importance"`` for importance-selected sources, and need no images.
    """
    if mode not in MODES:
        raise UserError(f"mode must be one of {MODES}, got {mode!r}")
    if profile is not None and len(profile.blocks) != config.depth:
        raise UserError(f"profile has {len(profile.blocks)} blocks, the model has depth {config.depth}")
    check_budget(budget, target_gflops)
    if mode == "fidelity":
        if params is None or images is None or not len(images):
            raise UserError("mode='fidelity' needs the model's params and calibration images")
        return solve(config, params, images, budget, target_gflops=target_gflops, profile=profile,
                     solver=solver, progress=progress, **options)  # fmt: skip
    if profile is None:
        raise UserError(f"mode={mode!r} needs a linearity profile")
    if selection not in SELECTIONS:
        raise UserError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    ops, info = choose_ops(profile, mode, metric=metric)
    schedule = allocate(
        config, with_selection(ops, selection), budget, target_gflops=target_gflops, **options
    )
    return Plan(schedule, mode, info | {"selection": selection})
