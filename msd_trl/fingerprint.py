"""Teacher fingerprints: a cached teacher output is reused only by the teacher that made it, on the rows it read.

Design: msd_trl caches teacher outputs in three places: the teacher text of off-policy MSD
(`generation.generate_teacher_completions`, a JSON-lines file), the teacher's top-K log-probs on that text
(`teacher_cache`, dataset columns), and a checkpoint's record of the teacher it trained towards (`checkpoints`).
All three use the one key built here, in two parts:

* the teacher's identity (`teacher_fingerprint`): its architecture config, a cheap digest of its weights and of any
  adapter active while it acts as teacher, and the tokenizer (vocabulary, special tokens, chat template), plus the
  caller's settings (template, system prompt, sampling, K). The model's name or path is recorded for messages but
  never compared: the same weights loaded another way are the same teacher, and new weights saved at the same path
  are not;
* per row, a digest of what the teacher actually reads (`token_digest`): the rendered teacher token ids, after the
  template, system prompt, `language` and the prompt-length rule were applied, and for scores the completion ids.

So any change is either a clean miss or a `ValueError` naming what changed (`fingerprint_differences`).

The weight digest reads every parameter once (a float64 sum per tensor and a strided sample of its values, in
chunks, on the tensor's own device): about one pass over the weights, no copy of the model. Under FSDP or DeepSpeed
ZeRO-3 each process sees only its shard, so the trainers take process 0's digest for every process.
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Iterable, Sequence
from typing import Any

import torch

__all__ = ["IDENTITY_LABELS", "fingerprint_differences", "teacher_fingerprint", "token_digest", "weights_digest"]

# Recorded for the message, never compared (see the module docstring).
IDENTITY_LABELS = ("teacher",)
# Config entries that describe how the model was loaded or is run, not what it computes.
_VOLATILE_CONFIG_KEYS = frozenset(
    {"_name_or_path", "_commit_hash", "transformers_version", "use_cache", "dtype", "torch_dtype",
     "output_attentions", "output_hidden_states", "return_dict"}
)  # fmt: skip
_SAMPLE_VALUES = 64  # values per tensor in the strided sample (with the sum: catches permutations too)
_CHUNK = 1 << 22  # elements per float64 reduction: bounds the temporary at 32 MB


def _digest(data: bytes | str) -> str:
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()[:16]


def token_digest(*token_ids: Sequence[int]) -> str:
    """A short digest of one or more token-id sequences (a row's rendered teacher prompt, its completion)."""
    return _digest(json.dumps([list(map(int, ids)) for ids in token_ids]))


def adapter_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters of every PEFT adapter in `model` (LoRA matrices, `modules_to_save` copies, trainable-token
    deltas): the attributes peft's tuner layers and wrappers list in `adapter_layer_names`."""
    found: dict[int, torch.nn.Parameter] = {}
    for module in model.modules():
        for attribute in getattr(module, "adapter_layer_names", ()):
            try:
                holder = operator.attrgetter(attribute)(module)
            except AttributeError:
                continue
            if isinstance(holder, torch.nn.Module):
                found.update((id(p), p) for p in holder.parameters())
            elif isinstance(holder, torch.nn.Parameter):
                found[id(holder)] = holder
    return list(found.values())


@torch.no_grad()
def weights_digest(parameters: Iterable[torch.Tensor]) -> str:
    """A digest of tensors' shapes, dtypes and values: per tensor the float64 sum and a strided sample of values.

    Names are left out on purpose, so a model and the same model inside a `PeftModel` (whose names gain
    `base_model.model.` and `.base_layer`) digest alike; the order of the tensors is the module order.
    """
    hasher = hashlib.sha256()
    for tensor in parameters:
        hasher.update(f"{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        if tensor.is_meta or tensor.numel() == 0:
            continue
        flat = tensor.detach().reshape(-1)
        total = sum(float(chunk.double().sum()) for chunk in flat.split(_CHUNK))
        count = min(_SAMPLE_VALUES, flat.numel())
        # Integer positions: a float linspace rounds n - 1 up to n for n > 2**24 (an index out of range).
        positions = torch.arange(count, device=flat.device) * (flat.numel() - 1) // max(count - 1, 1)
        sample = flat[positions].double().cpu().numpy().tobytes()
        hasher.update(repr(total).encode())
        hasher.update(sample)
    return hasher.hexdigest()[:16]


def _config_digest(model: torch.nn.Module) -> str | None:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return None
    values = {key: value for key, value in config.to_dict().items() if key not in _VOLATILE_CONFIG_KEYS}
    return _digest(json.dumps(values, sort_keys=True, default=str))


def _tokenizer_digest(tokenizer: Any) -> str:
    vocabulary = sorted(tokenizer.get_vocab().items())
    special = getattr(tokenizer, "special_tokens_map", {})
    return _digest(json.dumps([vocabulary, special, getattr(tokenizer, "chat_template", None)], default=str))


def teacher_fingerprint(model: torch.nn.Module, tokenizer: Any, *, adapter_disabled: bool, **settings: Any) -> dict:
    """The identity of a teacher and the `settings` its output depends on, as a flat JSON-able dict.

    Args:
        model: the module that acts as teacher (unwrapped; a `PeftModel` is fine).
        tokenizer: the tokenizer that renders its prompts.
        adapter_disabled: the teacher runs with its PEFT adapter disabled (the self-teacher: the base model, as
            `generate_teacher_completions` and the trainers use it), so adapter weights are no part of it.
        settings: what else the cached output depends on (template, system prompt, sampling settings, K, ...).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    adapters = adapter_parameters(model)
    adapter_ids = {id(p) for p in adapters}
    active = [] if adapter_disabled else adapters
    return {
        "teacher": str(
            getattr(base, "name_or_path", None) or getattr(config, "_name_or_path", "") or type(base).__name__
        ),
        "teacher_config": _config_digest(base),
        "teacher_weights": weights_digest(p for p in model.parameters() if id(p) not in adapter_ids),
        "teacher_adapter": weights_digest(active) if active else None,
        "tokenizer": _tokenizer_digest(tokenizer),
        **dict(sorted(settings.items())),
    }


def fingerprint_differences(cached: dict[str, Any], current: dict[str, Any], *, then: str = "cached") -> list[str]:
    """`"key: cached X, now Y"` for every compared entry that differs between two fingerprints (`then` names the
    older side, e.g. "checkpoint"); when the teacher's identity differs, its recorded name is added, since a digest
    alone does not say which model."""
    keys = sorted((set(cached) | set(current)) - set(IDENTITY_LABELS))
    differences = [
        f"{key}: {then} {cached.get(key)!r}, now {current.get(key)!r}"
        for key in keys
        if cached.get(key) != current.get(key)
    ]
    identity = ("teacher_config", "teacher_weights", "teacher_adapter", "tokenizer")
    if any(cached.get(key) != current.get(key) for key in identity) and "teacher" in cached.keys() & current.keys():
        differences.append(f"teacher: {then} {cached.get('teacher')!r}, now {current.get('teacher')!r}")
    return differences
