"""examples/benchmarks/compare_trainers.py: the report's schema on a tiny Llama, and the target arithmetic by hand.

The benchmark's timings are reported, never asserted: the run test checks only that every trainer ran, that each
number is present, finite and positive where it must be, and that the Markdown report has its table and verdicts.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "benchmarks" / "compare_trainers.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("compare_trainers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load_script()


def test_quick_run_on_a_tiny_model_writes_the_report_schema(bench, tmp_path, tiny_model_dir):
    model_dir = tiny_model_dir
    out = tmp_path / "bench"

    report = bench.main(
        [
            "--quick", "--steps", "1", "--warmup", "0", "--max_new_tokens", "4", "--batch_size", "2",
            "--max_prompt_tokens", "128", "--no-isolate", "--model", str(model_dir), "--output_dir", str(out),
        ]
    )  # fmt: skip

    saved = json.loads((out / "benchmark.json").read_text())
    assert saved["ratios"] == report["ratios"]
    assert set(saved) >= {"device", "model", "settings", "results", "ratios"}
    assert isinstance(saved["device"], str) and saved["device"]
    assert saved["model"] == str(model_dir)
    settings = saved["settings"]
    assert (settings["batch_size"], settings["max_new_tokens"], settings["steps"], settings["warmup"]) == (2, 4, 1, 0)
    assert settings["lora"] == {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"}
    assert settings["isolate"] is False

    assert list(saved["results"]) == list(bench.TRAINERS)
    trainable = set()
    for name, result in saved["results"].items():
        assert "error" not in result, name
        for key in ("step_s_median", "peak_mem_mb", "tokens_per_s"):
            assert isinstance(result[key], float) and result[key] > 0, (name, key)
        assert result["completion_tokens_per_step"] > 0, name
        assert len(result["step_s_measured"]) == 1 and result["step_s_warmup"] == []
        breakdown = result["breakdown_s"]
        assert set(breakdown) == set(bench.BREAKDOWN_KEYS), name
        assert all(isinstance(v, float) and math.isfinite(v) for v in breakdown.values()), name
        # Exclusive section times: the measured parts never exceed the step, so "other" is what is left.
        measured = sum(v for k, v in breakdown.items() if k != "other")
        assert measured <= result["step_s_mean"] + 1e-6, name
        assert breakdown["other"] == pytest.approx(result["step_s_mean"] - measured)
        assert breakdown["student_forward"] > 0 and breakdown["backward"] > 0 and breakdown["loss"] > 0, name
        assert breakdown["teacher_forward"] > 0 and breakdown["optimizer"] > 0, name
        assert math.isfinite(result["final_loss"]), name
        expected = {"model": str(model_dir), "batch_size": 2, "gradient_accumulation": 1, "label": "2x1"}
        if name == "msd_on_policy":  # on a CPU in float32 MSD's rollouts run on one thread with the adapter merged
            expected.update(generation_threads=1, merge_adapter_for_generation=True, rollout_batch_size=None)
        assert result["settings"] == expected, name
        # Peak RSS per section (which phase sets the peak): never above the run's peak.
        by_section = result["peak_rss_by_section_mb"]
        assert by_section and all(0 < value <= result["peak_rss_mb"] for value in by_section.values()), name
        trainable.add(result["trainable_params"])
    assert len(trainable) == 1  # the same LoRA adapter in every run
    for name in ("msd_on_policy", "gkd_on_policy", "sdft", "distillation"):
        assert saved["results"][name]["breakdown_s"]["generation"] > 0, name
    for name in bench.OFF_POLICY:
        assert saved["results"][name]["breakdown_s"]["generation"] == 0.0, name
    assert saved["results"]["msd_on_policy"]["breakdown_s"]["metrics"] > 0

    ratios = saved["ratios"]
    for key in ("on_policy_vs_gkd_step", "on_policy_vs_sdft_step", "on_policy_vs_distillation_step",
                "on_policy_vs_gkd_mem", "off_policy_vs_gkd_step"):  # fmt: skip
        assert isinstance(ratios[key], float) and ratios[key] > 0, key
    assert ratios["on_policy_vs_gkd_step"] == pytest.approx(
        saved["results"]["msd_on_policy"]["step_s_median"] / saved["results"]["gkd_on_policy"]["step_s_median"]
    )
    # The bandwidth floor: weight bytes per decode step over copy bandwidth, against the measured decode step.
    assert (
        saved["settings"]["memory_bandwidth_gb_s"] > 0
        and saved["results"]["msd_on_policy"]["decode_steps_per_step"] > 0
    )
    assert 0 < ratios["generation_floor_ratio"] < 10
    assert ratios["large_vocab_mem_vs_gkd"] is None and ratios["large_vocab_mem_vs_best_anchor"] is None  # small vocab
    assert {v["status"] for v in saved["targets"].values()} <= {"PASS", "MISS", "n/a"}

    rows = json.loads((out / "work" / "rows.json").read_text())
    assert len(rows) == 2 and all(isinstance(row["teacher_completion"], str) for row in rows)

    markdown = (out / "benchmark.md").read_text()
    assert "| trainer | step s (median) |" in markdown
    for name in bench.TRAINERS:
        assert f"| {name} |" in markdown
    for key, _, _ in bench.TARGETS:
        assert f"`{key}`" in markdown
    assert "PASS" in markdown or "MISS" in markdown


def _result(step: float, mem: float, other_share: float = 0.05) -> dict:
    return {"step_s_median": step, "peak_mem_mb": mem, "peak_mem_delta_mb": mem / 2, "other_share": other_share}


def test_ratios_and_verdicts_by_hand(bench):
    results = {
        "msd_on_policy": _result(step=3.0, mem=600.0, other_share=0.12),
        "gkd_on_policy": _result(step=5.0, mem=1000.0),
        "sdft": _result(step=3.0, mem=700.0),
        "msd_off_policy": _result(step=1.0, mem=500.0),
        "gkd_off_policy": _result(step=2.0, mem=900.0),
    }
    ratios = bench.compute_ratios(results)
    assert ratios["on_policy_vs_gkd_step"] == pytest.approx(0.6)  # 3 / 5
    assert ratios["on_policy_vs_sdft_step"] == pytest.approx(1.0)  # 3 / 3
    assert ratios["on_policy_vs_gkd_mem"] == pytest.approx(0.6)  # 600 / 1000
    assert ratios["off_policy_vs_gkd_step"] == pytest.approx(0.5)  # 1 / 2
    assert ratios["on_policy_other_share"] == pytest.approx(0.12)

    verdicts = bench.evaluate_targets(ratios)
    assert verdicts["on_policy_vs_gkd_step"]["status"] == "PASS"  # 0.6 <= 0.75
    assert verdicts["on_policy_vs_sdft_step"]["status"] == "MISS"  # 1.0 > 0.9
    assert verdicts["on_policy_vs_gkd_mem"]["status"] == "PASS"  # 0.6 <= 0.65
    assert verdicts["off_policy_vs_gkd_step"]["status"] == "PASS"  # 0.5 <= 0.7
    assert verdicts["on_policy_other_share"]["status"] == "MISS"  # 0.12 > 0.10


def test_large_vocabulary_and_bandwidth_floor_ratios_by_hand(bench):
    msd = {**_result(step=3.0, mem=600.0), "breakdown_s": {"generation": 2.0}, "decode_steps_per_step": 40,
           "weight_bytes": 500_000_000}  # fmt: skip
    results = {"msd_on_policy": msd, "gkd_on_policy": _result(5.0, 1000.0), "sdft": _result(3.0, 700.0),
               "distillation": _result(2.5, 800.0)}  # fmt: skip
    ratios = bench.compute_ratios(results, bandwidth_gb_s=20.0, large_vocab=True)
    assert ratios["large_vocab_mem_vs_gkd"] == pytest.approx(0.6)  # 600 / 1000
    assert ratios["large_vocab_mem_vs_best_anchor"] == pytest.approx(600 / 700)  # SDFT is the leanest anchor
    assert ratios["on_policy_vs_distillation_step"] == pytest.approx(3.0 / 2.5)
    # Floor: 0.5 GB / 20 GB/s = 25 ms per decode step; measured 2.0 s / 40 = 50 ms -> 0.5 of the floor.
    assert ratios["generation_floor_ratio"] == pytest.approx(0.5)
    verdicts = bench.evaluate_targets(ratios)
    assert verdicts["generation_floor_ratio"]["status"] == "PASS"  # at least 0.5
    assert verdicts["large_vocab_mem_vs_best_anchor"]["status"] == "PASS"  # 0.857 <= 0.9
    assert bench.compute_ratios(results)["large_vocab_mem_vs_gkd"] is None  # a small vocabulary reports none
    # With MSD's large-vocabulary row (loss_chunk_size), the large_vocab ratios are that row's; the others are not.
    results["msd_on_policy_chunked"] = _result(step=3.2, mem=560.0)
    ratios = bench.compute_ratios(results, bandwidth_gb_s=20.0, large_vocab=True)
    assert ratios["large_vocab_mem_vs_gkd"] == pytest.approx(0.56) and ratios["on_policy_vs_gkd_mem"] == 0.6
    assert ratios["large_vocab_mem_vs_best_anchor"] == pytest.approx(560 / 700)
    results["msd_on_policy_chunked"] = {"error": "exit code 1"}  # a failed row falls back to msd_on_policy
    assert bench.compute_ratios(results, large_vocab=True)["large_vocab_mem_vs_gkd"] == pytest.approx(0.6)


def test_accumulation_setting_runs_every_on_policy_trainer(bench, tmp_path, tiny_model_dir):
    report = bench.main(
        [
            "--quick", "--steps", "1", "--warmup", "0", "--max_new_tokens", "4", "--batch_size", "1",
            "--gradient_accumulation", "2", "--max_prompt_tokens", "128", "--no-isolate",
            "--only", "msd_on_policy,sdft,distillation", "--model", str(tiny_model_dir),
            "--output_dir", str(tmp_path / "bench"),
        ]
    )  # fmt: skip
    for name, result in report["results"].items():
        assert "error" not in result, name
        assert result["settings"]["label"] == "1x2", name
        assert result["completion_tokens_per_step"] > 0, name
    assert report["results"]["msd_on_policy"]["decode_steps_per_step"] > 0


def test_resume_keeps_measured_trainers_and_reruns_the_missing_one(bench, tmp_path, tiny_model_dir):
    out = tmp_path / "bench"
    argv = ["--quick", "--steps", "1", "--warmup", "0", "--max_new_tokens", "3", "--batch_size", "1",
            "--max_prompt_tokens", "128", "--no-isolate", "--only", "msd_on_policy,msd_off_policy",
            "--model", str(tiny_model_dir), "--output_dir", str(out)]  # fmt: skip
    first = bench.main(argv)
    results = out / "work" / "results"
    assert sorted(p.name for p in results.glob("*.json")) == ["msd_off_policy.json", "msd_on_policy.json"]
    kept = results / "msd_off_policy.json"
    kept.write_text(json.dumps({**first["results"]["msd_off_policy"], "marker": "from the first run"}))
    (results / "msd_on_policy.json").unlink()  # re-measure this one only
    only = argv.index("--only") + 1
    argv[only] += ",msd_on_policy_chunked"  # another subset: resumable, the new opt-in row runs
    second = bench.main(argv + ["--resume"])
    chunked = second["results"]["msd_on_policy_chunked"]
    assert "error" not in chunked and chunked["settings"]["loss_chunk_size"] == bench.LOSS_CHUNK_SIZE
    assert second["results"]["msd_off_policy"]["marker"] == "from the first run"  # kept, not re-run
    assert "error" not in second["results"]["msd_on_policy"] and (results / "msd_on_policy.json").exists()
    assert second["settings"]["fixed_completions_s"] == first["settings"]["fixed_completions_s"]
    index = argv.index("--max_new_tokens") + 1
    changed = bench.main([*argv[:index], "4", *argv[index + 1 :], "--resume"])  # other settings: all re-run
    assert changed["settings"]["max_new_tokens"] == 4 and "marker" not in changed["results"]["msd_off_policy"]


def test_missing_or_failed_runs_give_no_ratio(bench):
    ratios = bench.compute_ratios({"msd_on_policy": _result(3.0, 600.0), "gkd_on_policy": {"error": "boom"}})
    assert ratios["on_policy_vs_gkd_step"] is None and ratios["on_policy_vs_sdft_step"] is None
    assert bench.evaluate_targets(ratios)["on_policy_vs_gkd_step"]["status"] == "n/a"


def test_profiler_sections_are_exclusive(bench):
    profiler = bench.StepProfiler()
    profiler.mark_step_start()
    with profiler.section("data"):
        with profiler.section("generation"):
            pass
        with profiler.section("student_forward", skip_inside=("data",)):  # skipped: "data" is open
            pass
    record = profiler.end_step()
    assert set(record["sections"]) == {"data", "generation"}
    assert record["sections"]["data"] + record["sections"]["generation"] <= record["step_s"]


def test_bad_arguments_name_the_value(bench):
    with pytest.raises(ValueError, match="--only='msd,gkd'"):
        bench.settings_from_args(bench.parse_args(["--output_dir", "x", "--only", "msd,gkd", "--model", "m"]))
    with pytest.raises(ValueError, match="--steps must be >= 1, got 0"):
        bench.settings_from_args(bench.parse_args(["--output_dir", "x", "--steps", "0", "--model", "m"]))
    quick = bench.settings_from_args(bench.parse_args(["--output_dir", "x", "--quick", "--model", "m"]))
    assert (quick.steps, quick.warmup, quick.max_new_tokens, quick.batch_size) == (3, 1, 16, 4)
    assert quick.msd_rollout_batch_size is None  # one rollout call per optimizer step, MSD's default
    capped = bench.settings_from_args(
        bench.parse_args(["--output_dir", "x", "--msd_rollout_batch_size", "4", "--model", "m"])
    )
    assert capped.msd_rollout_batch_size == 4
    with pytest.raises(ValueError, match="--msd_rollout_batch_size must be >= 1, got 0"):
        bench.settings_from_args(
            bench.parse_args(["--output_dir", "x", "--msd_rollout_batch_size", "0", "--model", "m"])
        )


def test_large_vocab_memory_script_reports_each_variant(tmp_path):
    """The script behind docs/performance.md's large-vocabulary table, at its smallest (1 layer, 1 step)."""
    spec = importlib.util.spec_from_file_location("large_vocab_memory", SCRIPT.parent / "large_vocab_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = module.main(["--output_dir", str(tmp_path), "--layers", "1", "--steps", "1", "--batch_size", "1",
                          "--completion_tokens", "8", "--chunk_sizes", "0,4"])  # fmt: skip
    assert [r["loss_chunk_size"] for r in report["results"]] == [None, 4]
    for result in report["results"]:
        assert result["peak_mb"] >= result["peak_above_model_mb"] > 0 and result["completion_tokens_per_row"] > 0
    assert report["results"][0]["above_model_vs_plain"] == 1.0
    assert json.loads((tmp_path / "large_vocab_memory.json").read_text())["config"]["vocab_size"] == 151936


