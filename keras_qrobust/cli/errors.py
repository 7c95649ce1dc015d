"""The one error style of the command line.

A user error (bad usage or bad input: :class:`~keras_qrobust.inputs.InputError`, which
:class:`UsageError`, guard's ``GuardInputError`` and argparse's errors all are, an existing
output file, an unknown dataset, a model RobustQuantizer cannot quantize) becomes one line
``keras-qrobust: error: <problem>; <fix>`` on stderr and exit code 2, before anything is
written. A failed computation becomes ``keras-qrobust: error: <command> failed: <type>:
<message>`` and exit code 1. :func:`run_command` is the only place either is printed.
"""

from __future__ import annotations

import argparse
from typing import Callable, Mapping

from ..inputs import InputError
from .terminal import quiet, say

__all__ = ["PROG", "UsageError", "OK", "FAILED", "BAD_INPUT", "run_command"]

PROG = "keras-qrobust"
OK, FAILED, BAD_INPUT = 0, 1, 2


class UsageError(InputError):
    """Bad usage or bad input of a subcommand (exit code 2)."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that are the user's input, not a failure (imported only when one is raised)."""
    from ..datasets import DatasetError
    from ..transforms import UnsupportedModelError

    return InputError, FileExistsError, DatasetError, UnsupportedModelError


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def run_command(parser: argparse.ArgumentParser, argv, commands: Mapping[str, Callable[..., int]]) -> int:
    """Parse ``argv``, run its subcommand (``commands[args.command](args)``) and return the exit
    code: 0 done (or ``--help``), 1 failed, 2 bad usage or input, each error as one line."""
    command = PROG
    try:
        args = parser.parse_args(argv)  # a parse error raises UsageError (see options.Parser)
        command = args.command
        with quiet(args.verbose):
            return commands[args.command](args)
    except SystemExit as exit_:  # --help: argparse prints it and exits 0
        if exit_.code is None or isinstance(exit_.code, int):
            return exit_.code or OK
        raise
    except _user_errors() as error:  # the user's input: one line, not a traceback
        say(f"{PROG}: error: {_first_line(error)}")
        return BAD_INPUT
    except Exception as error:  # noqa: BLE001 - a failed computation: exit 1 with its cause
        say(f"{PROG}: error: {command} failed: {type(error).__name__}: {error}")
        return FAILED
