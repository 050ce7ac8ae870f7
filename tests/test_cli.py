"""Every `gmat` subcommand answers --help (the modules import and register their arguments)."""

import subprocess
import sys

import pytest

from gmat.cli import _SUBCOMMANDS, main


def test_top_level_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in _SUBCOMMANDS:
        assert name in out


@pytest.mark.parametrize("command", sorted(_SUBCOMMANDS))
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: gmat" in capsys.readouterr().out


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "gmat.cli", "--help"], capture_output=True, text=True, check=True)
    assert "demo" in out.stdout


@pytest.mark.parametrize("nested", [("eval", "mlm"), ("eval", "rc")])
def test_nested_command_help(nested, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*nested, "--help"])
    assert exc.value.code == 0
    assert f"usage: gmat {' '.join(nested)}" in capsys.readouterr().out


def test_eval_help_lists_the_nested_commands_and_their_options(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    assert "gmat eval mlm [-h]" in out and "gmat eval rc [-h]" in out
    for option in ("--model MODEL", "--data DATA", "--memory-swap", "--max-questions MAX_QUESTIONS"):
        assert option in out
