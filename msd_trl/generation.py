"""Batched generation: the one loop behind evaluation answers, teacher text and the classifier judge.

Design: `generate_responses` renders each prompt with the tokenizer's chat template (as the trainers do), groups
prompts by budget and length (so one long Bengali prompt does not pad a whole batch), left-pads, generates, cuts
each answer at its first stop id and decodes it cleanly (no partial character from a length cut).

Teacher text for off-policy MSD: `generate_teacher_completions` renders every row's teacher conversation exactly as the trainers do
(`rendering.render_teacher_messages`), batches rows of similar length together (so one long Bengali prompt does
not pad a whole batch), samples, and writes a `teacher_completion` column. With `output_path` every finished
batch is appended to a JSON-lines file, so an interrupted run resumes where it stopped and nothing already
generated is lost. Under PEFT the teacher is the base model with the adapter disabled, as in training.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate.utils import is_peft_model
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from .names import TEACHER_COMPLETION_COLUMN
from .presets import TeacherContext, validate_teacher_template
from .rendering import render_student_messages, render_teacher_messages, stop_token_ids, tokenize_messages

if TYPE_CHECKING:
    from datasets import Dataset

    from .config import MSDConfig

logger = logging.getLogger(__name__)

__all__ = ["generate_responses", "generate_teacher_completions"]


def _row_key(row: dict[str, Any]) -> list[Any]:
    """(id, language, hash of the prompt): matches a cached record to its row even without id/language columns."""
    prompt = json.dumps(
        row.get("prompt") if row.get("prompt") is not None else row.get("messages"), ensure_ascii=False
    )
    return [row.get("id"), row.get("language"), hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:16]]


def teacher_fingerprint(model, tokenizer, **settings: Any) -> dict[str, Any]:
    """What the teacher text depends on: the model (name, revision), the tokenizer, and the generation settings
    (template, system prompt, sampling). Stored with every cache and compared on reuse."""
    config = getattr(model, "config", None)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {
        "model": str(
            getattr(base, "name_or_path", None) or getattr(config, "_name_or_path", "") or type(base).__name__
        ),
        "model_revision": getattr(config, "_commit_hash", None),
        "tokenizer": f"{getattr(tokenizer, 'name_or_path', '')} (vocab {len(tokenizer)})",
        **dict(sorted(settings.items())),
    }


def fingerprint_differences(cached: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`"key: cached X, now Y"` for every setting that differs between two fingerprints (teacher text, top-K cache)."""
    return [
        f"{key}: cached {cached.get(key)!r}, now {current.get(key)!r}"
        for key in sorted(set(cached) | set(current))
        if cached.get(key) != current.get(key)
    ]


def repair_partial_last_line(path: Path) -> None:
    """Cut a record left half-written by a killed run (no final newline), so the next append starts a new line.
    Shared by every append-only JSON-lines file we resume from (teacher text, evaluation answers)."""
    with path.open("rb+") as handle:
        data = handle.read()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            logger.warning("%s ends with a partial record (%d bytes): removed; that row is generated again.",
                           path, len(data) - keep)  # fmt: skip
            handle.truncate(keep)


