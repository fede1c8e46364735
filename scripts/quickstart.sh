#!/usr/bin/env bash
# One command: set up .venv, then train an MSD adapter on the embedded SmolLM2-135M-Instruct with MultiJail
# (on-policy, LoRA, CPU, a few minutes). Extra arguments go to `msd-trl train`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# OpenMP's spin-waiting makes torch many times slower when other processes share the cores.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
exec .venv/bin/msd-trl train --config examples/configs/quickstart.yaml "$@"
