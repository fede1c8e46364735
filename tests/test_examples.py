"""The example scripts and their YAML configs, run as a user runs them but on a tiny Llama for one step.

Each script is imported from its file and its `main` called with what `TrlParser` parses from the script's own
YAML config plus tiny-run flags, so a broken config key or a script drifting from the API fails here.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from trl import ModelConfig, TrlParser

from msd_trl import MSDConfig
from msd_trl.arguments import DataArguments

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def model_dir(tiny_model_dir) -> Path:
    return tiny_model_dir


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parse(config: str, model_dir: Path, output_dir: Path, *extra: str):
    parser = TrlParser((DataArguments, MSDConfig, ModelConfig))
    return parser.parse_args_and_config(
        args=[
            "--config", str(EXAMPLES / "configs" / config),
            "--model_name_or_path", str(model_dir),
            "--output_dir", str(output_dir),
            "--dtype", "float32",
            "--max_train_rows", "4",
            "--max_steps", "1",
            "--max_new_tokens", "4",
            "--per_device_train_batch_size", "2",
            "--max_prompt_tokens", "1024",  # rendered, in the tiny byte-level tokenizer
            "--max_prompt_length", "1024",
            *extra,
        ]
    )  # fmt: skip


def test_on_policy_example_trains_one_step_and_saves_the_adapter(model_dir, tmp_path):
    data_args, training_args, model_args = _parse("on_policy.yaml", model_dir, tmp_path / "on")
    assert training_args.divergence == "dpsw" and model_args.use_peft  # from the YAML
    trainer = _load_script("on_policy_msd").main(data_args, training_args, model_args)
    assert trainer.state.global_step == 1
    assert trainer.teacher_model is None  # self-teacher: the adapter-disabled base
    assert trainer.args.teacher_system_prompt  # the teacher preset's system prompt
    assert (tmp_path / "on" / "adapter_model.safetensors").stat().st_size > 0


def test_generate_then_off_policy_example_reuses_the_cache(model_dir, tmp_path):
    out = tmp_path / "off"
    cache = out / "teacher.jsonl"
    args = _parse("off_policy.yaml", model_dir, out, "--teacher_completions", str(cache))
    dataset = _load_script("generate_teacher_completions").main(*args)
    assert len(dataset) == 4 and "teacher_completion" in dataset.column_names
    before = cache.read_text(encoding="utf-8")
    assert sorted(json.loads(line)["index"] for line in before.splitlines()[1:]) == [0, 1, 2, 3]

    args = _parse("off_policy.yaml", model_dir, out, "--teacher_completions", str(cache))
    trainer = _load_script("off_policy_msd").main(*args)
    assert trainer.state.global_step == 1
    assert cache.read_text(encoding="utf-8") == before  # nothing generated twice
    assert (out / "adapter_model.safetensors").stat().st_size > 0


def test_reproduce_mini_writes_the_results_schema_and_resumes(model_dir, tmp_path):
    script = _load_script("reproduce_mini")
    out = tmp_path / "repro"
    argv = ["--model", str(model_dir), "--output_dir", str(out), "--max_steps", "1", "--eval_limit", "2",
            "--max_prompt_tokens", "1024",
            "--max_train_rows", "8", "--max_new_tokens", "4", "--eval_max_new_tokens", "2",
            "--eval_max_budget_tokens", "4", "--seeds", "0,1", "--cells", "on_dpsw_english,on_dpsw_paper",
            "--single_seed_cells", "on_dpsw_paper",
            "--results_json", str(tmp_path / "docs" / "mini_reproduction.json")]  # fmt: skip
    results = script.main(argv)
    assert set(results) >= {"model", "command", "teacher", "trained_languages", "unseen_languages", "seeds", "cells"}
    assert results["seeds"] == [0, 1]
    assert set(results["cells"]) == {"base", "on_dpsw_paper", "on_dpsw_english"}
    assert results["cells"]["on_dpsw_english"]["seeds"] == [0, 1]
    assert results["cells"]["on_dpsw_paper"]["seeds"] == [0]  # a single-seed cell
    assert set(results["teacher"]) == {"paper", "english_refusal"} and set(results["teacher"]["paper"]) == {"0"}
    assert results["cells"]["base"]["seeds"] == [0]  # greedy base on the fixed split: one evaluation
    languages = {"jv", "sw", "bn", "th", "ko", "ar", "vi"}
    for cell in results["cells"].values():
        for run in cell["runs"].values():
            assert set(run["refusal"]) == languages and set(run["multiq_over_refusal"]) == languages
            assert set(run["mgsm_over_refusal"]) == {"sw", "th"}
            for entry in run["refusal"].values():
                assert 0.0 <= entry["rate"] <= 1.0 and entry["ci"][0] <= entry["rate"] <= entry["ci"][1]
                assert entry["language_fidelity"] is not None
        stats = cell["summary"]["refusal"]["jv"]["rate"]
        assert stats["n"] == len(cell["seeds"]) and stats["min"] <= stats["mean"] <= stats["max"]
        gaps = [
            run["refusal"]["jv"]["rate"] - run["multiq_over_refusal"]["jv"]["rate"] for run in cell["runs"].values()
        ]
        assert cell["summary"]["selectivity"]["jv"]["rate"]["mean"] == pytest.approx(sum(gaps) / len(gaps))
    assert json.loads((tmp_path / "docs" / "mini_reproduction.json").read_text()) == results
    assert (tmp_path / "docs" / "mini_reproduction.png").stat().st_size > 0
    table = (out / "mini_reproduction.md").read_text()
    assert (
        "| on_dpsw_english | 2 |" in table
        and "| on_dpsw_paper | 1 |" in table
        and "MultiQ" in table
        and "Selectivity" in table
    )
    # Every run's rate is shown with its Wilson interval.
    jv = results["cells"]["on_dpsw_english"]["runs"]["1"]["refusal"]["jv"]
    row = next(line for line in table.splitlines() if line.startswith("| on_dpsw_english | 1 | ") and "[" in line)
    assert row.split(" | ")[2] == f"{jv['rate']:.2f} [{jv['ci'][0]:.2f}, {jv['ci'][1]:.2f}]"
    # A second call finds every run's summary and report and trains nothing again.
    before = (out / "on_dpsw_english" / "seed1" / "run_summary.json").stat().st_mtime_ns
    script.main(argv)
    assert (out / "on_dpsw_english" / "seed1" / "run_summary.json").stat().st_mtime_ns == before
    # --only_existing reports what is there and starts nothing new.
    partial = script.main([*argv, "--only_existing", "--cells", "on_dpsw_english,on_rkl_english"])
    assert set(partial["cells"]) == {"base", "on_dpsw_english"} and not (out / "on_rkl_english").exists()
    with pytest.raises(ValueError, match="unknown cell"):
        script.main([*argv, "--cells", "on_dpsw_english,bogus"])


def test_refusal_probability_scores_harmful_and_benign_per_language(model_dir):
    script = _load_script("refusal_probability")
    results = script.main(["--adapters", "base=", "--model", str(model_dir), "--limit", "2",
                           "--teacher_preset", "english_refusal"])  # fmt: skip
    assert list(results["adapters"]) == ["base", "teacher:english_refusal"]
    languages = results["adapters"]["base"]["languages"]
    assert list(languages) == ["jv", "sw", "bn", "th", "ko", "ar", "vi"]
    for entry in languages.values():
        assert entry["n"] == [2, 2] and 0 <= entry["harmful_mean_p"] <= 1 and 0 <= entry["auc"] <= 1


def test_representation_probe_fits_on_train_ids_and_scores_held_out_ids(model_dir):
    import torch

    script = _load_script("representation_probe")
    # The probe itself: a feature that carries the label is read out (AUC 1), noise is not (AUC near 0.5).
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([1] * 40 + [0] * 60)
    signal = torch.randn(100, 8, generator=generator)
    signal[:, 3] += 4.0 * labels
    score, l2, cv = script.fit_probe(signal, labels)
    assert l2 in script.REGULARISATION and cv > 0.95
    assert script.held_out_auc(score, signal, labels) == 1.0
    noise = torch.randn(100, 8, generator=generator)
    fresh = torch.randn(100, 8, generator=generator)
    assert abs(script.held_out_auc(script.fit_probe(noise, labels)[0], fresh, labels) - 0.5) < 0.2

    results = script.main(["--model", str(model_dir), "--layers", "0,1", "--limit", "6", "--max_prompt_tokens", "60"])
    entry = results["models"]["base"]
    assert entry["layers"] == [0, 1] and list(entry["languages"]) == script.LANGUAGES
    for language, row in entry["languages"].items():
        kept = sum(row["n_test"]) + sum(row["n_train"])
        assert kept + sum(row["dropped_over_max_prompt_tokens"].values()) == 24, language
        for probe in ("in_language", "from_english"):
            assert set(row[probe]) == {"0", "1"}
            assert all(value is None or 0 <= value <= 1 for value in row[probe].values())
    # Bengali and Thai prompts are long in this tokenizer: the cap drops some, and says so.
    assert sum(entry["languages"]["bn"]["dropped_over_max_prompt_tokens"].values()) > 0
    with pytest.raises(SystemExit):
        script.main(["--model", str(model_dir), "--layers", "0,99", "--limit", "2"])


def test_reproduce_mini_lever_cells_train_what_they_say(tmp_path, monkeypatch):
    script = _load_script("reproduce_mini")
    args = script.parse_args(["--max_steps", "5", "--no-fast_cpu_decoding"])
    seen = []

    def fake_train(argv):  # records the command, writes what a finished run leaves
        seen.append(argv)
        run_dir = Path(argv[argv.index("--output_dir") + 1])
        run_dir.mkdir(parents=True)
        (run_dir / "run_summary.json").write_text(json.dumps({"total_wall_time_s": 1.0}))

    monkeypatch.setattr(script, "train", fake_train)

    def flags(cell):
        argv, _ = script.train_run(args, cell, 0, tmp_path / cell)
        return dict(zip(argv[::2], argv[1::2]))

    epochs3 = flags("on_dpsw_english_epochs3")
    assert epochs3["--max_steps"] == "15" and epochs3["--save_strategy"] == "steps" and epochs3["--save_steps"] == "5"
    temp = flags("off_dpsw_english_temp03")
    assert temp["--trainer"] == "off-policy" and temp["--temperature"] == "0.3" and temp["--max_steps"] == "5"
    plain = flags("on_dpsw_english")
    assert plain["--max_steps"] == "5" and "--save_strategy" not in plain and "--temperature" not in plain
    assert len(seen) == 3
    flags("on_dpsw_english")  # its summary exists: not trained again
    assert len(seen) == 3
    assert set(script.SINGLE_SEED_CELLS) <= set(script.CELLS)
    assert script.teacher_text_entry(tmp_path / "on_dpsw_english") is None  # on-policy: no teacher text
    assert set(args.single_seed_cells.split(",")) == set(script.SINGLE_SEED_CELLS)


def test_reproduce_mini_every_cell_parses_as_msd_trl_train_flags(tmp_path):
    """Each cell's command is one `msd-trl train` accepts, and its lever reaches the config."""
    from msd_trl.cli import build_train_parser

    script = _load_script("reproduce_mini")
    args = script.parse_args(["--max_steps", "5", "--no-fast_cpu_decoding"])
    configs, data = {}, {}
    for cell, spec in script.CELLS.items():
        argv = script.train_argv(args, cell, 0, tmp_path / cell)
        data[cell], configs[cell], _ = build_train_parser().parse_args_and_config(args=argv)
        assert configs[cell].divergence == spec["divergence"], cell
        assert configs[cell].teacher_preset == spec["preset"], cell
    plain = configs["on_dpsw_english"]
    assert (plain.dpsw_min_weight, plain.dpsw_top_k, plain.temperature) == (0.1, 20, 0.9)
    assert configs["on_dpsw_english_floor0"].dpsw_min_weight == 0.0
    assert configs["on_dpsw_english_floor0"].dpsw_top_k == 20
    assert configs["on_dpsw_english_topk5"].dpsw_top_k == 5
    assert configs["on_dpsw_english_topk5"].dpsw_min_weight == 0.1
    assert configs["off_dpsw_english_temp03"].temperature == 0.3
    assert data["on_dpsw_english"].multiq_languages == "jv,sw,bn"
    assert data["on_dpsw_english_mgsm_only"].multiq_languages == ""
    wide = data["on_dpsw_english_multiq_wide"].multiq_languages.split(",")
    assert wide[:3] == ["jv", "sw", "bn"] and len(wide) == 11
    assert not set(wide) & set(script.UNSEEN)  # the unseen languages stay unseen
    for cell in ("on_dpsw_english_paper_benign", "off_dpsw_english_paper_benign"):
        assert configs[cell].benign_teacher_preset == "paper", cell
        assert configs[cell].teacher_context.benign is not None, cell
    assert configs["on_dpsw_english"].benign_teacher_preset is None
    assert data["on_dpsw_english"].multiq_share == 0.5 and data["on_dpsw_english_chat80"].multiq_share == 0.8
    unseen_scripts = data["on_dpsw_english_chat80_unseen_scripts"]
    assert unseen_scripts.multiq_languages.split(",") == script.TRAINED + script.UNSEEN
    assert unseen_scripts.languages.split(",") == script.TRAINED  # harmful rows: trained languages only
    everywhere = data["off_dpsw_english_chat80_all_languages"]
    assert everywhere.languages.split(",") == everywhere.multiq_languages.split(",") == script.TRAINED + script.UNSEEN
    assert script.trained_languages("off_dpsw_english_chat80_all_languages") == script.TRAINED + script.UNSEEN
    assert script.trained_languages("on_dpsw_english_chat80_unseen_scripts") == script.TRAINED


