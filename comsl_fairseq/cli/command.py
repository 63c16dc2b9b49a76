"""What every console script shares: a bad input ends in one line, never a traceback.

Each ``main`` is wrapped with :func:`command`. An exception that escapes it becomes
``error: <message>`` on standard error and exit status 2 (130 after Ctrl-C); the library's
messages name the file and what to change. ``--debug``, accepted by every command, lets the
traceback through instead; every command builds its parser with :func:`argument_parser`, so
that its ``--help`` lists the flag.
"""
import argparse
import functools
import os
import pickle
import sys
from pathlib import Path

import yaml

DEBUG_FLAG = "--debug"
# Raised for bad input: messages from our code name the file; OSError carries its file name.
USER_ERRORS = (ValueError, OSError, EOFError, RuntimeError, yaml.YAMLError, pickle.UnpicklingError)


def one_line(error: BaseException) -> str:
    """The error as one line: OSError as ``file: reason``, other messages with their line
    breaks folded; an unexpected kind of error says so and points at ``--debug``."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        files = " -> ".join(str(f) for f in (error.filename, error.filename2) if f is not None)
        return f"{files}: {error.strerror}"
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
    if not isinstance(error, USER_ERRORS):
        return f"{type(error).__name__}: {text} (unexpected: {DEBUG_FLAG} shows where; please report it)"
    return text


def argument_parser(**kwargs) -> argparse.ArgumentParser:
    """``argparse.ArgumentParser(**kwargs)`` with the ``--debug`` flag declared. :func:`command`
    takes the flag out of argv before ``main`` parses it; it is declared here so that ``--help``
    lists it (and a parser that sees it anyway accepts it)."""
    p = argparse.ArgumentParser(**kwargs)
    p.add_argument(DEBUG_FLAG, action="store_true",
                   help="on an error, show the Python traceback instead of a one-line message")
    return p


def output_arg(value: str) -> Path:
    """argparse type of an ``--out`` the command writes to: an empty value (an unset shell
    variable) would write into the current folder, and ``DIR/`` names a folder that must exist."""
    if not value.strip():
        raise argparse.ArgumentTypeError("empty path (an unset shell variable?); name the file or folder to write")
    if value.endswith(("/", os.sep)) and not Path(value).is_dir():
        raise argparse.ArgumentTypeError(f"{value}: no such folder; create it first or name a file")
    return Path(value)


def positive_int(value: str) -> int:
    """argparse type of a count that must be at least 1 (beam, batch size, lengths)."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: must be at least 1")
    return n


def output_file(out: Path, default_name: str) -> Path:
    """The file a command writes for ``--out OUT``: ``OUT/default_name`` when OUT is an existing
    folder (never a file beside it, nor a failed rename onto it), else OUT itself."""
    return out / default_name if out.is_dir() else out


def command(main):
    """Wrap a console script's ``main(argv)``: exceptions become one line and exit status 2."""

    @functools.wraps(main)
    def wrapper(argv=None) -> int:
        argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
        debug = DEBUG_FLAG in argv
        if debug:
            argv = [a for a in argv if a != DEBUG_FLAG]
        try:
            return main(argv)
        except KeyboardInterrupt:
            if debug:
                raise
            print("interrupted", file=sys.stderr)
            return 130
        except Exception as e:  # noqa: BLE001  (the point of this wrapper)
            if debug:
                raise
            print(f"error: {one_line(e)}", file=sys.stderr)
            return 2

    return wrapper
