"""Batched, length-grouped greedy generation of answers, with per-prompt budgets and a character cap."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from ..rendering import (
    render_student_messages,
    stop_token_ids,
    tokenize_messages,
)

logger = logging.getLogger(__name__)


def _with_system_prompt(prompt: str | Sequence[Mapping[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    messages = render_student_messages({"prompt": prompt if isinstance(prompt, str) else list(prompt)})
    # A conversation that brings its own system message keeps it: it is part of the prompt being evaluated.
    if system_prompt is not None and not (messages and messages[0].get("role") == "system"):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


class _CharacterBudget(StoppingCriteria):
    """Ends each sequence once its decoded new text has `max_chars` characters (a per-row stop)."""

    def __init__(self, tokenizer: Any, prompt_length: int, max_chars: int):
        self.tokenizer, self.prompt_length, self.max_chars = tokenizer, prompt_length, max_chars

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
        done = [len(text.rstrip("\ufffd").strip()) >= self.max_chars for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def generate_responses(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str | Sequence[Mapping[str, str]]],
    *,
    system_prompt: str | None = None,
    max_new_tokens: int | Sequence[int] = 64,
    batch_size: int = 8,
    do_sample: bool = False,
    temperature: float = 1.0,
    progress: bool = True,
    max_chars: int | None = None,
    on_batch: Callable[[list[int], list[str]], None] | None = None,
) -> list[str]:
    """Generate one response per prompt, in the order of ``prompts``.

    Each prompt (a string, or a list of chat messages) is rendered with the tokenizer's chat template, with
    ``system_prompt`` as the system message when given (a conversation that already starts with a system message
    keeps its own; without a system message the template's default applies). Tokenizers without a chat template
    get the plain text (system prompt, blank line, prompt), with a warning.

    ``max_new_tokens`` is one budget for every prompt or one per prompt (e.g. per language: Bengali needs several
    times the tokens of English for the same words); ``max_chars`` also ends a response once its decoded text has
    that many characters, so a generous token budget costs nothing when the answer comes in a compact script.

    ``on_batch(indices, responses)`` is called after every batch (indices into ``prompts``), e.g. to save work
    as it is done.

    Prompts are grouped by budget, then sorted by token length (longest first) and batched, left-padded, so one
    long prompt only slows its own batch; results come back in input order. Decoding is greedy unless ``do_sample``; the KV cache is on.
    The model is put in eval mode for the call and restored after. Returns the decoded new tokens, special tokens
    skipped, stripped of whitespace and of a trailing partial character (U+FFFD) left by the length cut.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(budgets) != len(prompts):
        raise ValueError(f"max_new_tokens has {len(budgets)} budgets for {len(prompts)} prompts")
    if any(not isinstance(b, int) or b < 1 for b in budgets):
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens!r}")
    if max_chars is not None and max_chars < 1:
        raise ValueError(f"max_chars must be >= 1 or None, got {max_chars!r}")
    if do_sample and not temperature > 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature!r}")
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of prompts, not a single string")
    if not prompts:
        return []
    if not getattr(tokenizer, "chat_template", None):
        logger.warning("tokenizer has no chat template: prompts are generated from plain text")

    # rendering.tokenize_messages is what the trainers use, so evaluation sees the prompts exactly as training did.
    prompt_ids = [tokenize_messages(tokenizer, _with_system_prompt(prompt, system_prompt)) for prompt in prompts]
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_token_id is None:
        pad_token_id = 0

    generation_config = copy.deepcopy(model.generation_config)
    generation_config.update(do_sample=do_sample, use_cache=True)
    generation_config.pad_token_id = pad_token_id
    if do_sample:
        generation_config.temperature = temperature
    else:
        # Sampling knobs left in the model's config would only raise warnings under greedy decoding.
        generation_config.temperature = generation_config.top_p = generation_config.top_k = None
    stop_ids = stop_token_ids(model, tokenizer)
    if stop_ids:
        generation_config.eos_token_id = stop_ids

    order = sorted(range(len(prompts)), key=lambda index: (budgets[index], len(prompt_ids[index])), reverse=True)
    responses: list[str | None] = [None] * len(prompts)
    device = model.device
    was_training = model.training
    model.eval()
    try:
        with (
            torch.inference_mode(),
            tqdm(total=len(prompts), desc="generating", unit="prompt", disable=not progress) as bar,
        ):
            batches = []
            for budget in sorted(set(budgets), reverse=True):
                same_budget = [index for index in order if budgets[index] == budget]
                batches += [same_budget[i : i + batch_size] for i in range(0, len(same_budget), batch_size)]
            for batch_indices in batches:
                sequences = [torch.tensor(prompt_ids[index], dtype=torch.long) for index in batch_indices]
                input_ids = pad_sequence(sequences, batch_first=True, padding_value=pad_token_id, padding_side="left")
                attention_mask = pad_sequence(
                    [torch.ones_like(sequence) for sequence in sequences],
                    batch_first=True,
                    padding_value=0,
                    padding_side="left",
                )  # [B, T]
                stopping = None
                if max_chars is not None:
                    stopping = StoppingCriteriaList([_CharacterBudget(tokenizer, input_ids.shape[1], max_chars)])
                generation_config.max_new_tokens = budgets[batch_indices[0]]
                output_ids = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    generation_config=generation_config,
                    stopping_criteria=stopping,
                )  # [B, T + new]
                completions = tokenizer.batch_decode(output_ids[:, input_ids.shape[1] :], skip_special_tokens=True)
                for index, completion in zip(batch_indices, completions):
                    # A cut at max_new_tokens can split a multi-byte character (common in Bengali or Thai with
                    # byte-level tokens); its bytes decode to U+FFFD, which is no text at all.
                    responses[index] = completion.rstrip("\ufffd").strip()
                if on_batch is not None:
                    on_batch(list(batch_indices), [responses[index] for index in batch_indices])
                bar.update(len(batch_indices))
    finally:
        model.train(was_training)
    return [response if response is not None else "" for response in responses]
