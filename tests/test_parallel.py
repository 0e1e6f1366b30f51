"""Evaluation / fine-tuning / train states on meshes of 1, 2 and 8 forced CPU devices.

The device count is fixed when JAX starts, so each count runs in its own process
(``tests/parallel_worker.py``, one process per count doing everything and printing JSON): 2 devices
evaluate, fine-tune 4 steps uninterrupted and checkpoint at step 2; 8 devices (a 4 x 2 data x FSDP
mesh) and 1 device (plus a NumPy count of the top-1/top-5) evaluate and resume from that checkpoint. The
in-process tests cover the pure helpers on the single default device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("parallel_worker.py")
LR = 1e-3  # OptimConfig.learning_rate in the worker


def _run(devices: int, fsdp: int, role: str, tmp: Path) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    args = json.dumps({"fsdp": fsdp, "role": role, "dir": str(tmp)})
    proc = subprocess.run(
        [sys.executable, str(WORKER), args], env=env, capture_output=True, text=True, timeout=600
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, (
        f"{devices}-device worker failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    )
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[dict, Path]:
    tmp = tmp_path_factory.mktemp("parallel")
    out = {2: _run(2, 1, "base", tmp)}
    with ThreadPoolExecutor(2) as pool:  # both only read the 2-device checkpoint
        resumed = {8: pool.submit(_run, 8, 2, "resume", tmp), 1: pool.submit(_run, 1, 1, "reference", tmp)}
        out.update({n: f.result() for n, f in resumed.items()})
    return out, tmp


def test_evaluation_identical_across_device_counts(runs):
    out, _ = runs
    assert [out[n]["devices"] for n in (1, 2, 8)] == [1, 2, 8]
    for name in ("none", "merge"):
        results = [out[n]["eval"][name] for n in (1, 2, 8)]
        for r in results:
            assert r["n"] == 13  # uneven final batches: nothing dropped, nothing counted twice
            assert len(r["logits"]) == 13
        assert len({(r["top1"], r["top5"]) for r in results}) == 1, results
        ref = np.asarray(results[0]["logits"])
        for r in results[1:]:
            np.testing.assert_allclose(np.asarray(r["logits"]), ref, atol=1e-5, rtol=0)
    for n in (1, 2, 8):  # predict_fn: the program accuracy compiled, padding rows cut off
        predicted = np.asarray(out[n]["predict"])
        assert predicted.shape == (5, 4)
        np.testing.assert_allclose(predicted, np.asarray(out[n]["eval"]["merge"]["logits"])[:5], atol=1e-5)
    reference = out[1]["reference_eval"]  # counted in NumPy from the plain program's logits
    assert reference == {k: out[2]["eval"]["merge"][k] for k in ("top1", "top5", "n")}


def test_profiler_and_emulator_identical_across_device_counts(runs):
    out, _ = runs
    for n in (2, 8):
        np.testing.assert_allclose(out[n]["profile"], out[1]["profile"], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(out[n]["emulated"], out[1]["emulated"], atol=1e-5, rtol=0)


def test_checkpoint_restores_exactly_on_other_meshes(runs):
    out, _ = runs
    for n in (1, 8):
        assert out[n]["restored_step"] == 2
        assert out[n]["restored_meta"] == {"devices": 2}
        assert out[n]["restore_max_diff"] == 0.0
    assert out[2]["fsdp_sharded_leaves"] == 0  # data-parallel: replicated
    assert out[8]["fsdp_sharded_leaves"] > 20  # 4 x 2 mesh: kernels and their Adam moments split


def _key_bias(name: str) -> bool:
    return "['key']['bias']" in name


def test_resumed_training_matches_uninterrupted(runs):
    """2 devices -> checkpoint -> 8 devices (FSDP) or 1 device == 2 devices throughout.

    Attention key biases have an exactly zero gradient (softmax ignores a per-query constant), so
    what they get is rounding noise that depends on how the batch is split; Adam normalises it into
    steps of up to the learning rate. They are held to that bound, everything else to 1e-6.
    """
    out, tmp = runs
    base = np.load(tmp / "final_2.npz")
    for n in (8, 1):
        resumed = np.load(tmp / f"final_{n}.npz")
        assert sorted(resumed.files) == sorted(base.files)
        for k in base.files:
            diff = float(np.abs(resumed[k] - base[k]).max()) if base[k].size else 0.0
            bound = 2 * 2 * LR if _key_bias(k) and k.startswith("params") else 1e-6
            assert diff <= bound, (n, k, diff)
        np.testing.assert_allclose(out[n]["losses"], out[2]["losses"][2:], atol=1e-6, rtol=0)


# --- in-process: the pure helpers ---------------------------------------------------------------------


def test_fsdp_spec_rules():
    from tofu_jax.parallel import FSDP_AXIS, fsdp_spec

    assert tuple(fsdp_spec((768, 3072), 4, 0)) == (None, FSDP_AXIS)  # largest divisible axis
    assert tuple(fsdp_spec((3072, 768), 4, 0)) == (FSDP_AXIS, None)
    assert tuple(fsdp_spec((768, 12, 64), 8, 0)) == (FSDP_AXIS, None, None)
    assert tuple(fsdp_spec((1, 197, 768), 2, 0)) == (None, None, FSDP_AXIS)  # 197 is odd
    assert tuple(fsdp_spec((7, 9), 2, 0)) == ()  # nothing divisible: replicated
    assert tuple(fsdp_spec((768,), 2, 0)) == ()  # 1-D: replicated
    assert tuple(fsdp_spec((16, 16), 2, 1024)) == ()  # under min_size: replicated
    assert tuple(fsdp_spec((768, 3072), 1, 0)) == ()  # no fsdp axis


def test_shard_batch_pads_and_masks_on_one_device():
    import jax

    from tofu_jax import parallel as par

    mesh = par.make_mesh(devices=jax.devices()[:1])
    x = np.ones((5, 4, 4, 1), np.float32)
    images, labels, mask = par.shard_batch(x, np.arange(5), 3, mesh)
    assert images.shape == (5, 4, 4, 1) and labels.dtype == np.int32
    assert np.asarray(mask).tolist() == [True] * 3 + [False] * 2
    with pytest.raises(ValueError, match="fsdp"):
        par.make_mesh(fsdp=3, devices=jax.devices()[:1])


def test_initialize_distributed_is_a_no_op_for_one_process(monkeypatch):
    from tofu_jax import parallel as par

    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "TOFU_DISTRIBUTED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert par.initialize_distributed() is False
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert par._cluster_detected()
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "w0,w1")
    assert par._cluster_detected()