def test_learning_curves_picks_follow_the_cells_own_trained_languages():
    """A cell trained on harmful rows in every language is judged on all of them: its Thai meets the target."""
    script = _load_script("learning_curves")

    def entry(cell, step, thai_refusal):
        languages = {
            code: {"refusal": 0.6, "over_refusal": 0.0, "selectivity": 0.6, "harmful_greedy": 0.6,
                   "benign_greedy": 0.0}
            for code in script.LANGUAGES
        }  # fmt: skip
        languages["th"].update(refusal=thai_refusal, selectivity=thai_refusal, harmful_greedy=thai_refusal)
        return {"cell": cell, "seed": 0, "step": step, "languages": languages}

    curves = [entry(cell, step, refusal) for cell in ("on_dpsw_english", "off_dpsw_english_chat80_all_languages")
              for step, refusal in ((1, 0.0), (2, 0.6))]  # fmt: skip
    picks = {p["cell"]: p for p in script.monitor_picks(curves)}
    assert picks["on_dpsw_english"]["greedy_most_targets_met"] == {"step": 1, "languages": ["jv", "sw", "bn"]}
    everywhere = picks["off_dpsw_english_chat80_all_languages"]["greedy_most_targets_met"]
    assert everywhere == {"step": 2, "languages": script.LANGUAGES}