def test_decode_speed_script_reports_each_cell_against_the_floor(tmp_path, tiny_model_dir):
    """The script behind docs/performance.md's decoding table, on a tiny Llama: every (variant, threads, batch)
    cell decodes exactly the requested tokens, and the floor ratio is the floor over the measured decode step."""
    spec = importlib.util.spec_from_file_location("decode_speed", SCRIPT.parent / "decode_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = module.main(["--output_dir", str(tmp_path), "--model", str(tiny_model_dir), "--batch_sizes", "1,2",
                          "--variants", "peft,merged+static", "--threads", "1", "--max_new_tokens", "3",
                          "--repeats", "1", "--max_prompt_tokens", "128"])  # fmt: skip
    cells = [(c["variant"], c["threads"], c["batch_size"]) for c in report["cells"]]
    assert cells == [("peft", 1, 1), ("peft", 1, 2), ("merged+static", 1, 1), ("merged+static", 1, 2)]
    for cell in report["cells"]:
        assert cell["new_tokens"] == 3 and cell["generate_s"] > 0 and cell["prefill_s"] > 0
        assert cell["tokens_per_s"] == pytest.approx(cell["batch_size"] * 3 / cell["generate_s"])
        if cell["decode_step_s"] > 0:
            assert cell["floor_ratio"] == pytest.approx(report["floor_decode_step_s"] / cell["decode_step_s"])
            roofline = max(report["floor_decode_step_s"], cell["compute_floor_s"])
            assert cell["roofline_ratio"] == pytest.approx(roofline / cell["decode_step_s"])
        assert cell["compute_floor_s"] == pytest.approx(
            2 * (report["weight_bytes"] // 4) * cell["batch_size"] / (report["matmul_gflops"]["1"] * 1e9)
        )
    assert report["floor_decode_step_s"] == pytest.approx(
        report["weight_bytes"] / (report["memory_bandwidth_gb_s"] * 1e9)
    )
    assert json.loads((tmp_path / "decode_speed.json").read_text())["cells"] == report["cells"]
    with pytest.raises(SystemExit):
        module.parse_args(["--output_dir", str(tmp_path), "--variants", "merged+turbo"])
