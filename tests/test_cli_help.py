"""``--help`` stands alone: every argument of every command and subcommand says what it is and its default."""

import argparse

import pytest

from conftest import all_parsers

PARSERS = list(all_parsers())


def arguments(parser):
    """(name, action, help as printed) of each argument of ``parser``, -h/--help and subcommand lists aside."""
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = "/".join(action.option_strings) or action.dest
        yield name, action, formatter._expand_help(action) if action.help else ""


def shown(default) -> tuple[str, ...]:
    """How a help text may print ``default``: str, or %g for a float (1e-08, 1 for 1.0)."""
    return (str(default), f"{default:g}") if isinstance(default, float) else (str(default),)


@pytest.mark.parametrize("path, parser", PARSERS, ids=[" ".join(p) or "sparsa" for p, _ in PARSERS])
def test_cli_help_every_argument_has_help_and_states_its_default(path, parser):
    for name, action, text in arguments(parser):
        assert text.strip(), f"sparsa {' '.join(path)} {name}: no help text"
        if action.default is not None and action.default is not False and action.default != argparse.SUPPRESS:
            assert "default" in text, f"sparsa {' '.join(path)} {name}: help does not state its default"
            assert any(s in text for s in shown(action.default)), \
                f"sparsa {' '.join(path)} {name}: help does not show the default {action.default!r}: {text!r}"


@pytest.mark.parametrize("path, parser", PARSERS, ids=[" ".join(p) or "sparsa" for p, _ in PARSERS])
def test_cli_help_every_subcommand_has_help(path, parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name in action.choices:
                assert helps.get(name), f"sparsa {' '.join((*path, name))}: no help text in the command list"


def test_cli_help_walks_every_command():
    names = {" ".join(p) for p, _ in PARSERS}
    assert {"eval", "compress", "generate", "demo", "ba", "sfm", "merge", "merge-eval", "bench quality",
            "bench encoder", "attention eval", "attention bench"} <= names


@pytest.mark.parametrize("path", [p for p, _ in PARSERS])
def test_cli_help_prints_and_exits_zero(capsys, path):
    from sparsa.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([*path, "--help"])
    assert exit_.value.code == 0 and "usage: sparsa" in capsys.readouterr().out
