"""End-to-end run of ``experiments/dit_fmnist.py`` at toy size: train, resume, sample, evaluate."""

import json

import numpy as np

from experiments import dit_fmnist
from tests.test_cli import assets  # noqa: F401  (tiny ViT checkpoint + tiny IDX dataset)


def test_methods_cover_every_op_and_r_with_equal_flops_step_baselines():
    args = dit_fmnist.parse_args(["--patch-size", "4", "--r", "4", "12", "--sample-steps", "50"])
    got = [
        (m["name"], m["steps"], round(m["flops_ratio"], 3))
        for m in dit_fmnist.methods(args, dit_fmnist.dit_config(args))
    ]
    names = [g[0] for g in got]
    assert names[0] == "none" and len(names) == 1 + 2 * 3 + 2
    assert [n for n in names if n.startswith("none, ")] == ["none, 48 steps", "none, 43 steps"]
    ratio = {n: f for n, _, f in got}
    assert ratio["merge_avg r=4"] == ratio["merge_mlerp r=4"] == ratio["prune r=4"] > ratio["prune r=12"]


def test_dit_experiment_trains_resumes_samples_and_scores(assets, tmp_path, capsys):  # noqa: F811
    work, out = tmp_path / "work", tmp_path / "res"
    argv = [
        "--workdir", str(work), "--out", str(out), "--data-dir", str(assets / "data"),
        "--patch-size", "7", "--width", "16", "--depth", "2", "--heads", "2",
        "--train-steps", "4", "--batch-size", "8", "--ckpt-every", "2", "--log-every", "2",
        "--lr", "1e-2", "--num-samples", "12", "--sample-batch", "6", "--sample-steps", "10",
        "--bench-runs", "1", "--bench-batch", "4", "--ops", "none,merge_mlerp,prune", "--r", "4",
        "--deviation-timesteps", "10", "900", "--real-images", "20",
        "--classifier-checkpoint", str(assets / "tiny.npz"), "--classifier-model", str(assets / "tiny.json"),
    ]  # fmt: skip
    payload = dit_fmnist.main(argv)
    names = [r["name"] for r in payload["results"]]
    assert names[0] == "none"
    assert names == ["none", "merge_mlerp r=4", "prune r=4", "none, 9 steps"]
    for res in payload["results"]:
        assert np.isfinite(res["frechet"]) and res["frechet"] >= 0
        assert 0.0 <= res["class_accuracy"] <= 1.0
        if res["op"] == "none":
            assert "eps_deviation" not in res
        else:
            assert res["flops_ratio"] < 1.0
            assert set(res["eps_deviation"]) == {"10", "900"}
            assert all(np.isfinite(v) and v > 0 for v in res["eps_deviation"].values())
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["train"]["steps"] == 4
    assert out.with_suffix(".png").stat().st_size > 0

    capsys.readouterr()
    again = dit_fmnist.main(argv)  # resumes: no training, samples come from the cache
    text = capsys.readouterr().out
    assert "resumed at step 4" in text and "cached" in text
    assert [r["psnr_db"] for r in again["results"]] == [r["psnr_db"] for r in payload["results"]]
