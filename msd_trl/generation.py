"""Teacher text for off-policy MSD: sample the teacher under its privileged context, once, before training.

Design: `generate_teacher_completions` renders every row's teacher conversation exactly as the trainers do
(`rendering.render_teacher_messages`), batches rows of similar length together (so one long Bengali prompt does
not pad a whole batch), samples, and writes a `teacher_completion` column. With `output_path` every finished
batch is appended to a JSON-lines file, so an interrupted run resumes where it stopped and nothing already
generated is lost. Under PEFT the teacher is the base model with the adapter disabled, as in training.
"""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset
from tqdm.auto import tqdm
from trl.trainer.utils import pad, use_adapter

from .config import MSDConfig
from .presets import validate_teacher_template
from .rendering import render_teacher_messages, stop_token_ids, tokenize_messages

logger = logging.getLogger(__name__)

__all__ = ["generate_teacher_completions"]


def _row_key(row: dict[str, Any]) -> list[Any]:
    return [row.get("id"), row.get("language")]


def _repair_partial_last_line(path: Path) -> None:
    """Cut a record left half-written by a killed run (no final newline), so the next append starts a new line."""
    with path.open("rb+") as handle:
        data = handle.read()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            logger.warning("%s ends with a partial record (%d bytes): removed; that row is generated again.",
                           path, len(data) - keep)  # fmt: skip
            handle.truncate(keep)


def _load_done(output_path: Path, column: str, dataset: Dataset) -> dict[int, str]:
    """Completions already in the file, after checking each belongs to the same row of `dataset`."""
    done: dict[int, str] = {}
    if not output_path.exists():
        return done
    _repair_partial_last_line(output_path)
    with output_path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
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
            cached_key = [record.get("id"), record.get("language")]
            if index >= len(dataset) or cached_key != _row_key(dataset[index]):
                expected = _row_key(dataset[index]) if index < len(dataset) else "missing"
                raise ValueError(
                    f"{output_path}:{line_number} holds row {index} with (id, language) {cached_key}, but the "
                    f"dataset's row {index} is {expected}: the cache was made for other data. Use a new "
                    "output_path (or delete this file) when the rows change."
                )
            done[index] = text
    return done


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
    column: str = "teacher_completion",
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
    stop_ids = stop_token_ids(model, tokenizer)
    generation_kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens or defaults.max_new_tokens,
        "do_sample": do_sample,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": stop_ids,
        "use_cache": True,
    }
    if do_sample:
        generation_kwargs.update(
            temperature=temperature if temperature is not None else defaults.temperature,
            top_p=top_p if top_p is not None else defaults.top_p,
            top_k=top_k if top_k is not None else defaults.top_k,
        )
    else:
        generation_kwargs.update(temperature=None, top_p=None, top_k=None)

    prompts = [
        tokenize_messages(tokenizer, render_teacher_messages(row, template=template, system_prompt=system_prompt))
        for row in dataset
    ]
    path = Path(output_path) if output_path is not None else None
    done = _load_done(path, column, dataset) if path is not None else {}
    if done:
        logger.info("Resuming: %d of %d rows already in %s.", len(done), len(prompts), path)
    todo = sorted((i for i in range(len(prompts)) if i not in done), key=lambda i: len(prompts[i]))
    batches = [todo[start : start + batch_size] for start in range(0, len(todo), batch_size)]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)

    device = next(model.parameters()).device
    teacher_context = use_adapter(model, adapter_name=None) if is_peft_model(model) else nullcontext()
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    stop = torch.tensor(stop_ids, device=device)
    sink = path.open("a", encoding="utf-8") if path is not None else None
    try:
        with teacher_context, torch.no_grad():
            for batch in tqdm(batches, desc="teacher completions", unit="batch", disable=not progress):
                tensors = [torch.tensor(prompts[i]) for i in batch]
                input_ids = pad(tensors, padding_value=tokenizer.pad_token_id, padding_side="left").to(device)
                attention_mask = pad([torch.ones_like(t) for t in tensors], padding_value=0, padding_side="left")
                sequences = model.generate(
                    input_ids=input_ids, attention_mask=attention_mask.to(device), **generation_kwargs
                )
                for row_index, completion in zip(batch, sequences[:, input_ids.size(1) :]):
                    is_stop = torch.isin(completion, stop)
                    end = int(is_stop.int().argmax()) if is_stop.any() else completion.numel()
                    text = tokenizer.decode(completion[:end], skip_special_tokens=True)
                    done[row_index] = text
                    if sink is not None:
                        row_id, language = _row_key(dataset[row_index])
                        record = {"index": row_index, "id": row_id, "language": language, column: text}
                        sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                if sink is not None:
                    sink.flush()
    finally:
        if sink is not None:
            sink.close()
        model.train(was_training)
    empty = sum(1 for text in done.values() if not text.strip())
    if empty:
        logger.warning("%d of %d teacher completions are empty (the teacher stopped at once).", empty, len(done))
    values = [done[i] for i in range(len(prompts))]
    if column in dataset.column_names:
        dataset = dataset.remove_columns(column)
    return dataset.add_column(column, values)
