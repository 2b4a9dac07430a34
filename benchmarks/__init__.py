"""absl benchmark binaries: thin glue from flags to lbgap_tf library calls.

Importing this package (which ``python -m benchmarks.NAME`` does before the binary's own
module) sets TensorFlow's native (C++) log threshold: TensorFlow reads ``TF_CPP_MIN_LOG_LEVEL``
once, when it is imported, so no flag parsed later can change it. At the default verbosity it
becomes 2 (native errors only: no INFO chatter, no ``assert_op.cc`` warnings under XLA); with
``--verbosity=1`` or higher (on the command line or in a flag file) it becomes 0 and every
native line is printed. A ``TF_CPP_MIN_LOG_LEVEL`` already in the environment is left as it
is. The rest of the logging policy is in ``benchmarks.common``.
"""

import os
import sys

from absl import flags

NATIVE_LOG_LEVEL_ENV = "TF_CPP_MIN_LOG_LEVEL"
NATIVE_LOG_LEVEL_QUIET = "2"  # ERROR and FATAL only.
NATIVE_LOG_LEVEL_ALL = "0"


def requested_verbosity(argv: list[str]) -> int:
    """The ``--verbosity``/``-v`` given in ``argv`` (flag files included), 0 when absent.

    Parsed apart from the binary's flags, which do not exist yet when this runs; an
    unreadable value counts as 0 here and is reported by the binary's own parse.
    """
    peek = flags.FlagValues()
    flags.DEFINE_integer("verbosity", 0, "absl's --verbosity.", short_name="v",
                         flag_values=peek)
    try:
        peek(list(argv) or [""], known_only=True)
    except flags.Error:
        return 0
    return peek.verbosity


def native_log_level(argv: list[str]) -> str:
    """The ``TF_CPP_MIN_LOG_LEVEL`` for a binary started with ``argv``."""
    if requested_verbosity(argv) >= 1:
        return NATIVE_LOG_LEVEL_ALL
    return NATIVE_LOG_LEVEL_QUIET


if NATIVE_LOG_LEVEL_ENV not in os.environ:
    os.environ[NATIVE_LOG_LEVEL_ENV] = native_log_level(sys.argv)
