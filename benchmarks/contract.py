"""The error contract of every binary, without TensorFlow (see ``benchmarks.common``).

A failing binary writes exactly one line ``PROGRAM: error: MESSAGE`` as the last line on
stderr and exits with 2 for a bad flag or 1 for bad input at run time (a library
``ValueError`` or a file system error), with no traceback and nothing written.
``benchmarks.common`` builds its entry point on these pieces; binaries that only read and
write CSV files start with ``run`` and so never import TensorFlow::

    if __name__ == "__main__":
        contract.run(main)
"""

import os
import sys

from absl import app, flags, logging

EXIT_FLAG_ERROR = 2
EXIT_RUN_ERROR = 1


def fail(message, status: int) -> None:
    """Writes the one-line error of the contract and exits with ``status``."""
    program = os.path.basename(sys.argv[0]) if sys.argv else "benchmark"
    one_line = " ".join(str(message).split())
    sys.stderr.write(f"{program}: error: {one_line}\n")
    sys.stderr.flush()
    sys.exit(status)


def parse_flags(argv: list[str]) -> list[str]:
    """Parses ``argv`` into FLAGS; a bad flag or a stray argument is one line and exit 2."""
    try:
        remaining = flags.FLAGS(argv)
    except flags.Error as error:
        fail(f"{error} (see --helpfull)", EXIT_FLAG_ERROR)
    if len(remaining) > 1:
        fail(f"unexpected arguments {remaining[1:]}: pass every setting as --name=value",
             EXIT_FLAG_ERROR)
    return remaining


def guard(main):
    """``main`` with a library ``ValueError`` or a file system error (``OSError``: a folder
    that cannot be created or written, a full disk) turned into one stderr line and exit
    status 1 (with ``--verbosity=1`` the error propagates with its traceback)."""

    def guarded(argv):
        try:
            return main(argv)
        except ValueError as error:
            if logging.level_debug():
                raise
            fail(error, EXIT_RUN_ERROR)
        except OSError as error:
            if logging.level_debug():
                raise
            fail(f"cannot read or write a file ({error}): check the paths given, their "
                 "permissions and the free space of --output_dir", EXIT_RUN_ERROR)

    return guarded


def run(main) -> None:
    """``absl.app.run(main)`` under the contract, for binaries without TensorFlow."""
    app.run(guard(main), flags_parser=parse_flags)
