"""msd_trl: Multilingual Self-Distillation (MSD) for cross-lingual safety alignment, as a TRL extension.

Public names are imported on first use (PEP 562), so `import msd_trl` and `msd-trl --help` do not pay for importing
torch, transformers, TRL and PEFT until something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module (of this package) that defines it
_LAZY: dict[str, str] = {
    "identify_language": "answer_language",
    "is_degenerate": "answer_language",
    "MSDConfig": "config",
    "LANGUAGE_NAMES": "data",
    "MGSM_LANGUAGES": "data",
    "MULTIJAIL_LANGUAGES": "data",
    "MULTIQ_LANGUAGES": "data",
    "build_msd_rows": "data",
    "build_safety_mix": "corpora",
    "filter_by_length": "data",
    "find_shared_data_dir": "data",
    "load_mgsm": "data",
    "load_multijail": "data",
    "load_multiq": "data",
    "mix_datasets": "data",
    "split_by_id": "data",
    "split_by_id_parity": "data",
    "DPSW": "divergences",
    "Divergence": "divergences",
    "DivergenceOutput": "divergences",
    "ForwardKL": "divergences",
    "GeneralizedJSD": "divergences",
    "ReverseKL": "divergences",
    "available_divergences": "divergences",
    "get_divergence": "divergences",
    "register_divergence": "divergences",
    "SAFETY_SYSTEM_PROMPT": "evaluation",
    "ClassifierJudge": "evaluation",
    "Judge": "evaluation",
    "KeywordRefusalJudge": "evaluation",
    "evaluate": "evaluation",
    "generate_responses": "evaluation",
    "run_evaluation": "evaluation",
    "write_report": "evaluation",
    "generate_teacher_completions": "generation",
    "EMBEDDED_MODEL": "models",
    "EmbeddedModelNotInstalledError": "models",
    "default_lora_config": "models",
    "disable_bnb_cpu_weight_packing": "models",
    "ensure_embedded_model": "models",
    "get_quantization_config": "models",
    "load_model": "models",
    "load_tokenizer": "models",
    "resolve_model_name_or_path": "models",
    "SelectivityCallback": "monitor",
    "DEFAULT_TEACHER_PRESET": "presets",
    "TEACHER_PRESETS": "presets",
    "TeacherContext": "presets",
    "TeacherPreset": "presets",
    "get_teacher_preset": "presets",
    "register_teacher_preset": "presets",
    "wilson_interval": "stats",
    "MSDDataCollator": "rendering",
    "MSDTrainer": "trainer",
    "OffPolicyMSDTrainer": "trainer",
    "OnPolicyMSDTrainer": "trainer",
    "TRAINERS": "trainer",
    "register_trainer": "trainer",
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .answer_language import identify_language, is_degenerate
    from .config import MSDConfig
    from .data import (
        LANGUAGE_NAMES,
        MGSM_LANGUAGES,
        MULTIJAIL_LANGUAGES,
        MULTIQ_LANGUAGES,
        build_msd_rows,
        build_safety_mix,
        filter_by_length,
        find_shared_data_dir,
        load_mgsm,
        load_multijail,
        load_multiq,
        mix_datasets,
        split_by_id,
        split_by_id_parity,
    )
    from .divergences import (
        DPSW,
        Divergence,
        DivergenceOutput,
        ForwardKL,
        GeneralizedJSD,
        ReverseKL,
        available_divergences,
        get_divergence,
        register_divergence,
    )
    from .evaluation import (
        SAFETY_SYSTEM_PROMPT,
        ClassifierJudge,
        Judge,
        KeywordRefusalJudge,
        evaluate,
        generate_responses,
        run_evaluation,
        write_report,
    )
    from .generation import generate_teacher_completions
    from .models import (
        EMBEDDED_MODEL,
        EmbeddedModelNotInstalledError,
        default_lora_config,
        disable_bnb_cpu_weight_packing,
        ensure_embedded_model,
        get_quantization_config,
        load_model,
        load_tokenizer,
        resolve_model_name_or_path,
    )
    from .monitor import SelectivityCallback
    from .presets import (
        DEFAULT_TEACHER_PRESET,
        TEACHER_PRESETS,
        TeacherContext,
        TeacherPreset,
        get_teacher_preset,
        register_teacher_preset,
    )
    from .rendering import MSDDataCollator
    from .stats import wilson_interval
    from .trainer import TRAINERS, MSDTrainer, OffPolicyMSDTrainer, OnPolicyMSDTrainer, register_trainer


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'msd_trl' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "DEFAULT_TEACHER_PRESET",
    "MULTIQ_LANGUAGES",
    "TEACHER_PRESETS",
    "SelectivityCallback",
    "TeacherContext",
    "TeacherPreset",
    "get_teacher_preset",
    "identify_language",
    "is_degenerate",
    "load_multiq",
    "register_teacher_preset",
    "split_by_id_parity",
    "wilson_interval",
    "SAFETY_SYSTEM_PROMPT",
    "ClassifierJudge",
    "Judge",
    "KeywordRefusalJudge",
    "evaluate",
    "generate_responses",
    "run_evaluation",
    "write_report",
    "EMBEDDED_MODEL",
    "EmbeddedModelNotInstalledError",
    "default_lora_config",
    "disable_bnb_cpu_weight_packing",
    "ensure_embedded_model",
    "get_quantization_config",
    "load_model",
    "load_tokenizer",
    "resolve_model_name_or_path",
    "DPSW",
    "LANGUAGE_NAMES",
    "MGSM_LANGUAGES",
    "MULTIJAIL_LANGUAGES",
    "Divergence",
    "DivergenceOutput",
    "ForwardKL",
    "GeneralizedJSD",
    "MSDConfig",
    "MSDDataCollator",
    "OffPolicyMSDTrainer",
    "OnPolicyMSDTrainer",
    "MSDTrainer",
    "TRAINERS",
    "register_trainer",
    "ReverseKL",
    "available_divergences",
    "build_msd_rows",
    "build_safety_mix",
    "filter_by_length",
    "find_shared_data_dir",
    "generate_teacher_completions",
    "get_divergence",
    "load_mgsm",
    "load_multijail",
    "mix_datasets",
    "register_divergence",
    "split_by_id",
]
