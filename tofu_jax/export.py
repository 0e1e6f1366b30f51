"""Deployment export: one self-contained StableHLO artifact per (model, schedule, batch, image size).

``write_export`` serializes ``jax.export`` of the reduced ViT for a fixed input shape, with the
parameters baked in as constants, so the artifact is the whole model: loading it needs only ``jax``
(no Flax, no tofu_jax)::

    import jax, numpy as np
    exp = jax.export.deserialize(bytearray(open("model.jax_export", "rb").read()))
    logits = exp.call(images)  # images: float32 [batch, H, W, C] in [-1, 1] (see model.json)

The artifact is about the size of the float32 parameters (plus a few KB of program). Token
reduction is static, so each schedule is its own artifact and the compiled program has no
data-dependent shapes. A JSON sidecar (``model.json``) records the input shape, dtype and layout,
the preprocessing, the schedule, the config, the analytic FLOPs and the file sizes.

With TensorFlow installed (optional extra ``tf``) ``tf="auto"`` also writes a TF SavedModel (via
``jax2tf``, native serialization: it wraps the same StableHLO) and tries a TFLite conversion of it.
That path is guarded by ``ImportError`` and recorded in the sidecar either way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from tofu_jax.data.transforms import INPUT_NORMS
from tofu_jax.errors import UserError
from tofu_jax.flops import model_flops
from tofu_jax.models.vit import ViT, ViTConfig
from tofu_jax.schedule import Schedule
from tofu_jax.schedule import none as no_reduction

ARTIFACT = "model.jax_export"
SIDECAR = "model.json"
SIDECAR_VERSION = 1

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
PREPROCESSING = {
    "layout": "NHWC",
    "dtype": "float32",
    "channel_repeat": "grayscale repeated to the model's channel count",
}


def _resize(config: ViTConfig) -> str:
    """The evaluation resize and crop of ``tofu_jax.data.transforms.preprocess``, in words."""
    side = "the shorter side" if config.resize == "shorter" else "both sides"
    target = max(int(config.image_size / config.crop_pct + 1e-6), config.image_size)
    filt = config.interpolation + (", anti-aliased" if config.antialias else ", not anti-aliased")
    return f"{side} to {target} ({filt}), then the central {config.image_size}x{config.image_size}"


def _forward(config: ViTConfig, params, schedule: Schedule):
    model = ViT(config)
    consts = jax.tree_util.tree_map(jnp.asarray, params)  # closed over: baked in as constants

    def forward(images):
        return model.apply({"params": consts}, images, schedule)

    return forward


def input_spec(config: ViTConfig, batch: int) -> jax.ShapeDtypeStruct:
    if not isinstance(batch, int) or batch < 1:
        raise UserError(f"batch must be a positive int, got {batch!r}")
    return jax.ShapeDtypeStruct((batch, config.image_size, config.image_size, config.channels), jnp.float32)


def export_model(
    config: ViTConfig,
    params,
    schedule: Schedule | None = None,
    batch: int = 8,
    *,
    platforms: Sequence[str] = ("cpu",),
) -> jax.export.Exported:
    """``jax.export`` of ``images [batch, H, W, C] float32 -> logits [batch, K] float32``, params baked in.

    ``platforms`` may name several (e.g. ``("cpu", "cuda")``); lowering does not need the devices.
    """
    if isinstance(platforms, str) or not isinstance(platforms, list | tuple):
        raise UserError(f"platforms must be a list of {', '.join(PLATFORMS)}, got {platforms!r}")
    bad = [p for p in platforms if p not in PLATFORMS]
    if not platforms or bad:
        raise UserError(f"platforms must be a list of {', '.join(PLATFORMS)}, got {platforms!r}")
    schedule = schedule if schedule is not None else no_reduction(config.depth)
    schedule.validate(config.depth, config.num_tokens, config.num_prefix)
    fn = jax.jit(_forward(config, params, schedule))
    return jax.export.export(fn, platforms=tuple(platforms))(input_spec(config, batch))


def load_exported(path: str | Path) -> jax.export.Exported:
    """Deserialize an artifact written by :func:`write_export` (``jax`` alone can do the same)."""
    return jax.export.deserialize(bytearray(Path(path).read_bytes()))


def _export_tf(config, params, schedule, batch, out_dir: Path, platforms) -> dict:
    """SavedModel (+ TFLite when the converter accepts it). Raises ImportError without TensorFlow.

    Not exercised by the test suite (TensorFlow is an optional, large extra).
    """
    import tensorflow as tf
    from jax.experimental import jax2tf

    model = ViT(config)
    tf_params = tf.nest.map_structure(lambda a: tf.Variable(np.asarray(a), trainable=False), params)
    converted = jax2tf.convert(
        lambda p, x: model.apply({"params": p}, x, schedule),
        native_serialization_platforms=tuple(platforms),
        with_gradient=False,
    )
    module = tf.Module()
    module.params = tf_params
    spec = tf.TensorSpec((batch, config.image_size, config.image_size, config.channels), tf.float32, "images")
    module.serve = tf.function(lambda x: {"logits": converted(module.params, x)}, autograph=False)
    saved = out_dir / "saved_model"
    tf.saved_model.save(module, str(saved), signatures=module.serve.get_concrete_function(spec))
    info = {
        "saved_model": saved.name,
        "saved_model_bytes": sum(f.stat().st_size for f in saved.rglob("*") if f.is_file()),
    }
    try:
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        tflite = converter.convert()
        (out_dir / "model.tflite").write_bytes(tflite)
        info.update(tflite="model.tflite", tflite_bytes=len(tflite))
    except Exception as e:  # the converter's StableHLO support varies by TF version
        info["tflite_error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return info


def _normalisation(config: ViTConfig) -> dict:
    """How pixels in [0, 1] become model inputs, from the config's ``input_norm`` (None: unknown)."""
    if config.input_norm is None:
        return {"input_norm": None, "from_unit": "unknown: the checkpoint does not record it"}
    mean, std = INPUT_NORMS[config.input_norm]
    return {"input_norm": config.input_norm, "mean": list(mean), "std": list(std),
            "from_unit": "(x - mean) / std for x in [0, 1]"}  # fmt: skip


