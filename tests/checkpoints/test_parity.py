"""Logit parity with timm and Hugging Face transformers on tiny random-weight models (docs/algorithms.md §8).

The reference models get random values in every parameter (LayerNorm scales and biases included),
their state dicts are written as safetensors / ``torch.save`` files, loaded with
:func:`tofu_jax.checkpoints.load.load_params`, and both models see the same images (NCHW for torch,
NHWC for tofu_jax). Without reduction the logits must agree to 1e-5 in float32; every architecture variant
also runs a reduction schedule.
"""

from __future__ import annotations

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tofu_jax.checkpoints import load, torch_formats
from tofu_jax.checkpoints.common import flatten
from tofu_jax.models.vit import ViT, ViTConfig

from .helpers import TINY

pytestmark = pytest.mark.parity
ATOL = 1e-5


def _randomize(torch, module, seed=0):
    """Every parameter ~ N(0, 0.1); LayerNorm scales ~ 1 + N(0, 0.1). Returns the module in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.1
            is_scale = p.ndim == 1 and "norm" in name and name.endswith("weight")
            p.copy_(noise + 1.0 if is_scale else noise)
    return module.eval()


def _images(seed=0, n=2):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 32, 32, 3)).astype(np.float32)


def _torch_logits(torch, module, images):
    with torch.no_grad():
        out = module(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
    out = getattr(out, "logits", out)
    return out.numpy()


def _ours(params, config, images):
    # One compiled program: op by op, every new token count costs seconds of per-op compiles.
    return np.asarray(jax.jit(ViT(config).apply)({"params": params}, jnp.asarray(images)))


def _save_safetensors(state_dict, path):
    from safetensors.numpy import save_file

    save_file({k: v.detach().contiguous().numpy() for k, v in state_dict.items()}, str(path))
    return path


def _check(torch, module, path, config, fmt="auto"):
    params = load.load_params(path, config, fmt=fmt)
    images = _images()
    ref = _torch_logits(torch, module, images)
    ours = _ours(params, config, images)
    assert ours.shape == ref.shape
    err = float(np.abs(ours - ref).max())
    print(f"{path.name} ({fmt}): max |logit difference| {err:.2e}")
    assert err < ATOL, f"max |logit difference| {err:.2e}"
    assert np.abs(ref).max() > 0.1  # the comparison is not between near-zero outputs
    return err, params


# ------------------------------------------------------------------------------------------- timm


def _timm_model(timm, torch, name="vit_tiny_patch16_224", **kw):
    args = dict(
        pretrained=False,
        img_size=TINY["image_size"],
        patch_size=TINY["patch_size"],
        embed_dim=TINY["width"],
        depth=TINY["depth"],
        num_heads=TINY["num_heads"],
        mlp_ratio=TINY["mlp_dim"] / TINY["width"],
        num_classes=TINY["num_classes"],
    )
    args.update(kw)
    return _randomize(torch, timm.create_model(name, **args))


TIMM_CASES = {
    "token": (dict(), dict()),
    "gap_fc_norm": (dict(global_pool="avg", fc_norm=True), dict(classifier="gap", fc_norm=True)),
    "gap_no_cls": (
        dict(global_pool="avg", class_token=False, fc_norm=False),
        dict(classifier="gap", cls_token=False),
    ),
    "no_embed_class": (dict(no_embed_class=True), dict()),
    "layer_scale": (dict(init_values=0.1, no_embed_class=True), dict(layer_scale=True)),
    "registers": (dict(reg_tokens=4, no_embed_class=True), dict(num_registers=4)),
    "registers_embed_class": (dict(reg_tokens=3), dict(num_registers=3)),
    "registers_gap_no_cls": (
        dict(reg_tokens=4, class_token=False, global_pool="avg", fc_norm=False, no_embed_class=True),
        dict(classifier="gap", cls_token=False, num_registers=4),
    ),
    "norm_pre": (dict(pre_norm=True), dict(norm_pre=True)),
    "map_head": (dict(global_pool="map", class_token=False), dict(classifier="map", cls_token=False)),
    "all_features": (
        dict(
            init_values=0.1,
            reg_tokens=2,
            pre_norm=True,
            global_pool="map",
            class_token=False,
            no_embed_class=True,
        ),
        dict(layer_scale=True, num_registers=2, norm_pre=True, classifier="map", cls_token=False),
    ),
}
# Variants that also run a pruning and merging schedule (each compiles a reduced program, seconds on CPU):
# registers behind a CLS token, registers without one, and every new layer at once.
REDUCED = ("registers", "registers_gap_no_cls", "all_features")


@pytest.mark.parametrize("case", sorted(TIMM_CASES))
def test_timm_vit(timm, torch, tmp_path, case):
    timm_kw, cfg_kw = TIMM_CASES[case]
    module = _timm_model(timm, torch, **timm_kw)
    config = ViTConfig(**TINY, layernorm_eps=1e-6, gelu_approximate=False, **cfg_kw)
    path = _save_safetensors(module.state_dict(), tmp_path / "timm.safetensors")
    params = _check(torch, module, path, config, fmt="timm")[1]
    _check_auto(torch, module, path, config, num_heads=TINY["num_heads"])  # width 64: no timm size
    if case in REDUCED:
        _check_reduces(params, config)


ARCHITECTURE = (
    "image_size", "patch_size", "channels", "num_classes", "width", "depth", "mlp_dim", "num_heads",
    "classifier", "cls_token", "distilled", "num_registers", "layer_scale", "norm_pre", "fc_norm",
    "representation_size", "layernorm_eps", "gelu_approximate",
)  # fmt: skip


def _check_auto(torch, module, path, config, **overrides):
    """``--model auto``: the architecture read from the checkpoint equals the reference's, logits too."""
    from tofu_jax.models.loading import load_model

    auto, params = load_model(path, **overrides)
    assert {k: getattr(auto, k) for k in ARCHITECTURE} == {k: getattr(config, k) for k in ARCHITECTURE}
    images = _images()
    err = float(np.abs(_ours(params, auto, images) - _torch_logits(torch, module, images)).max())
    print(f"{path.name} (--model auto): max |logit difference| {err:.2e}")
    assert err < ATOL
    return auto


