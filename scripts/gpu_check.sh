#!/usr/bin/env bash
# The GPU check (issue 23; docs/vllm.md, "The GPU check"): 7-8B shapes under QLoRA, on-policy MSD against TRL's
# DistillationTrainer and GKDTrainer, in one run of at most 8 minutes on a bare, offline GPU machine.
#
#   scripts/gpu_check.sh --prepare   here, with a package index: wheels of trl, datasets, bitsandbytes (+ small deps)
#                                    into wheels/ (git-ignored; carry it with the tree, < 64 MiB in all)
#   scripts/gpu_check.sh             there: install what is missing from wheels/ (no index), run, write
#                                    docs/results/gpu_check.json
#   scripts/gpu_check.sh --tiny      CPU, tiny shapes, seconds: the same code path (tests/test_gpu_check.py runs it)
#
# Other arguments go to examples/benchmarks/gpu_check.py (--help lists them). PYTHON selects the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
case " $* " in
  *" --prepare "* | *" --tiny "* | *" --help "* | *" -h "*) ;;
  *)
    if [ -f wheels/requirements.txt ]; then
      # --no-deps: the wheels are the missing pieces; the check imports everything it needs before it starts.
      "$PYTHON" -m pip install --quiet --no-index --no-deps --find-links wheels -r wheels/requirements.txt
    fi
    ;;
esac
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # msd_trl from this tree, installed or not
exec "$PYTHON" examples/benchmarks/gpu_check.py "$@"
