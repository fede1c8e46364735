"""Data-parallel training under `accelerate launch`: two CPU processes with the gloo backend."""

import os
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).parent / "scripts" / "ddp_train.py"


def test_two_process_ddp_keeps_replicas_identical(tmp_path):
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", str(SCRIPT), str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert all(r["world"] == 2 and r["step"] == 2 for r in ranks)
    assert all(r["distributed_type"] == "MULTI_CPU" for r in ranks), ranks[0]["distributed_type"]
    for key, value in ranks[0]["lora"].items():
        torch.testing.assert_close(ranks[1]["lora"][key], value)
    assert any(v.abs().sum() > 0 for k, v in ranks[0]["lora"].items() if "lora_B" in k), "the adapter did not train"
    losses = [e["msd/loss"] for e in ranks[0]["logs"] if "msd/loss" in e]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
