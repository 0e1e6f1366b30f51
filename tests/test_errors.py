"""The user-error hierarchy and how the CLI reports it: one line and exit 2 for a user error (or an
OSError), the traceback for anything else (a bug) and for any error under ``--debug``."""

import pytest

from tofu_jax import cli
from tofu_jax.errors import ConfigError, DataError, InputError, NonFiniteError, UserError


@pytest.mark.parametrize("error", [ConfigError, InputError, DataError, NonFiniteError])
def test_every_error_is_a_user_error_and_a_value_error(error):
    assert issubclass(error, UserError) and issubclass(error, ValueError)
    with pytest.raises(ValueError, match="what to do"):  # callers' ``except ValueError`` keeps working
        raise error("what is wrong and what to do")


def test_non_finite_error_is_also_a_floating_point_error():
    assert issubclass(NonFiniteError, FloatingPointError)
    assert not issubclass(ConfigError, FloatingPointError)


def _command_raising(monkeypatch, error: BaseException):
    def command(args):
        raise error

    monkeypatch.setattr(cli, "cmd_run", command)  # build_parser() binds it when main() runs


@pytest.mark.parametrize(
    "error,line",
    [
        (DataError("no data in /x\n--------------------\nmore detail"), "no data in /x"),
        (ConfigError("width must be > 0, got 0"), "width must be > 0, got 0"),
        (FileNotFoundError(2, "No such file", "/x.npz"), "[Errno 2] No such file: '/x.npz'"),
    ],
)
def test_cli_prints_a_user_error_as_one_line_and_exits_2(monkeypatch, capsys, error, line):
    _command_raising(monkeypatch, error)
    assert cli.main(["run"]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"tofu-jax: error: {line}\n" and captured.out == ""


def test_cli_reraises_other_exceptions_and_any_error_under_debug(monkeypatch, capsys):
    _command_raising(monkeypatch, RuntimeError("a bug in tofu_jax"))
    with pytest.raises(RuntimeError, match="a bug in tofu_jax"):
        cli.main(["run"])
    _command_raising(monkeypatch, ConfigError("bad flag"))
    with pytest.raises(ConfigError, match="bad flag"):
        cli.main(["--debug", "run"])
    assert capsys.readouterr().err == ""
