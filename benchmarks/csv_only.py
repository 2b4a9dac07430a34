"""The entry point of binaries that only read and write CSV files (no TensorFlow import).

They keep the error contract of ``benchmarks.common`` (one line ``PROGRAM: error: MESSAGE``
last on stderr, exit 2 for a bad flag and 1 for bad input, no traceback, nothing written)
without importing TensorFlow, so they start in a fraction of a second::

    if __name__ == "__main__":
        csv_only.run(main)
"""

import os
import sys

from absl import app, flags

from lbgap_tf import results

EXIT_FLAG_ERROR, EXIT_RUN_ERROR = 2, 1


def fail(message, status: int) -> None:
    """Writes the one error line of the contract and exits with ``status``."""
    program = os.path.basename(sys.argv[0]) or "binary"
    sys.stderr.write(f"{program}: error: {' '.join(str(message).split())}\n")
    sys.exit(status)


def _parse(argv):
    try:
        remaining = flags.FLAGS(argv)
    except flags.Error as error:
        fail(f"{error} (see --helpfull)", EXIT_FLAG_ERROR)
    if len(remaining) > 1:
        fail(f"unexpected arguments {remaining[1:]}: pass every setting as --name=value",
             EXIT_FLAG_ERROR)
    return remaining


def run(main) -> None:
    """Parses the flags and runs ``main``; a ``ValueError`` or ``ResultsError`` (bad input)
    becomes the one error line and exit status 1."""

    def guarded(argv):
        try:
            main(argv)
        except (ValueError, results.ResultsError) as error:
            fail(error, EXIT_RUN_ERROR)

    app.run(guarded, flags_parser=_parse)