def _check_reduces(params, config):
    """A schedule that prunes and merges runs on the variant and keeps every prefix token."""
    from tofu_jax.schedule import Schedule

    sched = Schedule.from_compact("prune:3x1,merge_mlerp:3x1")

    @jax.jit
    def forward(params, images):
        return ViT(config).apply(
            {"params": params}, images, sched, track_sources=True, mutable=["intermediates"]
        )

    logits, state = forward(params, jnp.asarray(_images()))
    assert logits.shape == (2, config.num_classes) and np.isfinite(np.asarray(logits)).all()
    sources = np.asarray(state["intermediates"]["sources"][0])  # [B, N, N0]
    assert sources.shape[1] == config.num_tokens - 6
    prefix = np.eye(config.num_tokens)[: config.num_prefix]
    np.testing.assert_array_equal(
        sources[:, : config.num_prefix], np.broadcast_to(prefix, (2, *prefix.shape))
    )


def test_timm_preset_takes_exact_gelu_from_the_format(timm, torch, tmp_path):
    """A preset states no numerics: the timm format must supply exact GELU, or logits drift ~1e-4."""
    from tofu_jax.models.loading import load_model

    module = _timm_model(timm, torch)
    path = _save_safetensors(module.state_dict(), tmp_path / "timm.safetensors")
    card = tmp_path / "shape.json"
    card.write_text(json.dumps({k: v for k, v in TINY.items()}))  # shapes only, no GELU/eps
    config, params = load_model(path, str(card))
    assert config.gelu_approximate is False and config.layernorm_eps == 1e-6
    images = _images()
    np.testing.assert_allclose(_ours(params, config, images), _torch_logits(torch, module, images), atol=1e-5)


