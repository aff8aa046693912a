"""How cityenv's command lines (``python -m cityenv.rollout``, ``cityenv.train``) report errors.

A typed error (:class:`~cityenv.errors.CityEnvError`: bad input, a missing file, data that does
not fit) is the user's to fix, so it is printed as one message, ``error: <Type>: <message>``, on
stderr, and the process exits with status 2. Anything else is a bug and keeps its traceback.
``--verbose`` on the command line (taken out before Hydra reads it) or ``HYDRA_FULL_ERROR=1``
shows the traceback of typed errors too (and of Hydra's own errors).

Usage in an app's ``__main__``::

    @hydra.main(...)
    def main(cfg):
        with typed_errors(cleanup=...):
            run(cfg)

    if __name__ == "__main__":
        take_verbose_flag()
        main()
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from cityenv.errors import CityEnvError

__all__ = ["EXIT_TYPED_ERROR", "VERBOSE_FLAG", "full_errors", "take_verbose_flag", "typed_errors"]

EXIT_TYPED_ERROR = 2
"""Exit status of a command stopped by a typed error (1 stays Python's for a crash)."""

VERBOSE_FLAG = "--verbose"


def take_verbose_flag(argv: list[str] | None = None) -> bool:
    """Remove ``--verbose`` from ``argv`` (``sys.argv``); if it was there, ask for tracebacks.

    Hydra refuses arguments it does not know, so the flag is taken out before it parses them
    and turned into ``HYDRA_FULL_ERROR=1``, which Hydra and :func:`typed_errors` both read.

    Returns:
        Whether the flag was given.
    """
    argv = sys.argv if argv is None else argv
    given = VERBOSE_FLAG in argv
    if given:
        argv[:] = [a for a in argv if a != VERBOSE_FLAG]
        os.environ["HYDRA_FULL_ERROR"] = "1"
    return given


def full_errors() -> bool:
    """Whether tracebacks were asked for (``--verbose`` or ``HYDRA_FULL_ERROR=1``)."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


@contextmanager
def typed_errors(cleanup: Callable[[], None] | None = None) -> Iterator[None]:
    """Turn a typed error into its message on stderr and exit status 2.

    Args:
        cleanup: Called first when any exception leaves the block (typed or not, so a crash
            cleans up too), e.g. to remove a run folder that holds nothing yet.

    Raises:
        SystemExit: With status 2 for a :class:`CityEnvError` (unless tracebacks were asked
            for: then the error itself).
    """
    try:
        yield
    except BaseException as error:
        if cleanup is not None:
            cleanup()
        if not isinstance(error, CityEnvError) or full_errors():
            raise
        print(
            f"error: {type(error).__name__}: {error}\n"
            f"(run again with {VERBOSE_FLAG} or HYDRA_FULL_ERROR=1 for the traceback)",
            file=sys.stderr,
        )
        sys.exit(EXIT_TYPED_ERROR)
