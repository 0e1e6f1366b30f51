"""End-to-end runs of the ``tofu-jax`` CLI on a tiny model and a tiny IDX dataset."""

import json
import subprocess
import sys

import pytest

from tests.helpers import TINY, random_params, write_fashion_idx
from tofu_jax.checkpoints import google
from tofu_jax.cli import main


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    params = random_params(TINY, 0, 0.3)
    google.save_npz(root / "tiny.npz", params)
    (root / "tiny.json").write_text(json.dumps({"config": TINY.to_dict()}))
    write_fashion_idx(root / "data", train=120, test=40)
    return root


def _common(assets):
    return [
        "--checkpoint",
        str(assets / "tiny.npz"),
        "--model",
        str(assets / "tiny.json"),
        "--data-dir",
        str(assets / "data"),
    ]


def test_run_writes_table_json_and_plot(assets, tmp_path, capsys):
    out = tmp_path / "out"
    argv = _common(assets) + [
        "--budget", "0.3", "--num-examples", "0", "--calib-images", "32", "--plan-images", "16",
        "--batch-size", "16", "--bench-batch", "8", "--bench-runs", "2", "--out-dir", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "baseline" in text and "tofu" in text and "tome" in text
    res = json.loads((out / "results.json").read_text())
    names = [r["name"] for r in res["rows"]]
    assert names == ["baseline", "tofu", "tome"]
    assert res["num_examples"] == 40
    for r in res["rows"][1:]:
        assert r["flops_ratio"] <= 0.7 and r["speedup"] > 0
    assert (out / "comparison.png").stat().st_size > 1000
    assert (out / "tofu_schedule.json").exists() and (out / "profile.json").exists()


def test_profile_and_plan_commands(assets, tmp_path, capsys):
    prof = tmp_path / "profile.json"
    assert main(["profile", *_common(assets), "--calib-images", "32", "--out", str(prof)]) == 0
    assert prof.exists() and prof.with_suffix(".png").exists()
    sched = tmp_path / "s.json"
    argv = ["plan", *_common(assets), "--profile", str(prof), "--planner", "split", "--budget", "0.25"]
    assert main([*argv, "--out", str(sched)]) == 0
    d = json.loads(sched.read_text())
    assert d["version"] == 1 and len(d["blocks"]) == 3 and d["meta"]["flops_ratio"] <= 0.75
    # The planned schedule drives `run`.
    out = tmp_path / "run"
    argv = _common(assets) + ["--schedule", str(sched), "--num-examples", "16", "--batch-size", "16"]
    assert (
        main([*argv, "--bench-batch", "4", "--bench-runs", "1", "--budget", "0.25", "--out-dir", str(out)])
        == 0
    )
    assert json.loads((out / "results.json").read_text())["planner"]["mode"] == "file"


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--budget", "1.5"], "argument --budget: expected a number in [0, 1), got 1.5"),
        (["--checkpoint", "/nonexistent.npz"], "not found"),
        (["--image-size", "30"], "image_size 30 is not a multiple of patch_size 7"),
        (["--num-classes", "5"], "different class count? pass reset_head"),
        (["--data-dir", "/nonexistent"], "does not exist"),
        (["--schedule", "/nonexistent.json"], "cannot read schedule"),
    ],
)
def test_user_errors_print_one_line_and_exit_2(assets, tmp_path, capsys, extra, needle):
    argv = _common(assets) + ["--num-examples", "8", "--out-dir", str(tmp_path)] + extra
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("tofu-jax: error:") and needle in "\n".join(err)
    assert "Traceback" not in "\n".join(err)


def test_module_entry_point_help():
    res = subprocess.run(
        [sys.executable, "-m", "tofu_jax", "--help"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0 and "profile" in res.stdout and "plan" in res.stdout


def test_finetune_trains_resumes_and_evaluates(assets, tmp_path, capsys):
    out = tmp_path / "ft"
    argv = [
        "finetune",
        *_common(assets),
        "--budget",
        "0.25",
        "--planner",
        "per_block",
        "--calib-images",
        "16",
    ]
    argv += [
        "--steps",
        "4",
        "--train-batch",
        "8",
        "--ckpt-every",
        "2",
        "--num-examples",
        "16",
        "--out-dir",
        str(out),
    ]
    assert main(argv) == 0
    res = json.loads((out / "finetune.json").read_text())
    assert [r["name"] for r in res["rows"]] == ["zero_shot", "finetuned"]
    assert len(res["train_log"]) == 4 and (out / "finetuned.npz").exists()
    # Re-running with more steps resumes from the saved state (step 4) instead of starting over.
    assert main([*argv[:-6], "--steps", "6", *argv[-4:]]) == 0
    assert len(json.loads((out / "finetune.json").read_text())["train_log"]) == 2


def test_finetune_rejects_negative_crop_padding(assets, tmp_path, capsys):
    argv = ["finetune", *_common(assets), "--budget", "0.25", "--steps", "2", "--crop-pad", "-1"]
    assert main([*argv, "--out-dir", str(tmp_path / "ft")]) == 2
    assert "argument --crop-pad: expected an integer >= 0, got -1" in capsys.readouterr().err


def test_visualize_draws_groups_and_schedule(assets, tmp_path):
    out = tmp_path / "vis" / "t.png"
    argv = [
        "visualize",
        *_common(assets),
        "--budget",
        "0.3",
        "--planner",
        "per_block",
        "--calib-images",
        "16",
    ]
    assert main([*argv, "--index", "2", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000 and (tmp_path / "vis" / "t_schedule.png").exists()
    assert main([*argv, "--index", "99999", "--out", str(out)]) == 2


def test_run_compiles_each_schedule_once_and_caches_it(assets, tmp_path, capsys):
    import logging

    import jax

    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    jax.clear_caches()  # programs earlier tests compiled for the same model and shapes
    jax.config.update("jax_log_compiles", True)
    try:
        argv = _common(assets) + [
            "--budget", "0.3", "--num-examples", "20", "--calib-images", "16", "--plan-images", "8",
            "--batch-size", "8", "--bench-runs", "1", "--out-dir", str(tmp_path / "out"),
        ]  # fmt: skip
        assert main(argv) == 0
    finally:
        jax.config.update("jax_log_compiles", False)
        logger.removeHandler(handler)
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    compiles = sum(m.startswith("Compiling jit(evaluate_batch)") for m in messages)
    assert res["planner"]["candidates"]  # scored by emulation: no program of their own
    assert compiles == 3  # baseline, ToFu and ToMe; evaluation and timing share programs
    assert "compiling" in capsys.readouterr().err
