"""Command line: ``keras-qrobust guard | quantize | attack | evaluate | export | report``.

Exit codes: 0 success; 1 a stage or computation failed (or guard found no candidate above
its clean-accuracy floor); 2 bad usage or bad input, reported in one line before anything
is written. See docs/guard.md.

One module per subcommand (:mod:`.guard`, :mod:`.quantize`, :mod:`.attack`,
:mod:`.evaluate`, :mod:`.export`, :mod:`.report`), each with ``add_parser(commands)`` and
``run(args)``; :mod:`.options` holds the arguments they share, :mod:`.checks` and
:mod:`.outputs` the checks made before any work, :mod:`.errors` the one error line and the
exit codes, :mod:`.terminal` what reaches the terminal.
"""

from __future__ import annotations

import argparse

from . import attack, evaluate, export, guard, quantize, report
from .errors import PROG, UsageError, run_command
from .guard import DEFAULT_GUARD_OUT
from .options import Parser, add_verbose
from .quantize import DEFAULT_SETTINGS

__all__ = ["main", "UsageError", "DEFAULT_SETTINGS", "DEFAULT_GUARD_OUT"]

#: subcommand -> its module, in the order ``--help`` lists them
_SUBCOMMANDS = {"guard": guard, "quantize": quantize, "attack": attack, "evaluate": evaluate, "export": export,
                "report": report}


def _build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description=__doc__.split("\n\n")[0].replace("``", ""))
    commands = parser.add_subparsers(dest="command", required=True)
    for module in _SUBCOMMANDS.values():
        module.add_parser(commands)
    for command in commands.choices.values():
        add_verbose(command)
    return parser


def main(argv=None) -> int:
    """Run one subcommand; returns its exit code (0 ok, 1 failed, 2 bad usage or input)."""
    return run_command(_build_parser(), argv, {name: module.run for name, module in _SUBCOMMANDS.items()})
