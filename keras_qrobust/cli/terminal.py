"""What the command line shows on the terminal: our messages, and not the libraries' log lines."""

from __future__ import annotations

import contextlib
import sys

__all__ = ["say", "quiet"]


def say(message: str) -> None:
    """One line on stderr (stdout stays for results)."""
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def quiet(verbose: bool):
    """Without ``--verbose``: TensorFlow's, the TFLite converter's and LiteRT's native log lines
    (written straight to file descriptor 2) and Python warnings are dropped; our own messages
    and progress bars (Python's ``sys.stderr``) still show. Only when ``sys.stderr`` is the
    process's real stderr (not, e.g., a test's capture)."""
    import io
    import logging
    import os
    import warnings

    try:
        real = not verbose and sys.stderr.fileno() == 2
    except (AttributeError, OSError, io.UnsupportedOperation):
        real = False
    with warnings.catch_warnings():
        if not verbose:
            warnings.simplefilter("ignore")
        if not real:
            yield
            return
        levels = {name: logging.getLogger(name).level for name in ("tensorflow", "absl")}
        for name in levels:
            logging.getLogger(name).setLevel(logging.ERROR)
        sys.stderr.flush()
        saved, original = os.dup(2), sys.stderr
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1, encoding=original.encoding, errors="backslashreplace")
        try:
            yield
        finally:
            sys.stderr.flush()
            sys.stderr.close()
            sys.stderr = original
            os.dup2(saved, 2)
            os.close(saved)
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
