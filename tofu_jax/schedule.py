"""Static per-block reduction schedules: which op each block applies and how many tokens it removes.

A :class:`Schedule` is immutable and hashable, so it can be a static argument of ``jax.jit``: one
compiled program per (schedule, input shape). Token counts are plain Python ints derived here.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path

from tofu_jax import reduction
from tofu_jax.errors import UserError
from tofu_jax.reduction import OPS

SCHEDULE_VERSION = 1


class ScheduleError(UserError):
    """A schedule that cannot run on the given model (wrong length, unknown op, too many tokens)."""


@dataclasses.dataclass(frozen=True)
class BlockReduction:
    """What one block does between its attention and its MLP."""

    op: str = "none"
    r: int = 0

    def __post_init__(self):
        if self.op not in OPS:
            raise ScheduleError(f"unknown op {self.op!r}; choose from {', '.join(OPS)}")
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r < 0:
            raise ScheduleError(f"r must be a non-negative int, got {self.r!r}")
        if self.op == "none" and self.r != 0:
            raise ScheduleError(f"op 'none' needs r=0, got r={self.r}")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Per-block reductions plus global options.

    Attributes:
      blocks: one :class:`BlockReduction` per transformer block.
      prop_attn: add ``log(size)`` to attention logits (proportional attention).
      mlerp_norm: ``"max"`` or ``"weighted_mean"`` (norm rule of MLERP merges).
      metric: similarity used for matching: ``"keys"`` (keys averaged over heads) or ``"tokens"``.
    """

    blocks: tuple[BlockReduction, ...]
    prop_attn: bool = True
    mlerp_norm: str = "max"
    metric: str = "keys"

    def __post_init__(self):
        object.__setattr__(self, "blocks", tuple(self.blocks))
        for i, b in enumerate(self.blocks):
            if not isinstance(b, BlockReduction):
                raise ScheduleError(f"block {i}: expected BlockReduction, got {type(b).__name__}")
        if self.mlerp_norm not in ("max", "weighted_mean"):
            raise ScheduleError(f"mlerp_norm must be 'max' or 'weighted_mean', got {self.mlerp_norm!r}")
        if self.metric not in ("keys", "tokens"):
            raise ScheduleError(f"metric must be 'keys' or 'tokens', got {self.metric!r}")

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def total_r(self) -> int:
        return sum(b.r for b in self.blocks)

    def replace(self, **kw) -> Schedule:
        return dataclasses.replace(self, **kw)

    def describe(self) -> str:
        """Compact one-line form, e.g. ``prune:8x6,merge_mlerp:8x6``."""
        runs: list[list] = []
        for b in self.blocks:
            key = f"{b.op}:{b.r}" if b.op != "none" else "none"
            if runs and runs[-1][0] == key:
                runs[-1][1] += 1
            else:
                runs.append([key, 1])
        return ",".join(f"{k}x{n}" for k, n in runs)

    # --- validation -------------------------------------------------------------------------------
    def token_counts(self, num_tokens: int, protected: int = 1) -> list[int]:
        """Tokens entering each block's MLP after its reduction; raises :class:`ScheduleError`.

        Args:
          num_tokens: tokens entering block 0 (patches + prefix tokens).
          protected: prefix tokens that are never removed.
        Returns:
          ``depth + 1`` ints: ``[N_in, N after block 0, ..., N after block depth-1]``.
        """
        counts = [num_tokens]
        n = num_tokens
        for i, b in enumerate(self.blocks):
            limit = reduction.limit(b.op, n, protected)
            if b.r > limit:
                raise ScheduleError(
                    f"block {i} ({b.op}) asks to remove r={b.r} tokens but has {n} tokens "
                    f"({protected} protected); at most {limit} can be removed there"
                )
            n -= b.r
            counts.append(n)
        return counts

    def validate(self, depth: int, num_tokens: int, protected: int = 1) -> list[int]:
        """Check the schedule against a model before tracing; returns :meth:`token_counts`."""
        if self.depth != depth:
            raise ScheduleError(f"schedule has {self.depth} blocks but the model has depth {depth}")
        return self.token_counts(num_tokens, protected)

    # --- JSON -------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "version": SCHEDULE_VERSION,
            "blocks": [{"op": b.op, "r": b.r} for b in self.blocks],
            "prop_attn": self.prop_attn,
            "mlerp_norm": self.mlerp_norm,
            "metric": self.metric,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Schedule:
        if not isinstance(d, dict):
            raise ScheduleError(f"schedule JSON must be an object, got {type(d).__name__}")
        version = d.get("version")
        if type(version) is not int or version != SCHEDULE_VERSION:
            raise ScheduleError(f"unsupported schedule version {version!r} (expected {SCHEDULE_VERSION})")
        known = {"version", "blocks", "prop_attn", "mlerp_norm", "metric", "meta"}
        extra = set(d) - known
        if extra:
            raise ScheduleError(f"unknown schedule fields: {sorted(extra)}")
        if not isinstance(d.get("blocks"), list):
            raise ScheduleError("schedule JSON needs a 'blocks' list")
        blocks = []
        for i, b in enumerate(d["blocks"]):
            if not isinstance(b, dict) or set(b) - {"op", "r"}:
                raise ScheduleError(f"block {i}: expected {{'op': ..., 'r': ...}}, got {b!r}")
            try:
                blocks.append(BlockReduction(op=b.get("op", "none"), r=b.get("r", 0)))
            except ScheduleError as e:
                raise ScheduleError(f"block {i}: {e}") from None
        if not isinstance(d.get("prop_attn", True), bool):
            raise ScheduleError(f"schedule field 'prop_attn' must be true or false, got {d['prop_attn']!r}")
        return cls(
            blocks=tuple(blocks),
            prop_attn=d.get("prop_attn", True),
            mlerp_norm=d.get("mlerp_norm", "max"),
            metric=d.get("metric", "keys"),
        )

    def to_json(self, path: str | Path | None = None, meta: dict | None = None) -> str:
        d = self.to_dict()
        if meta:
            d["meta"] = meta
        text = json.dumps(d, indent=1)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_compact(cls, text: str, **options) -> Schedule:
        """Parse :meth:`describe`'s form, e.g. ``prune:4x5,merge_mlerp:5x7`` or ``none,prune:8x11``.

        Each comma-separated run is ``op:r`` (or ``none``), optionally ``xN`` for N blocks in a row.
        """
        blocks: list[BlockReduction] = []
        for run in text.split(","):
            m = re.fullmatch(r"\s*([a-z_]+?)(?::(\d+))?(?:x(\d+))?\s*", run)
            if not m or (m.group(2) is None) != (m.group(1) == "none") or int(m.group(3) or 1) < 1:
                raise ScheduleError(
                    f"cannot read {run.strip()!r} in schedule {text!r}: expected op:r or none, optionally "
                    "followed by xN (e.g. prune:4x5,merge_mlerp:5x7)"
                )
            op, r, count = m.group(1), int(m.group(2) or 0), int(m.group(3) or 1)
            blocks.extend([BlockReduction(op, r)] * count)
        return cls(tuple(blocks), **options)

    @classmethod
    def load(cls, source: str | Path) -> Schedule:
        """A schedule JSON file, JSON text, or the compact form of :meth:`from_compact`."""
        text = str(source)
        if text.lstrip().startswith("{") or Path(text).suffix == ".json" or _is_file(text):
            return cls.from_json(source)
        return cls.from_compact(text)

    @classmethod
    def from_json(cls, source: str | Path) -> Schedule:
        """Parse a JSON string or read a ``.json`` file."""
        text = str(source)
        if not text.lstrip().startswith("{"):
            try:
                text = Path(source).read_text()
            except OSError as e:
                raise ScheduleError(f"cannot read schedule file {source}: {e.strerror}") from None
            except UnicodeDecodeError:
                raise ScheduleError(f"schedule file {source} is not text (expected JSON)") from None
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise ScheduleError(f"schedule is not valid JSON: {e}") from None


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except OSError:  # e.g. a long compact schedule is no valid file name
        return False


