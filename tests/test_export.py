"""Deployment export: the artifact runs in a process that imports only jax + numpy."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.helpers import random_params
from tofu_jax import schedule as S
from tofu_jax.checkpoints import google
from tofu_jax.cli import main
from tofu_jax.export import ARTIFACT, SIDECAR, load_exported, write_export
from tofu_jax.models.vit import ViT, ViTConfig, make_apply

TINY = ViTConfig(
    image_size=16, patch_size=4, channels=1, num_classes=4, width=16, depth=2, mlp_dim=32, num_heads=2
)
SCHEDULE = S.from_list(["prune", "merge_importance_mlerp"], [4, 5])

RUNNER = textwrap.dedent(
    """
    import sys
    import jax
    import numpy as np

    exp = jax.export.deserialize(bytearray(open(sys.argv[1], "rb").read()))
    logits = np.asarray(exp.call(np.load(sys.argv[2])))
    np.save(sys.argv[3], logits)
    assert not any(m.split(".")[0] in ("tofu_jax", "flax") for m in sys.modules), "imported tofu_jax/flax"
    """
)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    params = random_params(TINY, 0, 0.3)
    google.save_npz(root / "tiny.npz", params)
    (root / "tiny.json").write_text(json.dumps({"config": TINY.to_dict()}))
    SCHEDULE.to_json(root / "schedule.json")
    return root, params


def test_cli_export_runs_without_tofu_jax(assets, tmp_path, capsys):
    root, params = assets
    out = tmp_path / "exp"
    argv = [
        "export", "--checkpoint", str(root / "tiny.npz"), "--model", str(root / "tiny.json"),
        "--schedule", str(root / "schedule.json"), "--batch", "8", "--tf", "off", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    assert "params baked in" in capsys.readouterr().out
    side = json.loads((out / SIDECAR).read_text())
    assert side["input"] == {"name": "images", "shape": [8, 16, 16, 1], "dtype": "float32", "layout": "NHWC"}
    assert side["output"]["shape"] == [8, 4] and side["tokens"] == [17, 13, 8]
    assert S.Schedule.from_dict(side["schedule"]) == SCHEDULE
    assert ViTConfig.from_dict(side["config"]) == TINY.replace(input_norm="inception")  # from the npz format
    assert side["preprocessing"]["input_norm"] == "inception" and side["preprocessing"]["mean"] == [0.5] * 3
    assert side["artifact_bytes"] == (out / ARTIFACT).stat().st_size > side["param_bytes"]

    images = np.random.default_rng(0).uniform(-1, 1, (8, 16, 16, 1)).astype(np.float32)
    expected = np.asarray(make_apply(ViT(TINY))(params, images, SCHEDULE))
    np.save(tmp_path / "x.npy", images)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(out / ARTIFACT), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-5, atol=1e-5)


def test_exported_signature_and_errors(assets, tmp_path):
    _, params = assets
    side = write_export(tmp_path, TINY, params, None, batch=2, tf="off")
    exp = load_exported(tmp_path / ARTIFACT)
    assert len(exp.in_avals) == 1 and exp.in_avals[0].shape == (2, 16, 16, 1)  # params are not inputs
    assert exp.out_avals[0].shape == (2, 4) and side["tokens"] == [17, 17, 17]
    with pytest.raises(S.ScheduleError):
        write_export(tmp_path, TINY, params, S.from_list(["prune", "prune"], [9, 0]), batch=2, tf="off")
    with pytest.raises(ValueError, match="batch"):
        write_export(tmp_path, TINY, params, None, batch=0, tf="off")
