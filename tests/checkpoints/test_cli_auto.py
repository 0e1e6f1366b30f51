"""``tofu-jax run`` on a mocked TFDS ``imagenet2012`` (validation split) and on an image folder, with a tiny
checkpoint of each format and the architecture read from the checkpoint (``--model auto``, the default).

Width 192 is timm's ViT-Ti width, so timm's head count follows from the shapes; 32 px images with 16 px
patches keep every program small. Decoding is counted: the runs must decode only the images they use.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tofu_jax.checkpoints import google
from tofu_jax.checkpoints.common import unflatten
from tofu_jax.cli import main
from tofu_jax.data import transforms
from tofu_jax.models.vit import ViTConfig

from .helpers import random_flat

tfds = pytest.importorskip("tensorflow_datasets")
pytestmark = pytest.mark.slow

SHAPE = dict(image_size=32, patch_size=16, width=192, depth=2, mlp_dim=768, num_heads=3, num_classes=1000)
SCHEDULE = "prune:1x1,merge_mlerp:1x1"
EVAL, BATCH = 8, 4
MOCKED = 300  # examples per mocked split: a run that read a whole split would decode these


@pytest.fixture
def decoded(monkeypatch):
    """Counts images preprocessed (every decoded image is)."""
    count = [0]
    original = transforms.preprocess

    def counting(image, config):
        count[0] += 1
        return original(image, config)

    monkeypatch.setattr(transforms, "preprocess", counting)
    return count


def _run(checkpoint, out, *extra):
    argv = [
        "run", "--checkpoint", str(checkpoint), "--schedule", SCHEDULE, "--budget", "0.2",
        "--num-examples", str(EVAL),
        "--batch-size", str(BATCH), "--bench-batch", str(BATCH), "--bench-runs", "1", "--out-dir", str(out),
        *extra,
    ]  # fmt: skip
    assert main(argv) == 0
    return json.loads((out / "results.json").read_text())


def _imagenet(checkpoint, out, decoded, **recipe):
    with tfds.testing.mock_data(num_examples=MOCKED):
        res = _run(checkpoint, out, "--dataset", "imagenet2012", "--split", "validation")
    assert [r["name"] for r in res["rows"]] == ["baseline", "tofu", "tome"]
    assert res["num_examples"] == EVAL and res["rows"][1]["schedule"] == SCHEDULE
    # Per schedule a compile batch and the evaluation images, plus one timing batch: never the split.
    assert decoded[0] <= 3 * (BATCH + EVAL) + BATCH
    card = res["config"]  # the architecture and the family's input recipe, as used
    assert {k: card[k] for k in SHAPE} == SHAPE and {k: card[k] for k in recipe} == recipe
    return res


def test_google_npz_on_imagenet_validation_and_an_image_folder(tmp_path, decoded):
    from PIL import Image

    path = tmp_path / "augreg.npz"
    google.save_npz(path, unflatten(random_flat(ViTConfig(**SHAPE))))
    big_vision = dict(input_norm="inception", resize="square", crop_pct=1.0, antialias=False)
    _imagenet(path, tmp_path / "imagenet", decoded, **big_vision, gelu_approximate=True)
    rng = np.random.default_rng(0)
    for c in range(3):
        folder = tmp_path / "folder" / "val" / f"n{c:08d}"
        folder.mkdir(parents=True)
        for k in range(4):
            pixels = rng.integers(0, 256, (40 + 3 * k, 50, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{k}.{'png' if k % 2 else 'jpg'}")
    decoded[0] = 0
    res = _run(path, tmp_path / "out", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "folder"))
    assert res["num_examples"] == EVAL and decoded[0] <= 3 * (BATCH + EVAL) + BATCH


def test_timm_hub_folder_on_imagenet_validation(timm, torch, tmp_path, decoded):
    """``huggingface-cli download timm/<name>``: model.safetensors plus timm's config.json."""
    from safetensors.torch import save_file

    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=1000
    ).eval()
    folder = tmp_path / "timm"
    folder.mkdir()
    save_file(model.state_dict(), str(folder / "model.safetensors"))
    cfg = {"architecture": "vit_tiny_patch16_224", "num_classes": 1000, "pretrained_cfg": dict(
        tag="augreg_in21k_ft_in1k", input_size=[3, 224, 224], interpolation="bicubic", crop_pct=0.9,
        crop_mode="center", mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], num_classes=1000,
    )}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(cfg))
    timm_recipe = dict(input_norm="inception", resize="shorter", crop_pct=0.9, interpolation="bicubic")
    _imagenet(folder, tmp_path / "out", decoded, **timm_recipe, gelu_approximate=False, layernorm_eps=1e-6)


def test_hf_folder_on_imagenet_validation(transformers, torch, tmp_path, decoded):
    config = transformers.ViTConfig(
        image_size=32, patch_size=16, hidden_size=192, num_hidden_layers=2, num_attention_heads=3,
        intermediate_size=768, num_labels=1000,
    )  # fmt: skip
    model = transformers.ViTForImageClassification(config).eval()
    model.save_pretrained(tmp_path / "hf")
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "hf")
    hf_recipe = dict(input_norm="inception", resize="square", crop_pct=1.0, interpolation="bilinear")
    _imagenet(tmp_path / "hf", tmp_path / "out", decoded, **hf_recipe, layernorm_eps=1e-12)


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    shape = dict(SHAPE, num_classes=3)
    flat = random_flat(ViTConfig(**shape))
    google.save_npz(root / "ok.npz", unflatten(flat))
    headless = {k: v for k, v in flat.items() if not k.startswith("head/")}
    google.save_npz(root / "nohead.npz", unflatten(headless))
    for c in range(4):
        (root / "folder" / "val" / f"c{c}").mkdir(parents=True)
        (root / "folder" / "val" / f"c{c}" / "a.png").write_bytes(b"")  # never decoded
    return root


BAD = [  # (arguments, the one-line error says)
    (["--model", "vitbase"], "--model 'vitbase' is no file, preset or timm model name; use auto"),
    (["--model", "vit_tiny_patch16_224"], "is a timm model name but {root}/ok.npz is a Google checkpoint"),
    (["--checkpoint", "{root}/nohead.npz"], "has no classification head: pass --num-classes N --reset-head"),
    (["--num-heads", "5"], "width 192 is not divisible by num_heads 5"),
    (["--crop-pct", "1.5"], "argument --crop-pct: expected a number in (0, 1], got 1.5"),
    (["--dataset", "imagefolder"], "--dataset imagefolder needs --data-dir ROOT (images in ROOT/<split>/"),
    (["--dataset", "imagefolder", "--data-dir", "{root}/folder", "--split", "test"],
     "image folder {root}/folder/test does not exist or is not a directory"),
    (["--dataset", "imagefolder", "--data-dir", "{root}/folder"],
     "the val split of imagefolder has 4 classes but the model has 3; pass --num-classes N --reset-head"),
]  # fmt: skip


@pytest.mark.parametrize("extra,needle", BAD)
def test_bad_inputs_print_one_line(small_npz, tmp_path, capsys, extra, needle):
    extra = [e.format(root=small_npz) for e in extra]
    argv = ["run", "--checkpoint", str(small_npz / "ok.npz"), "--schedule", SCHEDULE, *extra]
    assert main([*argv, "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tofu-jax: error: ")
    assert needle.format(root=small_npz) in err[0]
