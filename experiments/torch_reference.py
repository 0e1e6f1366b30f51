"""PyTorch references for the benchmarks and parity tests: timm behind a torchvision placeholder, and
a ToMe-style token merge for timm ViTs written from the published algorithm.

The ToMe reference follows Bolya et al. (ICLR 2023) as ``docs/`` describes it: after each block's
attention, bipartite soft matching on the keys averaged over heads (alternate tokens split into sets
A and B, cosine similarity, each A token's best B partner, the ``r`` best edges merged, CLS never
merged), a size-weighted average into the partner, and proportional attention (``log(size)`` added to
the attention logits). It runs on timm's own fused attention (``scaled_dot_product_attention``).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types


class _Placeholder:
    """Stands for any torchvision object timm touches at import time (never called by a ViT)."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Placeholder()

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder()

    def __mro_entries__(self, bases):
        return (object,)


class _PlaceholderModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder()


class _TorchvisionStub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _PlaceholderModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def import_timm():
    """Import timm; without a working torchvision, behind a placeholder used only during the import.

    timm imports torchvision (transforms, datasets, FrozenBatchNorm2d) at import time but its
    VisionTransformer never uses it. PyPI's torchvision wheels are CUDA builds that fail to load
    against the CPU torch wheel (``operator torchvision::nms does not exist``), so the parity extra
    installs timm with ``--no-deps``; the placeholder modules are removed again after the import.
    """
    try:
        import torchvision  # noqa: F401
    except Exception:  # ImportError, or RuntimeError from a CUDA torchvision on CPU torch
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    else:
        return importlib.import_module("timm")
    stub = _TorchvisionStub()
    sys.meta_path.insert(0, stub)
    try:
        return importlib.import_module("timm")
    finally:
        sys.meta_path.remove(stub)
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            if isinstance(sys.modules[name], _PlaceholderModule):
                del sys.modules[name]


def tome_forward(timm_model, images, r: int):
    """Logits of a timm ``VisionTransformer`` with ToMe (constant ``r`` per block, clipped to half the
    non-CLS tokens as ToMe does) and proportional attention. ``images``: ``[B, C, H, W]``."""
    import torch
    import torch.nn.functional as F

    m = timm_model
    x = m._pos_embed(m.patch_embed(images))
    x = m.norm_pre(m.patch_drop(x))
    size = torch.ones(x.shape[0], x.shape[1], 1, dtype=x.dtype, device=x.device)
    for blk in m.blocks:
        attn = blk.attn
        b, n, c = x.shape
        h = attn.num_heads
        y = blk.norm1(x)
        q, k, v = attn.qkv(y).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        bias = size.log()[:, None, None, :, 0].to(q.dtype)  # [B, 1, 1, N]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        y = attn.proj(y.transpose(1, 2).reshape(b, n, c))
        x = x + blk.ls1(y)
        rr = min(r, (n - 1) // 2)
        if rr > 0:
            x, size = _merge(x, size, k.mean(1), rr)
        x = x + blk.ls2(blk.mlp(blk.norm2(x)))
    x = m.norm(x)
    return m.head(x[:, 0])


def _merge(x, size, metric, r: int):
    """Bipartite soft matching + size-weighted average; CLS (index 0, in set A) never merges."""
    import torch

    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[:, ::2], metric[:, 1::2]
    scores = a @ b.transpose(-1, -2)
    scores[:, 0, :] = -torch.inf
    best, partner = scores.max(dim=-1)
    order = best.argsort(dim=-1, descending=True)[..., None]
    src, unm = order[:, :r], order[:, r:].sort(dim=1)[0]  # ascending: CLS stays first
    dst = partner[..., None].gather(1, src)

    def fold(t):
        ta, tb = t[:, ::2], t[:, 1::2]
        c = t.shape[-1]
        kept = ta.gather(1, unm.expand(-1, -1, c))
        moved = ta.gather(1, src.expand(-1, -1, c))
        return kept, tb.scatter_reduce(1, dst.expand(-1, -1, c), moved, reduce="sum")

    kept_x, b_x = fold(x * size)
    kept_s, b_s = fold(size)
    s = torch.cat([kept_s, b_s], dim=1)
    return torch.cat([kept_x, b_x], dim=1) / s, s