def write_export(
    out_dir: str | Path,
    config: ViTConfig,
    params,
    schedule: Schedule | None = None,
    batch: int = 8,
    *,
    platforms: Sequence[str] = ("cpu",),
    tf: str = "auto",
    meta: dict | None = None,
) -> dict:
    """Write ``model.jax_export`` and the ``model.json`` sidecar (and TF files, see module doc).

    Args:
      tf: ``"auto"`` (TF files when TensorFlow imports), ``"off"`` or ``"require"``.
      meta: extra provenance stored under ``"meta"`` in the sidecar (checkpoint path, ...).
    Returns:
      The sidecar dict.
    """
    if tf not in ("auto", "off", "require"):
        raise UserError(f"tf must be 'auto', 'off' or 'require', got {tf!r}")
    schedule = schedule if schedule is not None else no_reduction(config.depth)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    exported = export_model(config, params, schedule, batch, platforms=platforms)
    blob = exported.serialize()
    (out / ARTIFACT).write_bytes(blob)
    flops = model_flops(config, schedule)
    param_bytes = int(sum(np.asarray(a).nbytes for a in jax.tree_util.tree_leaves(params)))
    spec = input_spec(config, batch)
    sidecar = {
        "version": SIDECAR_VERSION,
        "format": "jax.export",
        "artifact": ARTIFACT,
        "artifact_bytes": len(blob),
        "artifact_sha256": hashlib.sha256(blob).hexdigest(),
        "params_baked_in": True,
        "param_bytes": param_bytes,
        "platforms": list(exported.platforms),
        "calling_convention_version": exported.calling_convention_version,
        "jax_version": jax.__version__,
        "input": {"name": "images", "shape": list(spec.shape), "dtype": "float32", "layout": "NHWC"},
        "output": {"name": "logits", "shape": [batch, config.num_classes], "dtype": "float32"},
        "preprocessing": {
            **PREPROCESSING,
            **_normalisation(config),
            "resize": _resize(config),
            "image_size": config.image_size,
            "channels": config.channels,
        },  # fmt: skip
        "schedule": schedule.to_dict(),
        "schedule_describe": schedule.describe(),
        "tokens": list(flops.tokens),
        "gflops_per_image": flops.gflops,
        "config": config.to_dict(),
        "usage": "exp = jax.export.deserialize(bytearray(open(artifact, 'rb').read())); "
        "logits = exp.call(images)",
    }
    if tf != "off":
        try:
            sidecar["tf"] = _export_tf(config, params, schedule, batch, out, platforms)
        except ImportError as e:
            if tf == "require":
                raise UserError(f"TF export required but TensorFlow is not available: {e}") from e
            sidecar["tf"] = {"skipped": f"TensorFlow not available ({e}); install the 'tf' extra"}
    if meta:
        sidecar["meta"] = meta
    (out / SIDECAR).write_text(json.dumps(sidecar, indent=1) + "\n")
    return sidecar
