"""The ImageNet-style sweep command end to end on TFDS mock data, once per checkpoint format.

The same script a user runs with ``--dataset imagenet2012`` and a published checkpoint runs here
with ``tfds.testing.mock_data`` (cifar10 shapes) and a tiny random checkpoint written in the
Google npz, timm safetensors and Hugging Face safetensors layouts.
"""

from __future__ import annotations

import json

import pytest

from tofu_jax.checkpoints import google
from tofu_jax.checkpoints.common import unflatten
from tofu_jax.models.vit import ViTConfig

from .helpers import TINY, random_flat
from .test_parity import _hf_vit, _randomize, _save_safetensors, _timm_model

tfds = pytest.importorskip("tensorflow_datasets")


def _run_sweep(tmp_path, checkpoint, config: ViTConfig, fmt: str, ablations=("--skip-ablations",)):
    from experiments import sweep

    card = tmp_path / "card.json"
    card.write_text(json.dumps({"config": config.to_dict()}))
    stem = tmp_path / "sweep"
    argv = [
        "--checkpoint", str(checkpoint), "--model", str(card), "--format", fmt,
        "--dataset", "cifar10", "--num-examples", "0", "--batch-size", "8", "--calib-images", "8",
        "--planner", "per_block", "--budgets", "0", "0.2",
        *ablations, "--bench-batch", "4", "--bench-runs", "1", "--out", str(stem),
    ]  # fmt: skip
    with tfds.testing.mock_data(num_examples=12):
        sweep.main(argv)
    res = json.loads((tmp_path / "sweep.json").read_text())
    names = {r["name"] for r in res["rows"]}
    assert {"baseline", "tome", "prune", "mlerp", "tofu_half", "tofu_plan"} <= names
    assert all(r["n"] == 12 for r in res["rows"])
    assert (tmp_path / "sweep.png").stat().st_size > 1000
    assert (tmp_path / "sweep.csv").read_text().count("\n") == len(res["rows"]) + 1
    return res


def test_sweep_google_npz(tmp_path):
    config = ViTConfig(**TINY)
    path = tmp_path / "vit.npz"
    google.save_npz(path, unflatten(random_flat(config)))
    res = _run_sweep(
        tmp_path,
        path,
        config,
        "google",
        ablations=("--ablations", "prop_attn", "--ablation-examples", "6", "--ablation-budget", "0.2"),
    )
    names = [r["name"] for r in res["ablations"]]
    assert names == ["mlerp_on", "mlerp_off", "avg_on", "avg_off"]
    assert all(r["n"] == 6 and 0.0 <= r["baseline_top1"] <= 1.0 for r in res["ablations"])
    assert (tmp_path / "sweep_ablations.csv").read_text().count("\n") == 5


@pytest.mark.parity
def test_sweep_timm_safetensors(timm, torch, tmp_path):
    module = _randomize(torch, _timm_model(timm, torch))
    path = _save_safetensors(module.state_dict(), tmp_path / "timm.safetensors")
    _run_sweep(
        tmp_path,
        path,
        ViTConfig(**TINY, layernorm_eps=1e-6, gelu_approximate=False, input_norm="inception"),
        "timm",
    )


@pytest.mark.parity
def test_sweep_hf_safetensors(transformers, torch, tmp_path):
    module = _hf_vit(transformers, torch)
    path = _save_safetensors(module.state_dict(), tmp_path / "hf.safetensors")
    _run_sweep(
        tmp_path,
        path,
        ViTConfig(**TINY, layernorm_eps=1e-12, gelu_approximate=False, input_norm="inception"),
        "hf",
    )