def test_reproduce_mini_reports_what_off_policy_teacher_text_refused(tmp_path):
    script = _load_script("reproduce_mini")
    rows = [
        {"fingerprint": {"temperature": 0.3, "seed": 0}},
        {
            "index": 0,
            "id": "multijail-6",
            "language": "jv",
            "teacher_completion": "I'm sorry, but I can't help with that.",
        },
        {"index": 1, "id": "multijail-8", "language": "sw", "teacher_completion": "Sure, here is how to do it"},
        {"index": 2, "id": "multiq-gpt-2", "language": "jv", "teacher_completion": "The chemical formula is H2O."},
        {"index": 3, "id": "mgsm-4", "language": "sw", "teacher_completion": "She has 12 apples left."},
    ]
    (tmp_path / "teacher_completions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    entry = script.teacher_text_entry(tmp_path)
    assert entry["temperature"] == 0.3
    assert entry["refusal"] == {
        "mgsm": {"rate": 0.0, "n": 1}, "multijail": {"rate": 0.5, "n": 2}, "multiq": {"rate": 0.0, "n": 1},
    }  # fmt: skip


def test_the_evaluating_examples_pass_run_evaluation_one_evaluation_arguments(tmp_path, monkeypatch):
    """reproduce_mini and learning_curves evaluate with msd_trl's `EvaluationArguments`: round 2's settings are
    explicit values of one object in reproduce_mini (`EVALUATION`, not the dataclass's defaults), their --eval_*
    flags take their defaults from it and override it, and `run_evaluation` gets the object, no keywords."""
    import dataclasses

    import msd_trl.evaluation
    from msd_trl.evaluation import EvaluationArguments

    script = _load_script("reproduce_mini")
    evaluation = script.EVALUATION
    assert isinstance(evaluation, EvaluationArguments)
    round2 = {"limit": 20, "max_new_tokens": 24, "max_budget_tokens": 128, "max_chars": 80, "batch_size": 16}
    assert {name: getattr(evaluation, name) for name in round2} == round2
    assert {name: getattr(EvaluationArguments(), name) for name in round2} != round2  # explicit, not the defaults
    languages = ["jv", "sw", "bn", "th", "ko", "ar", "vi"]
    assert (evaluation.languages, evaluation.multiq_languages, evaluation.benign_languages) == (
        languages, languages, ["sw", "th"],
    )  # fmt: skip
    # The flags' defaults are read from EVALUATION (one place), and the JSON's settings keep their names and values.
    settings = vars(script.parse_args([]))
    assert {key: settings[key] for key in settings if key.startswith("eval_")} == {
        "eval_limit": 20, "eval_max_new_tokens": 24, "eval_max_budget_tokens": 128, "eval_max_chars": 80,
        "eval_batch_size": 16,
    }  # fmt: skip
    monkeypatch.setattr(script, "EVALUATION", dataclasses.replace(evaluation, max_chars=55))
    assert script.parse_args([]).eval_max_chars == 55
    monkeypatch.setattr(script, "EVALUATION", evaluation)

    calls = []

    def run_evaluation(*args, **kwargs):
        calls.append((args, kwargs))
        return {}

    monkeypatch.setattr(script, "run_evaluation", run_evaluation)
    args = script.parse_args(
        ["--model", "m", "--no-fast_cpu_decoding", "--eval_limit", "all", "--eval_max_chars", "100"]
    )
    script.evaluate_run(args, tmp_path / "run", "run-adapter", 3, "paper", student=False, benign_preset="translation")
    [(positional, keywords)] = calls
    assert keywords == {} and len(positional) == 1
    assert positional[0] == dataclasses.replace(
        evaluation, model_name_or_path="m", adapter="run-adapter", seed=3, teacher_preset="paper",
        include_student=False, benign_teacher_preset="translation", output_dir=str(tmp_path / "run" / "eval"),
        limit=None, max_chars=100,
    )  # fmt: skip

    curves = _load_script("learning_curves")
    assert {key: value for key, value in vars(curves.parse_args([])).items() if key.startswith("eval_")} == {
        "eval_limit": 20, "eval_max_new_tokens": 24, "eval_max_budget_tokens": 128, "eval_max_chars": 80,
    }  # fmt: skip
    calls.clear()
    monkeypatch.setattr(msd_trl.evaluation, "run_evaluation", run_evaluation)
    args = curves.parse_args(["--model", "m", "--eval_max_new_tokens", "12", "--split_seed", "1"])
    curves.greedy_point(args, "english_refusal", None, None, tmp_path / "base")
    curves.greedy_point(args, "english_refusal", "paper", tmp_path / "checkpoint-80", tmp_path / "c80")
    [((base,), base_keywords), ((checkpoint,), checkpoint_keywords)] = calls
    assert base_keywords == checkpoint_keywords == {}
    assert base == dataclasses.replace(
        evaluation, model_name_or_path="m", seed=1, teacher_preset="english_refusal", max_new_tokens=12,
        output_dir=str(tmp_path / "base"), generation_threads=1,
    )  # fmt: skip
    assert checkpoint == dataclasses.replace(
        base, adapter=str(tmp_path / "checkpoint-80"), include_teacher=False, benign_teacher_preset="paper",
        output_dir=str(tmp_path / "c80"),
    )  # fmt: skip


def test_reproduce_mini_checks_every_mix_before_evaluating_or_training(model_dir, tmp_path, monkeypatch):
    script = _load_script("reproduce_mini")
    args = script.parse_args(["--model", str(model_dir), "--max_steps", "1"])
    paper = dict(zip(*[iter(script.train_argv(args, "on_dpsw_paper", 0, tmp_path))] * 2))
    assert paper["--max_prompt_tokens"] == str(args.max_prompt_tokens + 32)  # room for the paper's longer context
    started = []
    monkeypatch.setattr(script, "run_evaluation", lambda *a, **k: started.append("evaluation"))
    monkeypatch.setattr(script, "train", lambda argv: started.append("training"))
    # 5000 rows cannot be drawn from the data under the cap: the run stops before any evaluation or training,
    # naming the cell and seed.
    with pytest.raises(ValueError, match=r"cell 'on_dpsw_english' seed 0: its training rows cannot be built"):
        script.main(["--model", str(model_dir), "--output_dir", str(tmp_path / "out"), "--cells", "on_dpsw_english",
                     "--seeds", "0", "--max_train_rows", "5000"])  # fmt: skip
    assert started == []


def test_learning_curves_evaluates_every_checkpoint_and_writes_the_issue_schema(model_dir, tmp_path, monkeypatch):
    """Checkpoints made by hand (a LoRA adapter + trainer_state.json, as the Trainer leaves them): the evaluate phase
    measures each greedily and with the monitor, the report phase writes learning_curves.json with the issue's
    `recommended` object and one curve entry per checkpoint; the train phase runs reproduce_mini's command with
    checkpoints every --checkpoint_every steps."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    script = _load_script("learning_curves")
    out = tmp_path / "curves"
    for seed in (0, 1):
        for step in (1, 2):
            checkpoint = out / "on_dpsw_english" / f"seed{seed}" / f"checkpoint-{step}"
            model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                                   LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False))  # fmt: skip
            model.save_pretrained(checkpoint)
            (checkpoint / "trainer_state.json").write_text("{}")
    (out / "on_dpsw_english" / "seed0" / "checkpoint-3").mkdir()  # still being saved: no adapter yet, skipped
    common = ["--model", str(model_dir), "--output_dir", str(out), "--seeds", "0,1", "--steps", "2",
              "--checkpoint_every", "1", "--eval_limit", "1", "--monitor_limit", "1", "--eval_max_new_tokens", "2",
              "--eval_max_budget_tokens", "4",
              "--monitor_max_prompt_tokens", "4096"]  # fmt: skip
    script.main([*common, "--phase", "evaluate"])
    results = script.main([*common, "--phase", "report", "--recommended", "on_dpsw_english@2",
                           "--results_json", str(tmp_path / "docs" / "learning_curves.json")])  # fmt: skip
    assert sorted((c["seed"], c["step"]) for c in results["curves"]) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    recommended = results["recommended"]
    assert {"command", "steps", "seeds", "languages"} <= set(recommended)
    assert recommended["steps"] == 2 and recommended["seeds"] == [0, 1]
    assert (
        recommended["command"].startswith("msd-trl train --trainer on-policy")
        and "--max_steps 2 " in recommended["command"]
    )
    assert "--save_steps" not in recommended["command"]
    languages = {"jv", "sw", "bn", "th", "ko", "ar", "vi"}
    assert set(recommended["languages"]) == languages
    for code, entry in recommended["languages"].items():
        assert entry["trained"] == (code in {"jv", "sw", "bn"})
        for key in ("refusal", "over_refusal", "auc", "in_language", "non_answer", "off_topic"):
            assert len(entry[key]) == 2, (code, key)  # one value per seed
        assert {"base_in_language", "base_non_answer", "base_off_topic"} <= set(entry)
    curve_keys = {"trained", "refusal", "over_refusal", "auc", "non_answer", "off_topic"}
    assert set(results["curves"][0]["languages"]["jv"]) >= curve_keys
    # MultiQ has an English version of every id: each answer was judged on-topic or not (2 tokens: too short).
    assert all(c["languages"][code]["off_topic"] == 0.0 for c in results["curves"] for code in languages)
    assert set(results["monitor_vs_greedy"]["on_dpsw_english"]) == languages | {"all"}
    pooled = results["monitor_vs_greedy"]["all"]
    assert pooled["points"] == 4 * 7  # every (checkpoint, language) point of the cell
    assert {"benign_greedy_vs_over_refusal", "greedy_gap_vs_selectivity", "auc_vs_selectivity"} <= set(pooled)
    greedy_keys = {"harmful_greedy", "benign_greedy", "greedy_gap"}
    assert all(c["languages"]["jv"][k] is not None for c in results["curves"] for k in greedy_keys)
    # Per run, the checkpoint the monitor's rule keeps (msd-trl select-checkpoint) beside greedy's preferences.
    picks = {(p["cell"], p["seed"]): p for p in results["monitor_picks"]}
    assert sorted(picks) == [("on_dpsw_english", 0), ("on_dpsw_english", 1)]
    for pick in picks.values():
        assert pick["steps"] == [1, 2]
        assert pick["trained"]["step"] in (None, 1, 2) and pick["trained"]["reason"]
        assert pick["greedy_most_selective"]["step"] in (1, 2) and pick["greedy_most_targets_met"]["step"] in (1, 2)
    assert (tmp_path / "docs" / "learning_curves.json").exists()
    assert (tmp_path / "docs" / "learning_curves_on_dpsw_english.png").exists()
    with pytest.raises(ValueError, match="no evaluated checkpoint"):
        script.main([*common, "--phase", "report", "--recommended", "on_dpsw_english@7"])

    # A later session's report keeps the earlier JSON's points that its own output folder lacks (here: all of them,
    # and the base), marked with where they came from; points measured with other settings are refused.
    earlier = tmp_path / "docs" / "learning_curves.json"
    later = script.main([*common, "--output_dir", str(tmp_path / "later"), "--phase", "report",
                         "--keep_json", str(earlier), "--recommended", "on_dpsw_english@2"])  # fmt: skip
    assert [(c["seed"], c["step"]) for c in later["curves"]] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert {c["kept_from"] for c in later["curves"]} == {str(earlier)}
    assert later["base"] == results["base"] and later["recommended"]["languages"] == recommended["languages"]
    with pytest.raises(ValueError, match="eval_limit=1.*this call's is 2"):
        script.main([*common, "--eval_limit", "2", "--output_dir", str(tmp_path / "later"), "--phase", "report",
                     "--keep_json", str(earlier)])  # fmt: skip

    # --evaluate_steps measures only the named checkpoints; with --keep_json the base model it holds is not measured
    # again.
    measured = []
    monkeypatch.setattr(script, "greedy_point", lambda args, preset, benign, adapter, out: measured.append(adapter))
    monkeypatch.setattr(script, "monitor_point", lambda *a, **k: None)
    script.main([*common, "--phase", "evaluate", "--evaluate_steps", "2", "--keep_json", str(earlier)])
    assert measured == [out / "on_dpsw_english" / f"seed{seed}" / "checkpoint-2" for seed in (0, 1)]

    seen = []
    monkeypatch.setattr(script.reproduce_mini, "train", lambda argv: seen.append(argv))
    script.main([*common[2:], "--output_dir", str(tmp_path / "fresh"), "--seeds", "0", "--phase", "train"])
    flags = dict(zip(seen[0][::2], seen[0][1::2]))
    assert flags["--max_steps"] == "2" and flags["--save_steps"] == "1" and flags["--seed"] == "0"
    script.main([*common, "--seeds", "0", "--phase", "train"])  # checkpoints exist: resumes from the last one
    assert seen[-1][-2:] == ["--resume_from_checkpoint", str(out / "on_dpsw_english" / "seed0" / "checkpoint-2")]
