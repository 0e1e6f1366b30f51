"""Bad flags and files through the ``tofu-jax`` CLI: exit status 2 and one ``tofu-jax: error:`` line.

Most cases call :func:`tofu_jax.cli.main` in-process (the console script's entry point, so the same
code path) to stay fast; a few run the real command in a subprocess to prove no traceback escapes.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tofu_jax.cli import main


def _model(files):
    return ["--checkpoint", str(files / "model.npz"), "--model", str(files / "card.json"),
            "--data-dir", str(files / "data")]  # fmt: skip


BAD_FLAGS = [
    ["run", "--batch-size", "0"], ["run", "--batch-size", "x"], ["run", "--num-examples", "-5"],
    ["run", "--calib-images", "0"], ["run", "--bench-batch", "0"], ["run", "--bench-runs", "0"],
    ["run", "--plan-images", "0"], ["run", "--budget", "1.5"], ["run", "--budget", "-0.1"],
    ["run", "--budget", "nan"], ["run", "--budget", "inf"], ["run", "--budget", "forty"],
    ["run", "--planner", "greedy"], ["run", "--metric", "L_nothing"], ["run", "--selection", "x"],
    ["run", "--format", "keras"], ["run", "--dtype", "int8"], ["run", "--seed", "-1"],
    ["run", "--image-size", "0"], ["run", "--num-classes", "0"], ["run", "--r-profile", "0"],
    ["run", "--gelu", "relu"], ["run", "--layernorm-eps", "0"], ["run", "--input-norm", "zscore"],
    ["run", "--unknown-flag"], ["profile", "--metric", "nope"], ["export", "--platforms", "bogus"],
    ["export", "--platforms", ","], ["export", "--batch", "0"], ["export", "--tf", "maybe"],
    ["visualize", "--index", "-1"], ["finetune", "--lr", "0"], ["finetune", "--lr", "-1e-3"],
    ["finetune", "--steps", "0"], ["finetune", "--train-batch", "0"], ["finetune", "--crop-pad", "-1"],
    ["finetune", "--ckpt-every", "0"], ["finetune", "--train-images", "-1"], ["bogus-command"],
]  # fmt: skip


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tofu-jax: error: "), err
    return lines[0]


@pytest.mark.parametrize("argv", BAD_FLAGS, ids=" ".join)
def test_bad_flags(argv, capsys):
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert "argument" in line or "unrecognized" in line


def _write(tmp_path, name, content) -> str:
    path = tmp_path / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return str(path)


def test_damaged_checkpoints(files, tmp_path, capsys):
    raw = (files / "model.npz").read_bytes()
    for i, content in enumerate([b"", raw[:100], raw[: len(raw) // 2], b"PK\x03\x04" + bytes(50)]):
        path = _write(tmp_path, f"bad{i}.npz", content)
        assert main(["plan", "--checkpoint", path, "--model", str(files / "card.json")]) == 2
        line = _one_error_line(capsys)
        assert f"bad{i}.npz" in line and ("damaged" in line or "not an .npz" in line)


@pytest.mark.parametrize(
    "card,needle",
    [
        ('{"config": {"width": "16"}}', "'width' must be a positive integer"),
        ('{"config": {"cls_token": "yes"}}', "'cls_token' must be true or false"),
        ('{"config": {"layernorm_eps": -1}}', "'layernorm_eps' must be a number in (0, 1)"),
        ('{"config": {"input_norm": "zscore"}}', "'input_norm' must be null or one of"),
        ('{"config": {"depth": 2.5}}', "'depth' must be a positive integer"),
        ('{"config": {"wdith": 16}}', "unknown ViTConfig fields"),
        ("[1, 2]", "must be a JSON object"),
        ("{not json", "cannot read model config"),
    ],
)
def test_bad_model_cards(files, tmp_path, capsys, card, needle):
    base = json.loads((files / "card.json").read_text())
    try:
        base["config"].update(json.loads(card)["config"])
        text = json.dumps(base)
    except (json.JSONDecodeError, TypeError, KeyError):
        text = card
    path = _write(tmp_path, "card.json", text)
    assert main(["plan", "--checkpoint", str(files / "model.npz"), "--model", path]) == 2
    assert needle in _one_error_line(capsys)


@pytest.mark.parametrize(
    "schedule,needle",
    [
        ({"version": 1, "blocks": [{"op": "prune", "r": 9}] * 3}, "at most"),
        ({"version": 1, "blocks": [{"op": "prune", "r": 5}] * 3}, "block 2 (prune) asks to remove r=5"),
        ({"version": 1, "blocks": [{"op": "prune", "r": 1}] * 2}, "depth 3"),
        ({"version": 1, "blocks": [{"op": "melt", "r": 1}] * 3}, "unknown op"),
        ({"version": 1, "blocks": [{"op": "prune", "r": "2"}] * 3}, "non-negative int"),
        ({"version": 1, "blocks": [{"op": "prune", "r": 1}] * 3, "prop_attn": "no"}, "prop_attn"),
        ({"version": 7, "blocks": []}, "unsupported schedule version"),
        ("[]", "must be an object"),
        ("{oops", "not valid JSON"),
    ],
)
def test_bad_schedules(files, tmp_path, capsys, schedule, needle):
    text = schedule if isinstance(schedule, str) else json.dumps(schedule)
    path = _write(tmp_path, "schedule.json", text)
    argv = ["run", *_model(files), "--schedule", path, "--num-examples", "4", "--out-dir", str(tmp_path)]
    assert main(argv) == 2
    assert needle in _one_error_line(capsys)


def test_bad_profiles_and_data(files, tmp_path, capsys):
    plan = ["plan", *_model(files)]
    assert main([*plan, "--profile", _write(tmp_path, "p.json", '{"version": 1, "blocks": []}')]) == 2
    assert "'blocks' must be a non-empty list" in _one_error_line(capsys)
    assert main([*plan, "--profile", _write(tmp_path, "q.json", b"\xff\xfe")]) == 2
    assert "cannot read profile" in _one_error_line(capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["run", *_model(files)[:4], "--data-dir", str(empty), "--out-dir", str(tmp_path)]
    assert main(argv) == 2
    assert "missing" in _one_error_line(capsys)
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    for f in (files / "data").iterdir():
        (truncated / f.name).write_bytes(f.read_bytes()[:-7])
    assert main(["run", *_model(files)[:4], "--data-dir", str(truncated), "--out-dir", str(tmp_path)]) == 2
    assert "gzip" in _one_error_line(capsys)


def test_bad_images_for_visualize(files, tmp_path, capsys):
    vis = ["visualize", *_model(files), "--budget", "0.2", "--planner", "per_block", "--calib-images", "4"]
    assert main([*vis, _write(tmp_path, "x.png", b"\x89PNG garbage"), "--out", str(tmp_path / "o.png")]) == 2
    assert "cannot read image" in _one_error_line(capsys)
    big = tmp_path / "big.npy"
    np.save(big, np.zeros((3, 3)))
    assert main([*vis, str(big), "--out", str(tmp_path / "o.png")]) == 2
    assert "cannot read image" in _one_error_line(capsys)


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["run", "--budget", "2"], "argument --budget"),
        (["plan", "--checkpoint", "{tmp}/trunc.npz", "--model", "S/16"], "damaged or truncated"),
        (["plan", "--checkpoint", "{tmp}/pickled.npz", "--model", "S/16"], "pickled Python objects"),
    ],
)
def test_real_command_prints_no_traceback(tmp_path, argv, needle):
    (tmp_path / "trunc.npz").write_bytes(b"PK\x03\x04" + bytes(40))
    np.savez(tmp_path / "pickled.npz", x=np.array([object()], dtype=object))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "tofu_jax", *argv], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tofu-jax: error: ") and needle in lines[0]


def test_debug_shows_the_traceback(capsys):
    from tofu_jax.errors import UserError

    with pytest.raises(UserError, match="--budget"):
        main(["--debug", "run", "--budget", "2"])


def test_data_that_does_not_fit_the_model_or_flags(files, tmp_path, capsys):
    run = ["run", *_model(files), "--out-dir", str(tmp_path), "--num-examples", "4"]
    assert main([*run, "--num-classes", "5", "--reset-head"]) == 2
    assert "but the model has 5 classes" in _one_error_line(capsys)
    assert main([*run, "--bogus", "1"]) == 2
    assert "see `tofu-jax run --help`" in _one_error_line(capsys)


@pytest.mark.parametrize(
    "text,needle",
    [("prune:9x3", "at most 8 can be removed"), ("melt:2x3", "unknown op"), ("prune:2x2", "depth 3"),
     ("prune:two", "expected op:r or none")],
)  # fmt: skip
def test_compact_schedules(files, tmp_path, capsys, text, needle):
    argv = ["run", *_model(files), "--schedule", text, "--num-examples", "4", "--out-dir", str(tmp_path)]
    assert main(argv) == 2
    assert needle in _one_error_line(capsys)