def _load_done(output_path: Path, column: str, dataset: Dataset, fingerprint: dict[str, Any]) -> dict[int, str]:
    """Completions already in the file, after checking the file was made by the same teacher (its fingerprint
    header) and that each record belongs to the same row of `dataset` (id, language and prompt hash)."""
    done: dict[int, str] = {}
    if not output_path.exists() or output_path.stat().st_size == 0:
        return done
    repair_partial_last_line(output_path)
    with output_path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            if line_number == 1:
                header = json.loads(line) if line.lstrip().startswith('{"fingerprint"') else None
                if header is None:
                    raise ValueError(
                        f"{output_path} has no teacher fingerprint (made by an older msd_trl or another tool), so "
                        "it cannot be checked against this teacher and these rows: delete it or pass a new "
                        "output_path."
                    )
                differences = fingerprint_differences(header["fingerprint"], fingerprint)
                if differences:
                    raise ValueError(
                        f"{output_path} was generated by another teacher setting: {'; '.join(differences)}. Delete "
                        "it or pass a new output_path to generate teacher text for this setting."
                    )
                continue
            try:
                record = json.loads(line)
                index, text = int(record["index"]), record[column]
            except (json.JSONDecodeError, KeyError, ValueError, TypeError):
                # A run killed mid-write leaves at most one partial last line; regenerate that row.
                logger.warning(
                    "%s:%d is not a complete record; that row will be generated again.", output_path, line_number
                )
                continue
            cached_key = record.get("key")
            if index >= len(dataset) or cached_key != _row_key(dataset[index]):
                expected = _row_key(dataset[index]) if index < len(dataset) else "missing"
                raise ValueError(
                    f"{output_path}:{line_number} holds row {index} with (id, language, prompt hash) {cached_key}, "
                    f"but the dataset's row {index} is {expected}: the cache was made for other data or another "
                    "row order. Use a new output_path (or delete this file) when the rows change."
                )
            done[index] = text
    return done


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
    top_p: float | None = None,
    top_k: int | None = None,
    strip_whitespace: bool = True,
    desc: str = "generating",
) -> list[str]:
    """Generate one response per prompt, in the order of ``prompts``: the one batched generation loop of msd_trl
    (evaluation answers, teacher text, the classifier judge).

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
    long prompt only slows its own batch; results come back in input order. Decoding is greedy unless ``do_sample``
    (then ``temperature``, ``top_p``, ``top_k``; seed torch yourself for reproducible samples); the KV cache is on.
    Each answer ends at the first stop id (the model's EOS ids and the tokenizer's). The model is put in eval mode
    for the call and restored after. Returns the decoded new tokens, special tokens skipped, without a trailing
    partial character (U+FFFD) left by the length cut, and stripped of surrounding whitespace unless
    ``strip_whitespace=False`` (teacher text keeps it: it is tokenised again as an assistant turn).
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
        generation_config.top_p = 1.0 if top_p is None else top_p
        generation_config.top_k = 0 if top_k is None else top_k  # explicit: the model's own config never leaks in
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
            tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not progress) as bar,
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
                new_tokens = output_ids[:, input_ids.shape[1] :]  # [B, new]
                is_stop = torch.isin(new_tokens, torch.tensor(stop_ids or [-1], device=new_tokens.device))
                for row, index in enumerate(batch_indices):
                    end = int(is_stop[row].int().argmax()) if is_stop[row].any() else new_tokens.size(1)
                    text = tokenizer.decode(new_tokens[row, :end], skip_special_tokens=True)
                    # A cut at max_new_tokens can split a multi-byte character (common in Bengali or Thai with
                    # byte-level tokens); its bytes decode to U+FFFD, which is no text at all.
                    text = text.rstrip("\ufffd")
                    responses[index] = text.strip() if strip_whitespace else text
                if on_batch is not None:
                    on_batch(list(batch_indices), [responses[index] for index in batch_indices])
                bar.update(len(batch_indices))
    finally:
        model.train(was_training)
    return [response if response is not None else "" for response in responses]


def generate_teacher_completions(
    model,
    dataset: Dataset,
    tokenizer=None,
    *,
    args: MSDConfig | None = None,
    teacher_prompt_template: str | None = None,
    teacher_system_prompt: str | None = None,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    do_sample: bool = True,
    batch_size: int = 8,
    output_path: str | Path | None = None,
    column: str = TEACHER_COMPLETION_COLUMN,
    seed: int = 0,
    progress: bool = True,
) -> Dataset:
    """Return `dataset` with a `column` of teacher text sampled under the privileged teacher context.

    Args:
        model: the teacher (a model, or a name/path loaded with `msd_trl.models.load_model`). A PEFT model is
            used with its adapter disabled, i.e. the initial weights, as the trainers' self-teacher.
        dataset: MSD rows (`prompt`, optional `teacher_prompt`, `language`, `id`).
        tokenizer: defaults to the model's own (`load_tokenizer(model.name_or_path)`).
        args: an `MSDConfig` to take the teacher template, system prompt and sampling settings from; explicit
            keyword arguments override it.
        batch_size: rows per `generate` call; rows are grouped by prompt length first.
        output_path: a JSON-lines file; finished batches are appended, and rows already in it are not generated
            again (resume).
        do_sample: False for greedy teacher text.
    """
    from .config import MSDConfig  # here, not at import: evaluation uses this module without TRL
    from .models import load_model, load_tokenizer

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got batch_size={batch_size!r}.")
    if "prompt" not in dataset.column_names:
        raise ValueError(f"dataset has no 'prompt' column; found {dataset.column_names}.")
    if isinstance(model, str) or model is None:
        tokenizer = tokenizer or load_tokenizer(model)
        model = load_model(model)
    if tokenizer is None:
        tokenizer = load_tokenizer(model.name_or_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    defaults = args or MSDConfig(output_dir="unused", report_to="none")
    template = teacher_prompt_template if teacher_prompt_template is not None else defaults.teacher_prompt_template
    system_prompt = teacher_system_prompt if teacher_system_prompt is not None else defaults.teacher_system_prompt
    validate_teacher_template(template, field="teacher_prompt_template")
    settings = {
        "max_new_tokens": max_new_tokens or defaults.max_new_tokens,
        "do_sample": do_sample,
        "temperature": (temperature if temperature is not None else defaults.temperature) if do_sample else None,
        "top_p": (top_p if top_p is not None else defaults.top_p) if do_sample else None,
        "top_k": (top_k if top_k is not None else defaults.top_k) if do_sample else None,
    }
    # A config with a benign rows' context (MSDConfig.benign_teacher_preset) renders those rows under it.
    benign = args.teacher_context.benign if args is not None else None
    context = TeacherContext(template, system_prompt or None, benign)
    conversations = [render_teacher_messages(row, context=context) for row in dataset]
    if benign is not None:
        settings["benign_template"], settings["benign_system_prompt"] = benign.template, benign.system_prompt
    fingerprint = teacher_fingerprint(
        model, tokenizer, template=template, system_prompt=system_prompt or None, column=column, seed=seed, **settings
    )
    path = Path(output_path) if output_path is not None else None
    done = _load_done(path, column, dataset, fingerprint) if path is not None else {}
    if done:
        logger.info("Resuming: %d of %d rows already in %s.", len(done), len(conversations), path)
    todo = [i for i in range(len(conversations)) if i not in done]
    sink = None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        sink = path.open("a", encoding="utf-8")
        if path.stat().st_size == 0:
            sink.write(json.dumps({"fingerprint": fingerprint}, ensure_ascii=False) + "\n")
            sink.flush()

    def save(indices: list[int], texts: list[str]) -> None:
        for position, text in zip(indices, texts):
            row_index = todo[position]
            done[row_index] = text
            if sink is not None:
                key = _row_key(dataset[row_index])
                record = {"index": row_index, "id": key[0], "language": key[1], "key": key, column: text}
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
        if sink is not None:
            sink.flush()

    from trl.trainer.utils import use_adapter

    teacher_context = use_adapter(model, adapter_name=None) if is_peft_model(model) else nullcontext()
    torch.manual_seed(seed)
    try:
        with teacher_context:
            generate_responses(
                model,
                tokenizer,
                [conversations[i] for i in todo],
                max_new_tokens=settings["max_new_tokens"],
                batch_size=batch_size,
                do_sample=do_sample,
                temperature=settings["temperature"] or 1.0,
                top_p=settings["top_p"],
                top_k=settings["top_k"],
                strip_whitespace=False,
                progress=progress,
                on_batch=save,
                desc="teacher completions",
            )
    finally:
        if sink is not None:
            sink.close()
    empty = sum(1 for text in done.values() if not text.strip())
    if empty:
        logger.warning("%d of %d teacher completions are empty (the teacher stopped at once).", empty, len(done))
    values = [done[i] for i in range(len(conversations))]
    if column in dataset.column_names:
        dataset = dataset.remove_columns(column)
    return dataset.add_column(column, values)
