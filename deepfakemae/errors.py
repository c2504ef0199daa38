"""The errors a user can act on, and the one place a command turns them into an exit code.

Every such error derives from :class:`DeepfakeMAEError` (and keeps the ``ValueError`` or
``RuntimeError`` base callers catch it by); :func:`reports_errors` wraps a command: the error
becomes one line on stderr, ``deepfakemae <command>: error: <message>``, and the command returns
the error's ``exit_code`` (2 unless the class says otherwise).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

Command = TypeVar("Command", bound=Callable[..., int])


class DeepfakeMAEError(Exception):
    """An error whose message names what is wrong and the fix; a command exits ``exit_code``."""

    exit_code = 2


class UsageError(DeepfakeMAEError, ValueError):
    """Bad command-line arguments or inputs (exit code 2)."""


def error_line(command: str, exc: BaseException) -> str:
    """``deepfakemae <command>: error: <message>``, the message's lines joined by ``; ``."""
    text = "; ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return f"deepfakemae {command}: error: {text or type(exc).__name__}"


def reports_errors(command: str) -> Callable[[Command], Command]:
    """Decorate a command's run function: a :class:`DeepfakeMAEError` it raises is printed as
    :func:`error_line` on stderr and its ``exit_code`` returned."""
    def decorate(run: Command) -> Command:
        @functools.wraps(run)
        def wrapped(*args, **kwargs) -> int:
            try:
                return run(*args, **kwargs)
            except DeepfakeMAEError as exc:
                print(error_line(command, exc), file=sys.stderr, flush=True)
                return exc.exit_code
        return wrapped  # type: ignore[return-value]
    return decorate
