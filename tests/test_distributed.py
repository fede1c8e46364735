"""Data-parallel training under `accelerate launch`: two CPU processes with the gloo backend."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
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


def test_fsdp_on_cpu_runs_as_data_parallel_and_says_so(tmp_path):
    """accelerate shards with FSDP only on GPUs: a CPU launch with --use_fsdp trains as DDP, and msd_trl warns."""
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--use_fsdp", "--fsdp_version", "2", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
        "--fsdp_transformer_layer_cls_to_wrap", "LlamaDecoderLayer", "--fsdp_state_dict_type", "FULL_STATE_DICT",
        "--fsdp_cpu_ram_efficient_loading", "false", str(SCRIPT), str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "FSDP was requested (ACCELERATE_USE_FSDP), but accelerate runs multi-process CPU training" in result.stderr
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert all(r["distributed_type"] == "MULTI_CPU" and r["step"] == 2 for r in ranks)
    for key, value in ranks[0]["lora"].items():
        torch.testing.assert_close(ranks[1]["lora"][key], value)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"distributed_type": "DEEPSPEED", "zero_stage": 3}, "ZeRO-3 with the self-teacher"),
        ({"distributed_type": "FSDP", "zero_stage": None, "loss_chunk_size": 64}, "loss_chunk_size=64 .*FSDP"),
        ({"distributed_type": "DEEPSPEED", "zero_stage": 3, "peft": False, "loss_chunk_size": 8}, "ZeRO-3\\)"),
    ],
)
def test_scale_out_setups_known_to_break_are_refused_at_start(setting, message):
    from msd_trl.scale_out import check_scale_out

    values = {"self_teacher": True, "peft": True, "loss_chunk_size": None, **setting}
    with pytest.raises(ValueError, match=message):
        check_scale_out(**values)
    # What is supported passes: ZeRO-3 with a separate teacher, FSDP with the plain loss, ZeRO-2 with anything.
    check_scale_out(distributed_type="DEEPSPEED", zero_stage=3, self_teacher=False, peft=True, loss_chunk_size=None)
    check_scale_out(distributed_type="FSDP", zero_stage=None, self_teacher=True, peft=True, loss_chunk_size=None)
    check_scale_out(distributed_type="DEEPSPEED", zero_stage=2, self_teacher=True, peft=True, loss_chunk_size=32)


@pytest.mark.parametrize(("name", "kind"), [("fsdp2.yaml", "FSDP"), ("zero2.yaml", "DEEPSPEED")])
def test_shipped_accelerate_configs_load(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(Path(__file__).parents[1] / "examples" / "accelerate" / name))
    assert config.distributed_type.value == kind
    assert (config.fsdp_config or {}).get("fsdp_version", 2) == 2 and (config.deepspeed_config or {}).get(
        "zero_stage", 2
    ) == 2
