"""A deliberately plain NumPy reference of docs/algorithms.md §2-§3 (loops, no vectorised tricks)."""

from __future__ import annotations

import numpy as np


def matching(metric: np.ndarray, r: int, protected: int = 1):
    """Per batch element: (unm, src, dst) A/B-local index lists."""
    out = []
    for k in metric:
        k = k / np.maximum(np.linalg.norm(k, axis=-1, keepdims=True), 1e-6)
        a, b = k[0::2], k[1::2]
        scores = a @ b.T
        for i in range(protected):  # token i is A-local i // 2 (even i) or B-local i // 2 (odd i)
            if i % 2 == 0:
                scores[i // 2, :] = -np.inf
            else:
                scores[:, i // 2] = -np.inf
        best = scores.max(axis=1)
        partner = scores.argmax(axis=1)
        order = np.argsort(-best, kind="stable")
        src = order[:r]
        unm = np.sort(order[r:])
        out.append((unm, src, partner[src]))
    return out


def _join(unm_rows, b_rows, protected):
    """Protected tokens in their original order, then the other kept A rows, then the other B rows."""
    prefix = [unm_rows[i // 2] if i % 2 == 0 else b_rows[i // 2] for i in range(protected)]
    return prefix + unm_rows[(protected + 1) // 2 :] + b_rows[protected // 2 :]


def reduce(x: np.ndarray, size: np.ndarray, plan, op: str, norm: str = "max", protected: int = 1):
    """Apply prune / merge_avg / merge_mlerp with explicit per-destination loops."""
    xs, ss = [], []
    for xb, sb, (unm, src, dst) in zip(x.astype(np.float64), size.astype(np.float64), plan, strict=True):
        a, b = xb[0::2], xb[1::2]
        sa, sbb = sb[0::2], sb[1::2]
        new_b, new_s = [], []
        for j in range(len(b)):
            group = [i for i, d in zip(src, dst, strict=True) if d == j]
            members = [b[j]] + [a[i] for i in group]
            sizes = [sbb[j, 0]] + [sa[i, 0] for i in group]
            if op == "prune" or not group:
                new_b.append(b[j])
                new_s.append(sbb[j, 0])
                continue
            total = sum(sizes)
            avg = sum(s * m for s, m in zip(sizes, members, strict=True)) / total
            if op == "merge_mlerp":
                norms = [np.linalg.norm(m) for m in members]
                target = (
                    max(norms)
                    if norm == "max"
                    else sum(s * n for s, n in zip(sizes, norms, strict=True)) / total
                )
                avg = avg / max(np.linalg.norm(avg), 1e-6) * target
            new_b.append(avg)
            new_s.append(total)
        rows = _join([a[i] for i in unm], new_b, protected)
        srows = _join([sa[i, 0] for i in unm], new_s, protected)
        xs.append(np.stack(rows))
        ss.append(np.array(srows)[:, None])
    return np.stack(xs), np.stack(ss)
