"""Faster decoding on a CPU: fewer threads for the decode steps, and the LoRA adapter merged for a generate call.

Why: a decode step of a small model is hundreds of small matrix products, and on a CPU each wakes OpenMP's worker
threads, which under `OMP_WAIT_POLICY=PASSIVE` costs more than the product itself; an unmerged adapter adds two
products per adapted layer per token. docs/performance.md has the measurements (`examples/benchmarks/decode_speed.py`).
Used by the trainer (`MSDConfig.generation_threads`, `MSDConfig.merge_adapter_for_generation`) and evaluation
(`EvaluationArguments.generation_threads`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["check_adapter_mergeable", "check_thread_count", "decode_threads", "merged_adapter"]


def _query_length(args: tuple, kwargs: dict) -> int | None:
    for value in (kwargs.get("input_ids"), kwargs.get("inputs_embeds"), *(args[:1])):
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            return value.shape[1]
    return None


def check_thread_count(num_threads: int | None, name: str = "num_threads") -> None:
    """Raise ValueError naming `name` unless `num_threads` is an integer >= 1 or None."""
    if num_threads is not None and (
        isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1
    ):
        raise ValueError(f"{name} must be an integer >= 1 or None, got {num_threads!r}")


@contextlib.contextmanager
def decode_threads(model: torch.nn.Module, num_threads: int | None) -> Iterator[None]:
    """Inside the block, every forward of `model` that processes one new token per row (a decode step), and the
    sampling after it, runs on `num_threads` torch threads; longer forwards (the prompt's prefill, compute-bound)
    run on the count the block started with, which is restored at its end.
    Hooks the innermost model (`get_base_model()` for PEFT), which `generate` calls once per token. `None`
    changes nothing."""
    check_thread_count(num_threads)
    if num_threads is None:
        yield
        return
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    previous = torch.get_num_threads()

    def before(_module, args, kwargs):
        # Decode steps switch to `num_threads` and stay there (the sampling between steps is small work too); a
        # longer forward (a prefill) switches back.
        torch.set_num_threads(num_threads if _query_length(args, kwargs) == 1 else previous)

    handle = target.register_forward_pre_hook(before, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
        torch.set_num_threads(previous)


def _quantized_modules(model: torch.nn.Module) -> list[str]:
    names = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        kind = type(weight).__name__ if weight is not None else ""
        if kind in ("Params4bit", "Int8Params") or getattr(module, "quant_state", None) is not None:
            names.append(name)
    return names


def check_adapter_mergeable(model: Any, *, field: str = "merge_adapter_for_generation") -> None:
    """Raise ValueError (naming `field`) unless merging the PEFT adapter into the base weights and unmerging it
    after generation gives back the same weights to float32 rounding: a PEFT model with a LoRA-style adapter,
    float32 base weights, nothing quantized. In bfloat16 or float16 each merge/unmerge round trip rounds the base
    weights (the self-teacher's weights), and the error accumulates over training; a quantized base is
    re-quantized by the merge."""
    if not hasattr(model, "merge_adapter") or not hasattr(model, "unmerge_adapter"):
        raise ValueError(f"{field}=True needs a PEFT model (pass a peft_config); got {type(model).__name__}.")
    quantized = _quantized_modules(model)
    if quantized:
        raise ValueError(
            f"{field}=True cannot be used with a quantized base model (e.g. QLoRA): merging re-quantizes the base "
            f"weights every step ({len(quantized)} quantized modules, first {quantized[0]!r}). Set {field}=False."
        )
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad and p.is_floating_point()}
    if frozen - {torch.float32, torch.float64}:
        raise ValueError(
            f"{field}=True needs float32 base weights, found {sorted(str(d) for d in frozen)}: in lower precision "
            f"every merge/unmerge round trip rounds the base (self-teacher) weights and the error accumulates. Set "
            f"{field}=False, or load the model in float32."
        )


@contextlib.contextmanager
def merged_adapter(model: Any, enabled: bool = True) -> Iterator[None]:
    """Merge the active PEFT adapter into the base weights for the block and unmerge it after (also on error), so
    the block runs the plain base layers. Check `check_adapter_mergeable` first. `enabled=False` changes nothing."""
    if not enabled:
        yield
        return
    with torch.no_grad():
        model.merge_adapter()
    try:
        yield
    finally:
        with torch.no_grad():
            model.unmerge_adapter()