# --- constructors ---------------------------------------------------------------------------------
def none(depth: int) -> Schedule:
    """No reduction anywhere."""
    return Schedule(tuple(BlockReduction() for _ in range(depth)))


def from_list(ops: Sequence[str], rs: Sequence[int], **options) -> Schedule:
    """Explicit per-block ops and r values."""
    if len(ops) != len(rs):
        raise ScheduleError(f"got {len(ops)} ops but {len(rs)} r values")
    return Schedule(
        tuple(BlockReduction(op if r else "none", int(r)) for op, r in zip(ops, rs, strict=True)),
        **options,
    )


def constant(depth: int, r: int, op: str = "merge_avg", **options) -> Schedule:
    """The same ``op`` and ``r`` in every block (ToMe's default)."""
    return from_list([op] * depth, [r] * depth, **options)


def tome_r(depth: int, r: int, inflect: float = 0.0) -> list[int]:
    """ToMe's ``parse_r`` for ``(r, inflect)``: a linear ramp from ``int(r(1 - inflect))`` to its
    mirror ``2r - int(r(1 - inflect))``, each entry truncated (the start value is truncated first)."""
    start = int(r * (1.0 - inflect))
    step = (2 * r - 2 * start) / max(depth - 1, 1)
    return [int(start + step * i) for i in range(depth)]


def tome_inflect(depth: int, r: int, inflect: float = -0.5, op: str = "merge_avg", **options) -> Schedule:
    """ToMe's linear schedule (:func:`tome_r`); ``inflect=-0.5`` is ToMe's decreasing schedule,
    0 constant, +0.5 increasing. Strict: a block asked for more tokens than it has fails validation."""
    return from_list([op] * depth, tome_r(depth, r, inflect), **options)


def tome_clamped(
    depth: int,
    r: int,
    num_tokens: int,
    protected: int = 1,
    inflect: float = 0.0,
    op: str = "merge_avg",
    **options,
) -> Schedule:
    """ToMe's runtime behaviour: each block removes ``min(r_i, (N_i - protected) // 2)`` tokens, so a
    large ``r`` (ViT-B/16 with r = 16) shrinks in the last blocks instead of being refused."""
    rs, n = [], num_tokens
    for want in tome_r(depth, r, inflect):
        rs.append(min(want, reduction.limit(op, n, protected)))
        n -= rs[-1]
    return from_list([op] * depth, rs, **options)


def tofu_split(depth: int, r: int, split_block: int, merge_op: str = "merge_mlerp", **options) -> Schedule:
    """The paper-style ToFu schedule: prune in blocks ``< split_block``, merge from there on."""
    if not 0 <= split_block <= depth:
        raise ScheduleError(f"split_block must be in 0..{depth}, got {split_block}")
    ops = ["prune"] * split_block + [merge_op] * (depth - split_block)
    return from_list(ops, [r] * depth, **options)
