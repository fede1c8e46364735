"""Tests for msd_trl.config: defaults, cross-field checks, serialisation, TrlParser (YAML + CLI), build_divergence.

Every config is built with ``output_dir=str(tmp_path)`` and ``report_to="none"`` so nothing is written outside the
test's directory and no tracker is contacted.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import fields

import pytest
import torch
import yaml
from trl import TrlParser
from trl.experimental.gkd import GKDConfig

import msd_trl.config as config_module
import msd_trl.divergences as divergences
from msd_trl.config import MSDConfig, bf16_supported, build_divergence
from msd_trl.divergences import DPSW, Divergence, ForwardKL, GeneralizedJSD, ReverseKL, register_divergence
from msd_trl.presets import DEFAULT_TEACHER_PRESET, TEACHER_PRESETS, TEMPLATE_PLACEHOLDERS


def make_config(tmp_path, **kwargs) -> MSDConfig:
    return MSDConfig(output_dir=str(tmp_path), report_to="none", **kwargs)


def parse(tmp_path, args: list[str]) -> MSDConfig:
    # A fresh parser each time: TrlParser stores YAML values as parser defaults, which would leak between parses.
    (config,) = TrlParser((MSDConfig,)).parse_args_and_config(
        args=["--output_dir", str(tmp_path / "out"), "--report_to", "none", *args]
    )
    return config


class TotalVariation(Divergence):
    name = "tv"

    def per_token(self, student_logits, teacher_logits, completion_ids):
        return 0.5 * (student_logits.softmax(-1) - teacher_logits.softmax(-1)).abs().sum(-1)


# ----------------------------------------------------------------------------------------------------------------
# Defaults.
# ----------------------------------------------------------------------------------------------------------------


def test_is_a_gkd_config(tmp_path):
    config = make_config(tmp_path)
    assert isinstance(config, GKDConfig)
    # GKD fields keep GKD's defaults.
    assert config.beta == 0.5 and config.temperature == 0.9 and config.max_new_tokens == 128


def test_msd_defaults(tmp_path):
    config = make_config(tmp_path)
    assert config.lmbda == 1.0
    assert config.divergence == "dpsw"
    assert config.dpsw_base == "reverse_kl"
    assert config.dpsw_top_k == 20
    assert config.dpsw_min_weight == 0.1
    assert config.dpsw_normalize is True
    assert config.divergence_temperature == 1.0
    preset = TEACHER_PRESETS[DEFAULT_TEACHER_PRESET]
    assert config.teacher_preset == DEFAULT_TEACHER_PRESET
    assert config.teacher_prompt_template == preset.template
    assert config.teacher_system_prompt == (preset.system_prompt or "")
    assert config.top_p == 1.0 and config.top_k == 0
    assert config.max_prompt_length == 512 and config.prompt_truncation == "left"


@pytest.mark.parametrize("name", sorted(TEACHER_PRESETS))
def test_teacher_preset_fills_template_and_system_prompt(tmp_path, name):
    preset = TEACHER_PRESETS[name]
    config = make_config(tmp_path, teacher_preset=name)
    assert config.teacher_prompt_template == preset.template
    assert config.teacher_system_prompt == (preset.system_prompt or "")


def test_explicit_template_and_system_prompt_win_over_the_preset(tmp_path):
    config = make_config(tmp_path, teacher_preset="paper", teacher_prompt_template="{teacher_prompt}",
                         teacher_system_prompt="")  # fmt: skip
    assert config.teacher_prompt_template == "{teacher_prompt}" and config.teacher_system_prompt == ""


def test_resolved_preset_survives_a_save_and_load(tmp_path):
    config = make_config(tmp_path, teacher_preset="translation")
    values = {k: v for k, v in config.to_dict().items() if k in {f.name for f in fields(MSDConfig) if f.init}}
    again = MSDConfig(**{**values, "output_dir": str(tmp_path)})
    assert again.teacher_system_prompt == "" and again.teacher_prompt_template == "{teacher_prompt}"


def test_unknown_teacher_preset_names_the_field_and_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"teacher_preset='bogus'.*english_refusal"):
        make_config(tmp_path, teacher_preset="bogus")
    with pytest.raises(ValueError, match=r"benign_teacher_preset='bogus'.*english_refusal"):
        make_config(tmp_path, benign_teacher_preset="bogus")


def test_benign_teacher_preset_gives_benign_rows_their_own_context(tmp_path):
    from msd_trl.presets import PAPER_TEMPLATE, QUERY_TEMPLATE

    config = make_config(tmp_path, teacher_preset="english_refusal", benign_teacher_preset="paper")
    assert config.teacher_context.for_row({"harmful": True}).template == QUERY_TEMPLATE
    assert config.teacher_context.for_row({"harmful": False}).template == PAPER_TEMPLATE
    assert make_config(tmp_path, teacher_preset="english_refusal").teacher_context.benign is None
    assert config.to_dict()["benign_teacher_preset"] == "paper"  # saved with the run's msd_config.json


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{teacher_prompt:{foo}}", "format spec"),  # passed validation before, failed at the first batch
        ("{teacher_prompt!r}", "conversion"),
        ('Answer {teacher_prompt} as JSON: {"a": 1}', "double"),  # literal braces: the hint says to double them
    ],
)
def test_teacher_template_errors_name_the_fix(tmp_path, template, message):
    with pytest.raises(ValueError, match=message) as info:
        make_config(tmp_path, teacher_prompt_template=template)
    assert "teacher_prompt_template" in str(info.value)


def test_doubled_braces_are_literal(tmp_path):
    config = make_config(tmp_path, teacher_prompt_template='{teacher_prompt} as JSON: {{"a": 1}}')
    assert config.teacher_prompt_template.format(teacher_prompt="q") == 'q as JSON: {"a": 1}'


def test_cache_top_k_below_a_dpsw_instance_k_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"teacher_cache_top_k=10.*top_k=30"):
        make_config(tmp_path, divergence=DPSW(top_k=30), teacher_cache_top_k=10)
    assert make_config(tmp_path, divergence=DPSW(top_k=30), teacher_cache_top_k=30).teacher_cache_top_k == 30


def test_infinite_divergence_temperature_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"divergence_temperature=inf"):
        make_config(tmp_path, divergence_temperature=float("inf"))


def test_collator_teacher_text_and_evaluation_validate_the_template(tiny_tokenizer):
    from msd_trl.rendering import MSDDataCollator

    with pytest.raises(ValueError, match="teacher_prompt_template.*format spec"):
        MSDDataCollator(tiny_tokenizer, teacher_prompt_template="{teacher_prompt:{foo}}")


def test_gradient_checkpointing_off_by_default(tmp_path):
    config = make_config(tmp_path)
    assert not config.gradient_checkpointing
    assert not getattr(config, "activation_checkpointing", False)


def test_bf16_follows_the_hardware(tmp_path, monkeypatch):
    assert make_config(tmp_path).bf16 is bf16_supported()
    if not torch.cuda.is_available():
        assert make_config(tmp_path).bf16 is False  # this CPU: fp32
    monkeypatch.setattr(config_module, "bf16_supported", lambda: False)
    assert make_config(tmp_path).bf16 is False
    # An explicit choice wins over the hardware default.
    assert make_config(tmp_path, bf16=False).bf16 is False


# ----------------------------------------------------------------------------------------------------------------
# Cross-field checks.
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field_name", "value"),
    [
        ("teacher_prompt_template", "{teacher_prompt} {query}"),  # unknown placeholder
        ("teacher_prompt_template", "{teacher_prompt} {0}"),  # positional placeholder
        ("teacher_prompt_template", "Reply in {language}."),  # neither {prompt} nor {teacher_prompt}
        ("teacher_prompt_template", "No query at all."),
        ("teacher_prompt_template", "{teacher_prompt"),  # malformed braces
        ("teacher_prompt_template", "{teacher_prompt}}"),
        ("divergence", "kullback"),
        ("divergence", 3),
        ("dpsw_base", "dpsw"),
        ("dpsw_base", "l2"),
        ("dpsw_top_k", 1),
        ("dpsw_top_k", 0),
        ("dpsw_min_weight", -0.1),
        ("dpsw_min_weight", 1.5),
        ("divergence_temperature", 0.0),
        ("divergence_temperature", -1.0),
        ("temperature", 0.0),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -1),
        ("max_new_tokens", 0),
        ("max_prompt_length", 0),
        ("prompt_truncation", "right"),
        ("lmbda", 1.5),
        ("lmbda", -0.1),
        ("beta", 1.2),
        ("beta", -0.5),
        ("vllm_mode", "remote"),
        ("vllm_model_impl", "tensorrt"),
        ("vllm_server_port", 0),
        ("vllm_group_port", 70000),
        ("vllm_server_timeout", 0.0),
        ("vllm_tensor_parallel_size", 0),
        ("vllm_gpu_memory_utilization", 0.0),
        ("vllm_gpu_memory_utilization", 1.5),
        ("vllm_max_model_length", 0),
    ],
)
def test_bad_field_raises_value_error_naming_field_and_value(tmp_path, field_name, value):
    with pytest.raises(ValueError) as excinfo:
        make_config(tmp_path, **{field_name: value})
    message = str(excinfo.value)
    assert field_name in message, message
    assert repr(value) in message, message


@pytest.mark.parametrize(
    "template",
    [
        "{prompt}",
        "{teacher_prompt}",
        "{teacher_prompt}\n\n(The user originally asked, in {language}: {prompt})",
        'Answer as JSON {{"answer": ...}}: {teacher_prompt}',  # escaped braces are literal text
    ],
)
def test_valid_templates_are_accepted(tmp_path, template):
    assert make_config(tmp_path, teacher_prompt_template=template).teacher_prompt_template == template


def test_template_placeholders():
    assert TEMPLATE_PLACEHOLDERS == ("prompt", "teacher_prompt", "language")
    assert MSDConfig.template_placeholders("{teacher_prompt} ({language}: {prompt}) {{x}}") == {
        "prompt",
        "teacher_prompt",
        "language",
    }


@pytest.mark.parametrize("name", ["reverse_kl", "forward_kl", "jsd", "dpsw"])
def test_every_builtin_name_is_accepted(tmp_path, name):
    assert make_config(tmp_path, divergence=name).divergence == name


@pytest.mark.parametrize("base", ["reverse_kl", "forward_kl", "jsd"])
def test_every_dpsw_base_is_accepted(tmp_path, base):
    assert make_config(tmp_path, dpsw_base=base).dpsw_base == base


def test_bounds_are_inclusive_where_documented(tmp_path):
    config = make_config(tmp_path, dpsw_min_weight=0.0, dpsw_top_k=2, top_p=1.0, top_k=0, max_prompt_length=None)
    assert config.dpsw_min_weight == 0.0 and config.max_prompt_length is None
    assert make_config(tmp_path, dpsw_min_weight=1.0, prompt_truncation="error").dpsw_min_weight == 1.0


# ----------------------------------------------------------------------------------------------------------------
# Divergence instances and serialisation.
# ----------------------------------------------------------------------------------------------------------------


def test_divergence_instance_is_accepted_and_serialises(tmp_path):
    divergence = DPSW(base=GeneralizedJSD(0.3), top_k=5)
    config = make_config(tmp_path, divergence=divergence)
    assert config.divergence is divergence
    assert config.to_dict()["divergence"] == repr(divergence)
    loaded = json.loads(config.to_json_string())
    assert loaded["divergence"] == repr(divergence)
    assert loaded["dpsw_top_k"] == 20  # the field, not the instance's option
    assert json.loads(make_config(tmp_path).to_json_string())["divergence"] == "dpsw"


@pytest.mark.parametrize(
    "divergence", [ReverseKL(), GeneralizedJSD(0.3), DPSW(top_k=5)], ids=["reverse_kl", "jsd", "dpsw"]
)
def test_config_with_divergence_instance_can_be_saved_like_training_args(tmp_path, divergence):
    # transformers' Trainer._save runs torch.save(self.args, "training_args.bin") at every checkpoint.
    config = make_config(tmp_path, divergence=divergence)
    restored = pickle.loads(pickle.dumps(config))
    assert repr(restored.divergence) == repr(divergence)
    torch.save(config, tmp_path / "training_args.bin")
    assert (tmp_path / "training_args.bin").stat().st_size > 0


def test_registered_name_is_accepted(tmp_path, monkeypatch):
    monkeypatch.setattr(divergences, "DIVERGENCES", divergences.DIVERGENCES.copy())
    with pytest.raises(ValueError, match="'tv'"):
        make_config(tmp_path, divergence="tv")
    register_divergence("tv")(TotalVariation)
    config = make_config(tmp_path, divergence="tv", divergence_temperature=2.0)
    built = build_divergence(config)
    assert type(built) is TotalVariation and built.temperature == 2.0


# ----------------------------------------------------------------------------------------------------------------
# TrlParser: YAML and CLI.
# ----------------------------------------------------------------------------------------------------------------


def test_parse_cli_defaults(tmp_path):
    config = parse(tmp_path, [])
    assert isinstance(config, MSDConfig)
    assert config.divergence == "dpsw" and config.lmbda == 1.0 and config.dpsw_top_k == 20


def test_parse_cli_args(tmp_path):
    config = parse(
        tmp_path,
        [
            "--divergence",
            "jsd",
            "--beta",
            "0.25",
            "--dpsw_top_k",
            "7",
            "--no_dpsw_normalize",
            "--top_p",
            "0.9",
            "--teacher_prompt_template",
            "{teacher_prompt} ({language}: {prompt})",
        ],
    )
    assert config.divergence == "jsd" and config.beta == 0.25
    assert config.dpsw_top_k == 7 and config.dpsw_normalize is False
    assert config.top_p == 0.9
    assert config.teacher_prompt_template == "{teacher_prompt} ({language}: {prompt})"


def test_parse_yaml_config_with_cli_override(tmp_path):
    path = tmp_path / "msd.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "divergence": "dpsw",
                "dpsw_base": "forward_kl",
                "dpsw_min_weight": 0.25,
                "dpsw_top_k": 8,
                "divergence_temperature": 2.0,
                "teacher_system_prompt": "You are a careful, safe assistant.",
                "teacher_prompt_template": "{teacher_prompt}\n\n(Originally in {language}: {prompt})",
                "max_prompt_length": 256,
                "top_k": 10,
            }
        )
    )
    config = parse(tmp_path, ["--config", str(path), "--top_k", "5"])
    assert config.divergence == "dpsw" and config.dpsw_base == "forward_kl"
    assert config.dpsw_min_weight == 0.25 and config.dpsw_top_k == 8
    assert config.divergence_temperature == 2.0
    assert config.teacher_system_prompt == "You are a careful, safe assistant."
    assert config.teacher_prompt_template == "{teacher_prompt}\n\n(Originally in {language}: {prompt})"
    assert config.max_prompt_length == 256
    assert config.top_k == 5  # the command line wins over the file
    built = build_divergence(config)
    assert type(built) is DPSW and type(built.base) is ForwardKL and built.temperature == 2.0


def test_parse_yaml_rejects_bad_values(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"dpsw_min_weight": 2.0}))
    with pytest.raises(ValueError, match="dpsw_min_weight"):
        parse(tmp_path, ["--config", str(path)])


# ----------------------------------------------------------------------------------------------------------------
# build_divergence.
# ----------------------------------------------------------------------------------------------------------------


def test_build_default_is_dpsw_over_reverse_kl(tmp_path):
    built = build_divergence(make_config(tmp_path))
    assert type(built) is DPSW and type(built.base) is ReverseKL
    assert (built.top_k, built.min_weight, built.normalize, built.temperature) == (20, 0.1, True, 1.0)


@pytest.mark.parametrize(("name", "cls"), [("forward_kl", ForwardKL), ("reverse_kl", ReverseKL)])
def test_build_kls(tmp_path, name, cls):
    built = build_divergence(make_config(tmp_path, divergence=name, divergence_temperature=0.5))
    assert type(built) is cls and built.temperature == 0.5


def test_build_jsd_uses_beta(tmp_path):
    built = build_divergence(make_config(tmp_path, divergence="jsd", beta=0.3, divergence_temperature=2.0))
    assert type(built) is GeneralizedJSD and built.beta == 0.3 and built.temperature == 2.0


def test_build_dpsw_with_all_options(tmp_path):
    config = make_config(
        tmp_path,
        divergence="dpsw",
        dpsw_base="jsd",
        beta=0.7,
        dpsw_top_k=5,
        dpsw_min_weight=0.25,
        dpsw_normalize=False,
        divergence_temperature=0.5,
    )
    built = build_divergence(config)
    assert type(built) is DPSW
    assert type(built.base) is GeneralizedJSD and built.base.beta == 0.7
    assert (built.top_k, built.min_weight, built.normalize) == (5, 0.25, False)
    assert built.temperature == 0.5 and built.base.temperature == 0.5


def test_build_passes_an_instance_through(tmp_path):
    divergence = ForwardKL(temperature=3.0)
    assert build_divergence(make_config(tmp_path, divergence=divergence, divergence_temperature=0.5)) is divergence


def test_seq_kd_is_refused_not_silently_ignored(tmp_path):
    with pytest.raises(ValueError, match="seq_kd=True"):
        MSDConfig(output_dir=str(tmp_path), report_to="none", seq_kd=True)


def test_teacher_cache_top_k_checks(tmp_path):
    with pytest.raises(ValueError, match="teacher_cache_top_k=0"):
        MSDConfig(output_dir=str(tmp_path), report_to="none", teacher_cache_top_k=0)
    with pytest.raises(ValueError, match="teacher_cache_top_k=5.*dpsw_top_k=20"):
        MSDConfig(output_dir=str(tmp_path), report_to="none", teacher_cache_top_k=5)
    assert MSDConfig(output_dir=str(tmp_path), report_to="none", teacher_cache_top_k=5, dpsw_top_k=5)


def test_no_pin_memory_without_an_accelerator(tmp_path, monkeypatch):
    monkeypatch.setattr(config_module, "_has_accelerator", lambda: False)
    assert make_config(tmp_path).dataloader_pin_memory is False  # torch would warn on every CPU run


def test_importing_msd_trl_prints_no_trl_experimental_warning():
    import subprocess
    import sys

    code = "import warnings; warnings.simplefilter('always'); import msd_trl.trainer"
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRL_EXPERIMENTAL_SILENCE"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "trl.experimental" not in done.stderr


# ----------------------------------------------------------------------------------------------------------------
# vLLM rollouts: SDFTConfig's fields.
# ----------------------------------------------------------------------------------------------------------------


def test_vllm_fields_have_sdft_config_names_and_defaults(tmp_path):
    from trl.experimental.sdft import SDFTConfig

    sdft = {f.name: f for f in fields(SDFTConfig) if f.name == "use_vllm" or f.name.startswith("vllm_")}
    msd = {f.name: f for f in fields(MSDConfig)}
    assert len(sdft) == 12  # use_vllm and 11 vllm_* fields
    for name, sdft_field in sdft.items():
        assert name in msd, name
        assert msd[name].default == sdft_field.default, name
        assert msd[name].metadata["help"], name
    config = make_config(tmp_path)
    assert config.use_vllm is False and config.vllm_mode == "colocate" and config.vllm_gpu_memory_utilization == 0.3
    # The command line and YAML take them under the same names as SDFT's scripts.
    parsed = parse(tmp_path, ["--use_vllm", "true", "--vllm_mode", "server", "--vllm_server_port", "8123"])
    assert (parsed.use_vllm, parsed.vllm_mode, parsed.vllm_server_port) == (True, "server", 8123)


@pytest.mark.parametrize(("field_name", "value"), [("merge_adapter_for_generation", True), ("generation_threads", 1)])
def test_generate_only_options_are_refused_with_use_vllm(tmp_path, field_name, value):
    make_config(tmp_path, **{field_name: value})  # fine for model.generate rollouts
    with pytest.raises(ValueError, match=rf"MSDConfig.{field_name}={value!r} is invalid.*use_vllm=True"):
        make_config(tmp_path, use_vllm=True, **{field_name: value})
