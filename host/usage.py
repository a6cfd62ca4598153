"""The command lines' error contract (``python -m host``, ``python -m host.eval``): a bad
value prints one line ``error: ...`` to stderr and exits with status 2 (no usage dump, no
traceback); an interrupt exits 130; a closed stdout (e.g. piped into ``head``) is not an
error.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys


class UsageError(Exception):
    """A bad argument or input file: reported as one line, exit status 2."""


@contextlib.contextmanager
def flag_errors(flag: str, errors=(ValueError, OSError)):
    """A ValueError / OSError in the block becomes the UsageError ``"<flag>: <what>"``."""
    try:
        yield
    except errors as e:
        raise UsageError(f"{flag}: {e}") from None


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad value as one 'error: ...' line (no usage dump)."""

    def error(self, message):
        raise UsageError(message)


def one_line(msg) -> str:
    return " ".join(str(msg).split())


def run_main(run, argv=None) -> int:
    """``run(argv)`` under the contract above; returns the exit status."""
    try:
        return run(argv)
    except UsageError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nerror: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout closed early (e.g. piped into head): not an error of ours
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
