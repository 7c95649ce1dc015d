"""The arguments several subcommands share, and the parser whose errors are user errors."""

from __future__ import annotations

import argparse

from .errors import UsageError

__all__ = ["Parser", "floats", "add_data_arguments", "add_trust", "add_force", "add_ray", "add_verbose"]


class Parser(argparse.ArgumentParser):
    """argparse whose errors (an unknown option, a bad value) raise :class:`UsageError`, so
    they take the one error line of :mod:`.errors` (exit code 2)."""

    def error(self, message: str):
        raise UsageError(f"{message}; see {self.prog} --help")


def floats(text: str) -> list[float]:
    """``--eps 0,0.05,0.1``: comma-separated numbers."""
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_data_arguments(p, test_default=None) -> None:
    p.add_argument("--dataset", default="fashion_mnist",
                   help="a built-in name (fashion_mnist, digits), a TFDS name, or an .npz with x_train, y_train, "
                   "x_test, y_test (default: fashion_mnist)")
    p.add_argument("--test-samples", type=int, default=test_default, help="score on the first N test inputs")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def add_trust(p) -> None:
    p.add_argument("--trust-model", action="store_true",
                   help="load --model even if it holds Lambda layers or names code outside Keras, tfmot and "
                   "keras_qrobust (that code runs): only for files you wrote (see docs/guard.md, Untrusted files)")


def add_force(p) -> None:
    p.add_argument("--force", action="store_true",
                   help="go on with a --model whose clean accuracy on the data is near chance (untrained, or inputs "
                   "preprocessed differently from training)")


def add_ray(parser, what: str) -> None:
    parser.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                        help=f"run {what} as Ray tasks: alone, on a Ray instance started on this machine; 'auto' or "
                             "host:port joins a running cluster (needs the ray extra; docs/cluster.md)")


def add_verbose(p) -> None:
    p.add_argument("--verbose", action="store_true",
                   help="also show TensorFlow's, the converters' and runtimes' own log lines and warnings")
