# Sourced by the other scripts: creates .venv beside the checkout and installs lbgap_tf into it
# (CPU TensorFlow plus the test tools). Set PYTHON to choose the interpreter (3.10 or newer)
# and LBGAP_EXTRAS to install another variant, e.g. LBGAP_EXTRAS=gpu,test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[${LBGAP_EXTRAS:-cpu,test}]"
# TensorFlow's native log threshold is left to the binaries (benchmarks/__init__.py), which
# follow --verbosity; tests/conftest.py sets it for the test process.

# Real Fashion-MNIST comes from Debian's dataset-fashion-mnist package where apt-get is usable
# (as root); elsewhere the data loader falls back to TFDS, which downloads where it can.
FASHION_MNIST_DIR=/usr/share/datasets/fashion-mnist
ensure_fashion_mnist() {
  if [ -d "$FASHION_MNIST_DIR" ]; then
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing Debian's dataset-fashion-mnist into $FASHION_MNIST_DIR ..."
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null \
      || echo "warning: apt-get could not install dataset-fashion-mnist; TFDS will be tried" >&2
  else
    echo "note: $FASHION_MNIST_DIR is missing and apt-get is not usable here; TFDS will be tried" >&2
  fi
}
