#!/usr/bin/env bash
# Sets up .venv (see setup_env.sh) and runs the test suite. Extra arguments go to pytest.
source "$(dirname "$0")/setup_env.sh"
ensure_fashion_mnist
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