@pytest.mark.parametrize("r", [2, 3])
def test_tome_mode_matches_the_pytorch_tome_reference(timm, torch, r):
    """Our constant-r ToMe schedule (average merge, proportional attention) against
    experiments/torch_reference.py's ToMe for timm, on the same weights."""
    from experiments.torch_reference import tome_forward
    from tofu_jax.schedule import constant

    module = _timm_model(timm, torch)
    config = ViTConfig(**TINY, layernorm_eps=1e-6, gelu_approximate=False)
    state = {k: v.numpy() for k, v in module.state_dict().items()}
    params = load.adapt(torch_formats.convert(state, "timm", config), config)
    images = _images(n=4)
    with torch.no_grad():
        ref = tome_forward(module, torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), r).numpy()
    sched = constant(config.depth, r, "merge_avg", prop_attn=True)
    ours = np.asarray(ViT(config).apply({"params": params}, jnp.asarray(images), sched))
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_timm_deit_distilled(timm, torch, tmp_path):
    module = _timm_model(timm, torch, "deit_tiny_distilled_patch16_224")
    config = ViTConfig(**TINY, distilled=True, layernorm_eps=1e-6, gelu_approximate=False)
    path = _save_safetensors(module.state_dict(), tmp_path / "deit.safetensors")
    _check(torch, module, path, config)
    auto = _check_auto(
        torch,
        module,
        path,
        config,
        model="deit_tiny_distilled_patch16_224.fb_in1k",
        num_heads=TINY["num_heads"],
    )
    assert (auto.input_norm, auto.crop_pct, auto.interpolation) == ("imagenet", 0.9, "bicubic")


