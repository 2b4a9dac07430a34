#!/usr/bin/env bash
# Sets up .venv (see setup_env.sh), makes sure real Fashion-MNIST is there, and runs the main
# job: the generalization-gap benchmark's CPU preset (F1 on Fashion-MNIST, SB vs LB, Tables
# 2-4, gated against the shipped baseline). Extra arguments go to benchmarks.gap.
source "$(dirname "$0")/setup_env.sh"
ensure_fashion_mnist
dataset=fashion_mnist
if [ ! -d "$FASHION_MNIST_DIR" ]; then
  dataset=mnist  # TFDS downloads MNIST where the machine can reach it.
fi
exec .venv/bin/python -m benchmarks.gap --flagfile=flags/cpu/gap_F1_fmnist.flags \
  --dataset="$dataset" --baseline=baselines/cpu_F1_fmnist.json "$@"
