"""msd_trl: Multilingual Self-Distillation (MSD) for cross-lingual safety alignment, as a TRL extension.

The top level holds what a user of the trainers needs (`_import_structure`, the one list of public names, as in TRL);
everything else is public in its module (`msd_trl.data`, `msd_trl.evaluation`, `msd_trl.models`, ...). Names are
imported on first use (PEP 562), so `import msd_trl` and `msd-trl --help` do not pay for importing torch,
transformers, TRL and PEFT until something needs them.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# module (of this package) -> the public names it defines
_import_structure: dict[str, list[str]] = {
    "config": ["MSDConfig"],
    "trainer": ["MSDTrainer", "OffPolicyMSDTrainer", "OnPolicyMSDTrainer", "register_trainer"],
    "divergences": ["DPSW", "Divergence", "ForwardKL", "GeneralizedJSD", "ReverseKL", "register_divergence"],
    "presets": ["TeacherContext", "TeacherPreset", "register_teacher_preset"],
    "corpora": ["Corpus", "build_safety_mix", "register_corpus"],
    "generation": ["generate_teacher_completions"],
    "evaluation": ["EvaluationArguments", "Judge", "register_judge", "run_evaluation"],
    "monitor": ["SelectivityCallback"],
    "models": ["load_model", "load_tokenizer"],
}

_MODULE_OF = {name: module for module, names in _import_structure.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'msd_trl' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULE_OF])
