"""msd_trl: Multilingual Self-Distillation (MSD) for cross-lingual safety alignment, as a TRL extension."""

from .config import MSDConfig
from .data import (
    LANGUAGE_NAMES,
    MGSM_LANGUAGES,
    MULTIJAIL_LANGUAGES,
    build_msd_rows,
    build_safety_mix,
    filter_by_length,
    find_shared_data_dir,
    load_mgsm,
    load_multijail,
    mix_datasets,
    split_by_id,
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
from .trainer import MSDDataCollator, OffPolicyMSDTrainer, OnPolicyMSDTrainer

__version__ = "0.1.0"

__all__ = [
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
