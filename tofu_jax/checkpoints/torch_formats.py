"""PyTorch-side checkpoints: timm and Hugging Face ``transformers`` ViT/DeiT state dicts.

Layouts: docs/algorithms.md §8.

Files are read without pickle where possible: ``.safetensors`` through ``safetensors.numpy`` (no torch
needed); ``.pth`` / ``.pt`` / ``.bin`` through ``torch.load(weights_only=True)`` when torch is installed.
Common containers are unwrapped (``{"model": ...}``, ``{"state_dict": ...}``, ``module.`` and
``_orig_mod.`` prefixes), then the state dict is renamed and reshaped to tofu_jax's canonical Google
names. Keys that no rule recognises are passed through under their original names, so the strict merge
in :mod:`tofu_jax.checkpoints.load` reports them as unexpected instead of dropping them.

Layouts handled:

* timm ``VisionTransformer`` / ``VisionTransformerDistilled`` (``patch_embed.proj``, ``cls_token``,
  ``dist_token``, ``pos_embed``, ``blocks.i.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``,
  ``norm``, ``fc_norm``, ``head``, ``head_dist``);
* Hugging Face ``ViT*`` / ``DeiT*`` as saved on disk (``vit.encoder.layer.i.attention.attention.query``
  ..., which transformers 5 still writes) and transformers 5's in-memory names
  (``vit.layers.i.attention.{q,k,v,o}_proj``, ``vit.layers.i.mlp.fc{1,2}``); ``classifier``,
  ``cls_classifier`` / ``distillation_classifier`` and the ``ViTModel`` pooler (``pre_logits``).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from tofu_jax.checkpoints.common import CheckpointError, npz_load

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_CONTAINERS = ("model", "state_dict", "model_state_dict", "model_state", "module", "net")
_PREFIXES = ("module.", "_orig_mod.")
_DIR_FILES = ("model.safetensors", "pytorch_model.bin", "model.pth", "checkpoint.pth")
POS = "Transformer/posembed_input/pos_embedding"


# ----------------------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------------------


def read(path: str | Path, fmt: str = "torch", config=None) -> dict[str, np.ndarray]:
    """Read a timm / HF checkpoint and return ``{canonical name: array}``.

    Args:
      path: a ``.safetensors``, ``.pth``/``.pt``/``.bin``/``.ckpt`` file, or a directory holding one
        (``model.safetensors`` or ``pytorch_model.bin``, as written by ``save_pretrained``).
      fmt: ``"timm"``, ``"hf"``, or ``"torch"``/``"auto"`` to detect the layout from the keys.
      config: the target :class:`~tofu_jax.models.vit.ViTConfig` (its ``num_heads`` splits the fused
        attention matrices into Google's ``(D, H, hd)`` kernels).
    """
    state = load_state_dict(path)
    return convert(state, fmt, config, source=str(path))


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a state dict from disk as ``{key: numpy array}``, unwrapping common containers."""
    path = _resolve(Path(path))
    if path.suffix == ".safetensors":
        state = _read_safetensors(path)
    elif path.suffix in TORCH_SUFFIXES:
        state = _read_torch(path)
    elif path.suffix == ".npz":  # a torch state dict saved with numpy.savez
        state = npz_load(path)
    else:
        raise CheckpointError(
            f"cannot tell the format of {path}: expected .npz (Google), .safetensors, "
            f"or a torch file ({', '.join(TORCH_SUFFIXES)})"
        )
    try:
        state = unwrap(state)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if not state:
        raise CheckpointError(f"{path} holds no tensors")
    return state


def _resolve(path: Path) -> Path:
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found")
    if not path.is_dir():
        return path
    for name in _DIR_FILES:
        if (path / name).is_file():
            return path / name
    if (path / "model.safetensors.index.json").exists():
        raise CheckpointError(f"{path} holds a sharded checkpoint; sharded files are not supported")
    found = sorted(path.glob("*.safetensors"))
    if len(found) == 1:
        return found[0]
    raise CheckpointError(f"{path} is a directory without a single model.safetensors / pytorch_model.bin")


_SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        state = dict(load_file(str(path)))
    except SafetensorError as e:
        raise CheckpointError(
            f"{path} is not a readable safetensors file (damaged or truncated?): {e}"
        ) from None
    except TypeError:
        # NumPy has no bfloat16: safetensors.numpy refuses BF16 tensors. Parse the (simple) format
        # directly with ml_dtypes' bfloat16 (a JAX dependency) and widen to float32.
        return _read_safetensors_raw(path)
    # With ml_dtypes imported (JAX does), NumPy knows bfloat16: widen it like the fallback does.
    return {k: v.astype(np.float32) if v.dtype.name == "bfloat16" else v for k, v in state.items()}


def _read_safetensors_raw(path: Path) -> dict[str, np.ndarray]:
    import ml_dtypes

    data = path.read_bytes()
    out = {}
    try:
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + n])
        body = memoryview(data)[8 + n :]
        for key, info in header.items():
            if key == "__metadata__":
                continue
            name = _SAFETENSORS_DTYPES.get(info["dtype"])
            if name is None:
                raise CheckpointError(f"{path}: tensor {key} has unsupported dtype {info['dtype']}")
            dtype = ml_dtypes.bfloat16 if name == "bfloat16" else np.dtype(name)
            start, end = info["data_offsets"]
            arr = np.frombuffer(body[start:end], dtype=dtype).reshape(info["shape"])
            out[key] = arr.astype(np.float32) if name == "bfloat16" else arr.copy()
    except CheckpointError:
        raise
    except Exception as e:  # bad header JSON, offsets past the end, wrong sizes: a damaged file
        raise CheckpointError(
            f"{path} is not a readable safetensors file (damaged or truncated?): {type(e).__name__}: {e}"
        ) from None
    return out


