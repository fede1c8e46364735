"""scripts/gpu_check.sh: the GPU check's code path on CPU (--tiny), its wheel preparation, its time budget.

Timings are reported, never asserted. The GPU run itself (7-8B shapes, 4 x 4, 512 + 256 tokens) needs a GPU machine
(docs/vllm.md, "The GPU check").
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_tiny_run_through_the_shell_entry_point_reports_every_shape_and_trainer(gpu_check, tmp_path):
    from trainer_benchmark.settings import BREAKDOWN_KEYS

    output = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable}
    completed = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--tiny", "--work_dir", str(tmp_path / "work"),
         "--output", str(output)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["tiny"] is True and report["plan"]["gradient_accumulation"] == 2
    assert set(report["shapes"]) == set(gpu_check.SHAPES)
    for shape, trainer in gpu_check.RUN_ORDER:
        entry = report["results"][shape][trainer]
        assert "error" not in entry and "skipped" not in entry, (shape, trainer, entry)
        assert entry["peak_mem_gib"] > 0 and isinstance(entry["fits_22_gib"], bool)
        assert entry["step_s_median"] > 0 and set(entry["breakdown_s"]) == set(BREAKDOWN_KEYS)
        assert entry["breakdown_s"]["generation"] > 0 and entry["rollout_tokens_per_s"] > 0  # on-policy, all four
        assert 0 < entry["completion_tokens_per_step"] <= 2 * 2 * 4  # batch x accumulation x new tokens
        settings = report["settings"][shape]
        assert settings["load_in_4bit"] and settings["gradient_checkpointing"]
        if trainer == "msd_on_policy_chunked":
            assert entry["run"]["settings"]["loss_chunk_size"] > 0
    for shape in gpu_check.SHAPES:
        targets = report["targets"][shape]
        assert set(targets) == {"msd_on_policy_chunked", "msd_on_policy"}
        for row in targets.values():
            assert {"fits_22_gib", "step_le_fastest_anchor", "peak_below_both_anchors"} == set(row)


def test_prepare_pins_the_installed_versions_and_the_tree_leaves_room(gpu_check, tmp_path, capsys):
    assert gpu_check.main(["--prepare", "--dry_run", "--wheels_dir", str(tmp_path / "wheels")]) == 0
    printed = capsys.readouterr().out
    for name in ("trl", "datasets", "bitsandbytes", "dill", "multiprocess", "xxhash"):
        assert f"{name}=={importlib.metadata.version(name)}" in printed, name
    commands = [line for line in printed.splitlines() if " pip download " in line]
    assert len(commands) == 1 + len(gpu_check.PYTHON_VERSIONS)
    assert all("--only-binary=:all:" in c and "--no-deps" in c and str(tmp_path / "wheels") in c for c in commands)
    # What travels besides the wheels (~45 MB: bitsandbytes 43 MB, trl and datasets 1.6 MB) must leave room for them.
    assert gpu_check.tree_size_mib() < gpu_check.TREE_LIMIT_MIB - 50


def test_a_run_that_would_end_past_the_time_budget_is_skipped_and_recorded(gpu_check, tmp_path):
    report = gpu_check.run_check(
        gpu_check.parse_args(["--tiny", "--work_dir", str(tmp_path), "--time_budget_s", "0",
                              "--only", "qwen2.5-7b-shaped:msd_on_policy"])
    )  # fmt: skip
    entry = report["results"]["qwen2.5-7b-shaped"]["msd_on_policy"]
    assert entry["skipped"].startswith("time budget")
    assert report["targets"]["qwen2.5-7b-shaped"] == {"status": "no MSD measurement"}
    assert json.loads((tmp_path / "gpu_check.json").read_text())["results"] == report["results"]


def test_isolated_runs_go_through_compare_trainers_worker(gpu_check, tmp_path):
    report = gpu_check.run_check(
        gpu_check.parse_args(["--tiny", "--isolate", "--work_dir", str(tmp_path),
                              "--only", "llama-3-8b-shaped:msd_on_policy"])
    )  # fmt: skip
    assert report["isolated_runs"] is True
    entry = report["results"]["llama-3-8b-shaped"]["msd_on_policy"]
    assert "error" not in entry, entry
    assert entry["peak_mem_gib"] > 0 and entry["run"]["trainer"] == "OnPolicyMSDTrainer"
    assert (tmp_path / "llama-3-8b-shaped" / "results" / "msd_on_policy.json").is_file()  # the worker's own file