def test_timm_pth_training_checkpoint(timm, torch, tmp_path):
    """A ``torch.save`` training checkpoint: ``{"model": {"module.<key>": ...}, "epoch": ...}``."""
    module = _timm_model(timm, torch)
    config = ViTConfig(**TINY, layernorm_eps=1e-6, gelu_approximate=False)
    wrapped = {"model": {f"module.{k}": v for k, v in module.state_dict().items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "checkpoint.pth")
    _check(torch, module, tmp_path / "checkpoint.pth", config)


MISMATCHES = [  # (timm kwargs, config fields, the message names ...)
    (dict(init_values=0.1), dict(), "LayerScale-free model expected (layer_scale=false): found blocks.0.ls1"),
    (dict(), dict(layer_scale=True), "LayerScale expected (layer_scale=true): no blocks.i.ls1.gamma found"),
    (dict(reg_tokens=4), dict(), "has 4 register tokens (reg_token) but the model config has num_registers"),
    (dict(pre_norm=True), dict(), "has a pre-norm (norm_pre.weight) but the model config has norm_pre=false"),
    (dict(global_pool="map"), dict(), "attention-pool head (attn_pool.latent) but the model config has"),
    (dict(qk_norm=True), dict(), "unsupported timm architecture: QK normalisation (qk_norm) (found blocks"),
]  # fmt: skip


@pytest.mark.parametrize("timm_kw,cfg_kw,needle", MISMATCHES)
def test_timm_architecture_mismatches_are_named(timm, torch, tmp_path, timm_kw, cfg_kw, needle):
    """A layer the config lacks (or one tofu_jax has not) is named, never listed as stray keys."""
    module = _timm_model(timm, torch, **timm_kw)
    config = ViTConfig(**TINY, layernorm_eps=1e-6, gelu_approximate=False, **cfg_kw)
    path = _save_safetensors(module.state_dict(), tmp_path / "variant.safetensors")
    with pytest.raises(load.CheckpointError) as e:
        load.load_params(path, config)
    assert needle in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------- HF transformers


def _hf_config(transformers, cls_name="ViTConfig", **kw):
    return getattr(transformers, cls_name)(
        image_size=TINY["image_size"],
        patch_size=TINY["patch_size"],
        hidden_size=TINY["width"],
        num_hidden_layers=TINY["depth"],
        num_attention_heads=TINY["num_heads"],
        intermediate_size=TINY["mlp_dim"],
        num_labels=TINY["num_classes"],
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        **kw,
    )


def _hf_vit(transformers, torch):
    return _randomize(torch, transformers.ViTForImageClassification(_hf_config(transformers)))


HF_TINY = ViTConfig(**TINY, layernorm_eps=1e-12, gelu_approximate=False)


def test_hf_vit_in_memory_names(transformers, torch, tmp_path):
    """``model.state_dict()`` names of the installed transformers (5: ``vit.layers.i.attention.q_proj``)."""
    module = _hf_vit(transformers, torch)
    path = _save_safetensors(module.state_dict(), tmp_path / "hf.safetensors")
    _check(torch, module, path, HF_TINY, fmt="auto")
    _check(torch, module, path, HF_TINY, fmt="hf")


def test_hf_vit_save_pretrained(transformers, torch, tmp_path):
    """``save_pretrained`` writes the Hub's names (``vit.encoder.layer.i.attention.attention.query``)."""
    module = _hf_vit(transformers, torch)
    module.save_pretrained(tmp_path / "hub")
    _check(torch, module, tmp_path / "hub", HF_TINY)
    _check(torch, module, tmp_path / "hub" / "model.safetensors", HF_TINY)
    _check_auto(torch, module, tmp_path / "hub", HF_TINY)


def test_hf_vit_pytorch_model_bin(transformers, torch, tmp_path):
    module = _hf_vit(transformers, torch)
    torch.save(module.state_dict(), tmp_path / "pytorch_model.bin")
    _check(torch, module, tmp_path / "pytorch_model.bin", HF_TINY)


def test_hf_deit_with_teacher(transformers, torch, tmp_path):
    config = _hf_config(transformers, "DeiTConfig")
    module = _randomize(torch, transformers.DeiTForImageClassificationWithTeacher(config))
    path = _save_safetensors(module.state_dict(), tmp_path / "deit.safetensors")
    _check(torch, module, path, HF_TINY.replace(distilled=True))
    module.save_pretrained(tmp_path / "hub")
    processor = transformers.DeiTImageProcessor(  # what facebook/deit-*-distilled-patch16-224 ship
        size={"height": 36, "width": 36}, crop_size=32, image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )  # fmt: skip
    processor.save_pretrained(tmp_path / "hub")
    auto = _check_auto(torch, module, tmp_path / "hub", HF_TINY.replace(distilled=True))
    assert (auto.input_norm, auto.resize, auto.crop_pct, auto.interpolation) == (
        "imagenet", "square", 32 / 36, "bicubic",
    )  # fmt: skip


def test_hf_vit_model_pooler(transformers, torch, tmp_path):
    """A bare ``ViTModel``: the pooler becomes ``pre_logits``, or is dropped with a warning."""
    module = _randomize(torch, transformers.ViTModel(_hf_config(transformers)))
    path = _save_safetensors(module.state_dict(), tmp_path / "vitmodel.safetensors")
    state = module.state_dict()

    with_rep = HF_TINY.replace(representation_size=TINY["width"])
    params = flatten(load.load_params(path, with_rep, reset_head=True))
    np.testing.assert_array_equal(params["pre_logits/kernel"], state["pooler.dense.weight"].numpy().T)
    np.testing.assert_array_equal(params["head/kernel"], 0)

    with pytest.warns(UserWarning, match="pooler"):
        params = flatten(load.load_params(path, HF_TINY, reset_head=True))
    assert "pre_logits/kernel" not in params
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(load.CheckpointError, match="missing"):
            load.load_params(path, with_rep)  # no classifier in a ViTModel: the head is missing
