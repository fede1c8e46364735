"""The trainer benchmark behind examples/benchmarks/compare_trainers.py, split by concern: `settings` (what the runs
share), `profiling` (timing and memory), `runners` (rows, trainers, one run) and `report` (ratios, targets, table).

Import it after compare_trainers.py has set OMP_WAIT_POLICY: these modules import torch.
"""
