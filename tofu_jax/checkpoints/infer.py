"""The architecture a checkpoint was trained with, read from its parameter shapes (``--model auto``).

Shapes give the patch size, channels, width, depth, MLP width, class count, prefix tokens (CLS,
distillation, registers), LayerScale, ``norm_pre``, the readout (CLS token, pooled with ``fc_norm``,
pooled without CLS, attention-pool head) and the image size (position-embedding rows). Google/big_vision
kernels also give the head count (``(D, H, hd)``). What shapes cannot tell comes from elsewhere, in
:mod:`tofu_jax.models.loading`: the head count of timm checkpoints from their width (timm's sizes) and of
Hugging Face ones from ``config.json``; numerics and the input recipe from the format, timm's
``config.json`` / model name, or Hugging Face's ``preprocessor_config.json``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from tofu_jax.checkpoints.common import CheckpointError

POS = "Transformer/posembed_input/pos_embedding"
_QUERY = "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"
_MLP_IN = "Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"

# Head count of every timm ViT size by width (tiny, wee/pwee, little, small, medium, betwixt, base, large,
# so400m, huge, giant, gigantic): head dimension 64, except 80 (huge), 72 (so400m), 88 and 104.
TIMM_HEADS = {
    192: 3, 256: 4, 320: 5, 384: 6, 512: 8, 640: 10, 768: 12, 1024: 16, 1152: 16, 1280: 16, 1408: 16,
    1664: 16,
}  # fmt: skip


def _square_side(n: int) -> int | None:
    side = math.isqrt(n) if n > 0 else 0
    return side if side > 0 and side * side == n else None


def shape_fields(shapes: Mapping[str, tuple], source: str) -> dict:
    """``ViTConfig`` fields determined by canonical parameter shapes ``{name: shape}``.

    ``num_classes`` is left out when the checkpoint has no head; ``num_heads`` comes from the query
    kernel (right for Google checkpoints; torch formats are converted with one head, so callers
    replace it).
    """

    def need(key: str, rank: int) -> tuple:
        shape = shapes.get(key)
        if shape is None or len(shape) != rank:
            found = "missing" if shape is None else f"of shape {shape}"
            raise CheckpointError(
                f"cannot read the architecture of {source}: {key} is {found}; not a ViT checkpoint of a "
                "supported layout (pass the architecture with --model CONFIG.json)"
            )
        return shape

    patch, patch_w, channels, width = need("embedding/kernel", 4)
    if patch != patch_w:
        raise CheckpointError(f"{source}: non-square {patch}x{patch_w} patches are not supported")
    blocks = {int(m.group(1)) for k in shapes if (m := re.match(r"Transformer/encoderblock_(\d+)/", k))}
    if not blocks or blocks != set(range(len(blocks))):
        raise CheckpointError(f"cannot read the architecture of {source}: blocks {sorted(blocks)}")
    fields: dict = {
        "patch_size": patch,
        "channels": channels,
        "width": width,
        "depth": len(blocks),
        "mlp_dim": need(_MLP_IN, 2)[1],
        "num_heads": need(_QUERY, 3)[1],
        "cls_token": "cls" in shapes,
        "distilled": "dist" in shapes,
        "num_registers": need("reg", 3)[1] if "reg" in shapes else 0,
        "layer_scale": "Transformer/encoderblock_0/ls1/scale" in shapes,
        "norm_pre": "Transformer/norm_pre/scale" in shapes,
        "fc_norm": "fc_norm/scale" in shapes,
        "representation_size": need("pre_logits/kernel", 2)[1] if "pre_logits/kernel" in shapes else None,
    }
    if "MAPHead_0/probe" in shapes:
        fields["classifier"] = "map"
    elif fields["fc_norm"] or not fields["cls_token"]:
        fields["classifier"] = "gap"
    else:
        fields["classifier"] = "token"
    if "head/kernel" in shapes:
        fields["num_classes"] = need("head/kernel", 2)[1]
    prefix = int(fields["cls_token"]) + int(fields["distilled"]) + fields["num_registers"]
    rows = need(POS, 3)[1]
    # Rows for the prefix tokens too, or (timm no_embed_class, DeiT III, registers) for patches only.
    grid = _square_side(rows - prefix) or _square_side(rows)
    if grid is None:
        raise CheckpointError(
            f"{source}: the position embedding has {rows} rows, which is no square grid of patches with "
            f"or without the {prefix} prefix token(s)"
        )
    fields["image_size"] = grid * patch
    return fields


def timm_heads(width: int, source: str) -> int:
    """The head count of a timm ViT of this width; raises naming ``--num-heads`` for other widths."""
    if width not in TIMM_HEADS:
        raise CheckpointError(
            f"{source}: cannot tell the number of attention heads of a timm checkpoint of width {width} "
            "(not a standard timm size): pass --num-heads"
        )
    return TIMM_HEADS[width]