def _read_torch(path: Path) -> dict:
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"reading {path.name} needs PyTorch (pip install torch), or convert the checkpoint to "
            ".safetensors, which loads without it"
        ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle refusals, corrupt zips, ...: all mean "cannot read"
        first = (str(e).strip().splitlines() or [""])[0]
        raise CheckpointError(
            f"cannot read {path} with torch.load(weights_only=True): {type(e).__name__}: {first}"
        ) from None
    return _tensors_to_numpy(obj, torch)


def _tensors_to_numpy(obj, torch):
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64, torch.float16):
            t = t.float()  # bfloat16 & co have no NumPy dtype
        return t.numpy()
    if isinstance(obj, Mapping):
        return {k: _tensors_to_numpy(v, torch) for k, v in obj.items()}
    return obj  # ints, strings, lists: container metadata (epoch, args, ...)


def unwrap(obj) -> dict[str, np.ndarray]:
    """Find the state dict inside a training checkpoint and strip wrapper prefixes."""
    for _ in range(3):  # e.g. {"model": {"state_dict": ...}}
        if not isinstance(obj, Mapping) or _is_state_dict(obj):
            break
        inner = next((obj[k] for k in _CONTAINERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    state = {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def _is_state_dict(obj: Mapping) -> bool:
    return any(isinstance(v, np.ndarray) for v in obj.values())


# ----------------------------------------------------------------------------------------------------
# Layout detection and conversion
# ----------------------------------------------------------------------------------------------------


def detect(state: Mapping[str, np.ndarray]) -> str | None:
    """``"timm"``, ``"hf"`` or ``None`` from the state dict's key names."""
    keys = list(state)
    if any(_HF_EMBED.search(k) for k in keys) or any(_HF_BLOCK.match(k) for k in keys):
        return "hf"
    if any(k.startswith(("blocks.", "patch_embed.")) for k in keys) or "cls_token" in state:
        return "timm"
    return None


def convert(
    state: Mapping[str, np.ndarray], fmt: str = "torch", config=None, source: str = "checkpoint"
) -> dict[str, np.ndarray]:
    """Rename/reshape a timm or HF state dict to canonical names; unknown keys pass through."""
    detected = detect(state)
    if fmt in ("torch", "auto"):
        if detected is None:
            sample = ", ".join(sorted(state)[:8])
            raise CheckpointError(
                f"{source}: cannot recognise the layout (neither timm nor Hugging Face ViT); "
                f"keys start with: {sample}"
            )
        fmt = detected
    if fmt not in ("timm", "hf"):
        raise CheckpointError(f"unknown torch checkpoint format {fmt!r}; choose timm or hf")
    if config is None:
        raise CheckpointError(
            f"{source}: converting a {fmt} checkpoint needs the model's ViTConfig (for num_heads)"
        )
    if fmt == "timm":
        _check_timm_features(state, config, source)
    rules = _timm_rules() if fmt == "timm" else _hf_rules(_hf_prefix(state))
    out, recognised = _apply(state, rules, config.num_heads, source)
    if not recognised:
        hint = f" (it looks like {detected})" if detected and detected != fmt else ""
        raise CheckpointError(f"{source}: no key of the {fmt} layout found{hint}")
    if fmt == "timm":
        out = _pad_posemb(out, config)
        if "embedding/kernel" in out and "embedding/bias" not in out:  # pre-norm (CLIP) models
            out["embedding/bias"] = np.zeros(out["embedding/kernel"].shape[-1], np.float32)
    elif config.representation_size is None:
        dropped = sorted(k for k in out if k.startswith("pre_logits/"))
        if dropped:
            # ViTModel's pooler (Dense + tanh on CLS); ViTForImageClassification ignores it too.
            warnings.warn(
                f"{source}: ignoring the Hugging Face pooler ({', '.join(dropped)}): the model has no "
                "representation_size",
                stacklevel=2,
            )
            out = {k: v for k, v in out.items() if k not in dropped}
    return out


# timm layers tofu_jax's ViT does not have: refused by name instead of listed as unexpected keys.
_TIMM_UNSUPPORTED = (
    (r"blocks\.\d+\.attn\.[qk]_norm\..*", "QK normalisation (qk_norm)"),
    (r"blocks\.\d+\.attn\.norm\..*", "a norm after attention (scale_attn_norm)"),
    (r"blocks\.\d+\.mlp\.norm\..*", "a norm inside the MLP (scale_mlp_norm)"),
    (r"blocks\.\d+\.mlp\.fc1_[gx]\..*", "a gated (SwiGLU) MLP"),
    (r"blocks\.\d+\.(attn|mlp)\.(q|k|v|w12|w3)\..*", "separate q/k/v or SwiGLU projections"),
    (r"patch_embed\.norm\..*", "a patch-embedding norm"),
    (r"attn_pool\.(q_norm|k_norm|pos_embed).*", "an attention pool with query/key norm or positions"),
    (r"rope\..*|.*\.rope\..*", "rotary position embeddings"),
)


def _first(state: Mapping[str, np.ndarray], pattern: str) -> str | None:
    return next((k for k in sorted(state) if re.fullmatch(pattern, k)), None)


def check_timm_supported(state: Mapping[str, np.ndarray], source: str) -> None:
    """Name the first timm layer tofu_jax's ViT does not have (instead of a list of stray keys)."""
    for pattern, what in _TIMM_UNSUPPORTED:
        key = _first(state, pattern)
        if key is not None:
            raise CheckpointError(
                f"{source}: unsupported timm architecture: {what} (found {key}); tofu_jax's ViT has "
                "no such layer"
            )
    latent = state.get("attn_pool.latent")
    if latent is not None and (np.ndim(latent) != 3 or latent.shape[1] != 1):
        raise CheckpointError(
            f"{source}: unsupported timm architecture: an attention pool with {np.shape(latent)} latent "
            "queries (attn_pool.latent); tofu_jax's MAP head has one"
        )


def canonical_shapes(state: Mapping[str, np.ndarray], fmt: str, source: str) -> dict[str, tuple]:
    """``{canonical name: shape}`` of a timm / HF state dict, before the head count is known.

    Attention kernels come out as ``(D, 1, D)`` (one head); everything else has its final shape. The
    position embedding keeps its stored rows (timm ``no_embed_class`` ones lack the prefix rows).
    """
    if fmt == "timm":
        check_timm_supported(state, source)
    rules = _timm_rules() if fmt == "timm" else _hf_rules(_hf_prefix(state))
    out, _ = _apply(state, rules, 1, source)
    return {k: tuple(np.shape(v)) for k, v in out.items()}


def _check_timm_features(state: Mapping[str, np.ndarray], config, source: str) -> None:
    """Name an unsupported timm layer, or a feature the checkpoint and the config disagree on."""
    check_timm_supported(state, source)
    fix = "pass --model auto (config from the checkpoint) or set"
    layer_scale = _first(state, r"blocks\.\d+\.ls1\.gamma")
    if (layer_scale is not None) != config.layer_scale:
        if layer_scale is not None:
            problem = f"LayerScale-free model expected (layer_scale=false): found {layer_scale}"
        else:
            problem = "LayerScale expected (layer_scale=true): no blocks.i.ls1.gamma found"
        raise CheckpointError(
            f"{source}: {problem}; {fix} layer_scale={str(layer_scale is not None).lower()}"
        )
    reg = state.get("reg_token")
    registers = int(reg.shape[1]) if reg is not None and np.ndim(reg) == 3 else 0
    if registers != config.num_registers:
        raise CheckpointError(
            f"{source}: the checkpoint has {registers} register tokens (reg_token) but the model config "
            f"has num_registers={config.num_registers}; {fix} num_registers={registers}"
        )
    norm_pre = "norm_pre.weight" in state
    if norm_pre != config.norm_pre:
        where = "has" if norm_pre else "has no"
        raise CheckpointError(
            f"{source}: the checkpoint {where} a pre-norm (norm_pre.weight) but the model config has "
            f"norm_pre={str(config.norm_pre).lower()}; {fix} norm_pre={str(norm_pre).lower()}"
        )
    attn_pool = "attn_pool.latent" in state
    if attn_pool != (config.classifier == "map"):
        found = "an attention-pool head (attn_pool.latent)" if attn_pool else "no attention-pool head"
        want = "map" if attn_pool else "token or gap"
        raise CheckpointError(
            f"{source}: the checkpoint has {found} but the model config has "
            f"classifier={config.classifier!r}; {fix} classifier={want}"
        )


# A rule: regex on the torch key -> (canonical name template, converter(array, num_heads)).
Rule = tuple[re.Pattern, str, Callable[[np.ndarray, int], np.ndarray]]


def _same(a, _h):
    return a


def _dense(a, _h):
    """torch Linear weight ``(out, in)`` -> Flax Dense kernel ``(in, out)``."""
    return a.T if a.ndim == 2 else a


def _qkv_kernel(a, h):
    """``(D_out, D_in)`` -> ``(D_in, H, hd)`` (torch splits the output as ``h * hd + d``)."""
    if a.ndim != 2 or a.shape[0] % h:
        return a  # left as is: the strict merge reports the shape
    return a.T.reshape(a.shape[1], h, a.shape[0] // h)


def _qkv_bias(a, h):
    if a.ndim != 1 or a.shape[0] % h:
        return a
    return a.reshape(h, a.shape[0] // h)


def _out_kernel(a, h):
    """attention output projection ``(D, H*hd)`` -> ``(H, hd, D)``."""
    if a.ndim != 2 or a.shape[1] % h:
        return a
    return a.T.reshape(h, a.shape[1] // h, a.shape[0])


def _conv(a, _h):
    """torch Conv2d weight ``(D, C, p, p)`` -> Flax Conv kernel ``(p, p, C, D)``."""
    return a.transpose(2, 3, 1, 0) if a.ndim == 4 else a


def _fused(part: int, conv, parts: int = 3):
    """One of ``parts`` equal row blocks of a fused projection (timm's ``qkv``, ``kv``), then ``conv``."""

    def f(a, h):
        if a.shape[0] % parts:
            return a
        n = a.shape[0] // parts
        return conv(a[part * n : (part + 1) * n], h)

    return f


_BLK = "Transformer/encoderblock_{0}/"
_ATT = _BLK + "MultiHeadDotProductAttention_1/"
_MLP = _BLK + "MlpBlock_3/"
_MAP = "MAPHead_0/"
_MAP_ATT = _MAP + "MultiHeadDotProductAttention_0/"


def _layer(src: str, dst: str, weight=_dense, bias=_same) -> list[Rule]:
    """``src.weight``/``src.bias`` (torch Linear or LayerNorm) -> ``dst/kernel|scale`` + ``dst/bias``."""
    is_norm = weight is _same
    return [
        (re.compile(src + r"\.weight"), dst + ("/scale" if is_norm else "/kernel"), weight),
        (re.compile(src + r"\.bias"), dst + "/bias", bias),
    ]


def _qkv(src: str, dst: str) -> list[Rule]:
    return _layer(src, dst, _qkv_kernel, _qkv_bias)


def _norm(src: str, dst: str) -> list[Rule]:
    return _layer(src, dst, _same)


def _timm_rules() -> list[Rule]:
    b = r"blocks\.(\d+)\."
    rules: list[Rule] = [
        (re.compile(r"cls_token"), "cls", _same),
        (re.compile(r"dist_token"), "dist", _same),
        (re.compile(r"reg_token"), "reg", _same),
        (re.compile(r"pos_embed"), POS, _same),
        *_layer(r"patch_embed\.proj", "embedding", _conv),
        *_norm(r"norm_pre", "Transformer/norm_pre"),
        (re.compile(b + r"ls1\.gamma"), _BLK + "ls1/scale", _same),
        (re.compile(b + r"ls2\.gamma"), _BLK + "ls2/scale", _same),
        (re.compile(r"attn_pool\.latent"), _MAP + "probe", _same),
        *_qkv(r"attn_pool\.q", _MAP_ATT + "query"),
        *_layer(r"attn_pool\.proj", _MAP_ATT + "out", _out_kernel),
        *_norm(r"attn_pool\.norm", _MAP + "LayerNorm_0"),
        *_layer(r"attn_pool\.mlp\.fc1", _MAP + "MlpBlock_0/Dense_0"),
        *_layer(r"attn_pool\.mlp\.fc2", _MAP + "MlpBlock_0/Dense_1"),
        *_norm(b + "norm1", _BLK + "LayerNorm_0"),
        *_norm(b + "norm2", _BLK + "LayerNorm_2"),
        *_layer(b + r"attn\.proj", _ATT + "out", _out_kernel),
        *_layer(b + r"mlp\.fc1", _MLP + "Dense_0"),
        *_layer(b + r"mlp\.fc2", _MLP + "Dense_1"),
        *_norm(r"norm", "Transformer/encoder_norm"),
        *_norm(r"fc_norm", "fc_norm"),
        *_layer(r"head", "head"),
        *_layer(r"head_dist", "head_dist"),
        *_layer(r"pre_logits\.fc", "pre_logits"),
    ]
    for i, name in enumerate(("query", "key", "value")):
        rules.append((re.compile(b + r"attn\.qkv\.weight"), _ATT + name + "/kernel", _fused(i, _qkv_kernel)))
        rules.append((re.compile(b + r"attn\.qkv\.bias"), _ATT + name + "/bias", _fused(i, _qkv_bias)))
    for i, name in enumerate(("key", "value")):
        kernel, bias = _fused(i, _qkv_kernel, parts=2), _fused(i, _qkv_bias, parts=2)
        rules.append((re.compile(r"attn_pool\.kv\.weight"), _MAP_ATT + name + "/kernel", kernel))
        rules.append((re.compile(r"attn_pool\.kv\.bias"), _MAP_ATT + name + "/bias", bias))
    return rules


_HF_EMBED = re.compile(r"^((?:\w+\.)?)embeddings\.(?:patch_embeddings|cls_token|position_embeddings)")
_HF_BLOCK = re.compile(r"^(?:\w+\.)?(?:encoder\.layers?|layers)\.\d+\.(?:attention|layernorm_before)")


def _hf_prefix(state: Mapping[str, np.ndarray]) -> str:
    """``"vit."``, ``"deit."`` or ``""`` (bare ``ViTModel``)."""
    for k in state:
        m = _HF_EMBED.match(k)
        if m:
            return m.group(1)
    return ""


def _hf_rules(prefix: str) -> list[Rule]:
    p = re.escape(prefix)
    b = p + r"(?:encoder\.layers?|layers)\.(\d+)\."
    e = p + r"embeddings\."
    rules: list[Rule] = [
        (re.compile(e + "cls_token"), "cls", _same),
        (re.compile(e + "distillation_token"), "dist", _same),
        (re.compile(e + "position_embeddings"), POS, _same),
        *_layer(e + r"patch_embeddings\.projection", "embedding", _conv),
        *_norm(b + "layernorm_before", _BLK + "LayerNorm_0"),
        *_norm(b + "layernorm_after", _BLK + "LayerNorm_2"),
        # transformers <= 4 names (and what transformers 5 still writes to disk)
        *_qkv(b + r"attention\.attention\.query", _ATT + "query"),
        *_qkv(b + r"attention\.attention\.key", _ATT + "key"),
        *_qkv(b + r"attention\.attention\.value", _ATT + "value"),
        *_layer(b + r"attention\.output\.dense", _ATT + "out", _out_kernel),
        *_layer(b + r"intermediate\.dense", _MLP + "Dense_0"),
        *_layer(b + r"output\.dense", _MLP + "Dense_1"),
        # transformers 5 in-memory names
        *_qkv(b + r"attention\.q_proj", _ATT + "query"),
        *_qkv(b + r"attention\.k_proj", _ATT + "key"),
        *_qkv(b + r"attention\.v_proj", _ATT + "value"),
        *_layer(b + r"attention\.o_proj", _ATT + "out", _out_kernel),
        *_layer(b + r"mlp\.fc1", _MLP + "Dense_0"),
        *_layer(b + r"mlp\.fc2", _MLP + "Dense_1"),
        *_norm(p + "layernorm", "Transformer/encoder_norm"),
        *_layer(p + r"pooler\.dense", "pre_logits"),
        *_layer(r"classifier", "head"),
        *_layer(r"cls_classifier", "head"),
        *_layer(r"distillation_classifier", "head_dist"),
    ]
    return rules


def _apply(
    state: Mapping[str, np.ndarray], rules: list[Rule], num_heads: int, source: str
) -> tuple[dict[str, np.ndarray], int]:
    """Apply every matching rule; pass unmatched keys through unchanged; refuse name collisions."""
    out: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    clashes = []
    recognised = 0
    for key, value in state.items():
        hits = [(p.fullmatch(key), dst, f) for p, dst, f in rules]
        hits = [(m, dst, f) for m, dst, f in hits if m]
        if hits:
            recognised += 1
        else:
            hits = [(None, key, _same)]
        for m, dst, f in hits:
            name = dst.format(*m.groups()) if m else dst
            if name in out:
                clashes.append(f"{name} <- {origin[name]} and {key}")
                continue
            try:
                out[name] = np.asarray(f(np.asarray(value), num_heads))
            except (ValueError, IndexError) as e:
                raise CheckpointError(
                    f"{source}: {key} has shape {np.shape(value)}, which does not fit {name}: {e}"
                ) from None
            origin[name] = key
    if clashes:
        raise CheckpointError(f"{source}: several keys map to one parameter:\n  " + "\n  ".join(clashes))
    return out, recognised


def _pad_posemb(out: dict[str, np.ndarray], config) -> dict[str, np.ndarray]:
    """timm ``no_embed_class`` models (DeiT III, register models, ...) keep no position rows for their
    prefix tokens (CLS, distillation, registers): add zero rows, which is the same forward pass.

    The row count tells: the config's patch count, or else a perfect square while ``rows - prefix``
    is not one (``m*m + 1`` and ``m*m + 2`` are never squares for ``m >= 1``).
    """
    pos = out.get(POS)
    prefix = int("cls" in out) + int("dist" in out)
    reg = out.get("reg")
    prefix += int(reg.shape[1]) if reg is not None and reg.ndim == 3 else 0
    if pos is None or pos.ndim != 3 or not prefix:
        return out
    n = pos.shape[1]

    def square(k: int) -> bool:
        return k >= 1 and int(round(np.sqrt(k))) ** 2 == k

    if n == config.num_tokens:
        return out
    if n == config.num_patches or (square(n) and not square(n - prefix)):
        out = dict(out)
        out[POS] = np.concatenate([np.zeros((1, prefix, pos.shape[2]), pos.dtype), pos], axis=1)
    return out
