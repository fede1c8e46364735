"""Evaluation jobs: which rows are asked, of whom (student or teacher), in what conversation, with what budget.

Pure functions of the datasets and settings (a tokenizer only to measure token cost), so the job list of an
evaluation can be built and checked without a model. One job is a dict: ``kind`` (harmful / benign / teacher /
teacher_benign / utility), ``set``, ``id``, ``language``, ``harmful``, ``messages`` (the final conversation),
``budget`` (new tokens), ``max_chars`` and, for utility rows, ``answer``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from ..rendering import message_text, render_prompt, render_teacher_messages

logger = logging.getLogger(__name__)

__all__ = [
    "build_jobs",
    "generation_budgets",
    "job_key",
    "language_budgets",
    "read_columns",
    "select_rows",
    "select_set",
]

Selected = tuple[dict[str, list], list[str], list[int]]  # (columns, languages, row indices) of one evaluated set

_REQUIRED_COLUMNS = ("id", "language", "prompt")


def read_columns(dataset: Any, name: str, extra: Sequence[str] = ()) -> dict[str, list]:
    names = list(getattr(dataset, "column_names", []))
    missing = [column for column in (*_REQUIRED_COLUMNS, *extra) if column not in names]
    if missing:
        raise ValueError(f"{name} dataset is missing columns {missing}; it has {names}")
    return {column: list(dataset[column]) for column in (*_REQUIRED_COLUMNS, *extra)}


def select_rows(
    columns: dict[str, list], languages: Sequence[str] | None, limit: int | None, name: str
) -> tuple[list[str], list[int]]:
    """Row indices for the requested languages; with ``limit``, only the first ``limit`` query ids present in every
    requested language, so each language is measured on the same queries."""
    present = list(dict.fromkeys(columns["language"]))
    languages = present if languages is None else list(dict.fromkeys(languages))
    absent = [language for language in languages if language not in present]
    if absent:
        raise ValueError(f"{name} dataset has no rows for languages {absent}; it has {present}")
    wanted = set(languages)
    rows = [index for index, language in enumerate(columns["language"]) if language in wanted]
    if limit is not None:
        ids_per_language: dict[str, set] = {language: set() for language in languages}
        for index in rows:
            ids_per_language[columns["language"][index]].add(columns["id"][index])
        common = set.intersection(*ids_per_language.values())
        ordered_ids = dict.fromkeys(columns["id"][index] for index in rows)  # first appearance order
        kept_ids = set([query_id for query_id in ordered_ids if query_id in common][:limit])
        dropped = len({columns["id"][index] for index in rows}) - len(kept_ids)
        if dropped:
            logger.info("%s: limit=%d keeps %d query ids, drops %d", name, limit, len(kept_ids), dropped)
        rows = [index for index in rows if columns["id"][index] in kept_ids]
    return languages, rows


def select_set(
    dataset: Any, name: str, languages: Sequence[str] | None, limit: int | None, extra: Sequence[str] = ()
) -> Selected:
    """One evaluated set: its columns (the required ones and `extra`), languages and selected row indices."""
    columns = read_columns(dataset, name, extra=extra)
    languages, rows = select_rows(columns, languages, limit, name)
    return columns, languages, rows


def language_budgets(
    tokenizer: Any,
    columns: Mapping[str, Sequence[Any]],
    rows: Sequence[int],
    *,
    english_tokens: int,
    max_tokens: int,
) -> dict[str, int]:
    """Per-language generation budget: `english_tokens` scaled by how many more tokens the language needs for the
    same text, measured on the rows themselves (median of tokens(prompt) / tokens(teacher_prompt) over the
    language's rows, at least 1), capped at `max_tokens`: a script that spends several times the English tokens on the
    same text gets several times the budget (docs/data.md has SmolLM2's token counts). Rows without `teacher_prompt`
    (or an English row) get `english_tokens`."""
    ratios: dict[str, list[float]] = {}
    for index in rows:
        language = columns["language"][index]
        english = columns["teacher_prompt"][index] if "teacher_prompt" in columns else None
        if english is None or language == "en":
            ratios.setdefault(language, [])
            continue
        n_target = len(tokenizer(message_text(columns["prompt"][index]), add_special_tokens=False)["input_ids"])
        n_english = len(tokenizer(message_text(english), add_special_tokens=False)["input_ids"])
        ratios.setdefault(language, []).append(n_target / max(1, n_english))
    budgets = {}
    for language, values in ratios.items():
        ratio = max(1.0, statistics.median(values)) if values else 1.0
        budgets[language] = min(max_tokens, max(english_tokens, math.ceil(english_tokens * ratio)))
    return budgets


def generation_budgets(
    tokenizer: Any,
    sets: Mapping[str, Selected],
    *,
    max_new_tokens: int,
    max_budget_tokens: int,
    per_language: bool,
) -> dict[tuple[str, str], int]:
    """New-token budget per (set, language): `language_budgets` of each set, or `max_new_tokens` everywhere."""
    budgets: dict[tuple[str, str], int] = {}
    for set_name, (columns, _, rows) in sets.items():
        scaled = (
            language_budgets(tokenizer, columns, rows, english_tokens=max_new_tokens, max_tokens=max_budget_tokens)
            if per_language
            else {}
        )
        for language in dict.fromkeys(columns["language"][i] for i in rows):
            budgets[(set_name, language)] = scaled.get(language, max_new_tokens)
    return budgets


def build_jobs(
    harmful: Selected,
    benign: Mapping[str, Selected],
    budgets: Mapping[tuple[str, str], int],
    *,
    teacher_prompt_template: str,
    teacher_system_prompt: str | None,
    student_system_prompt: str | None,
    max_new_tokens: int,
    max_chars: int | None,
    include_student: bool = True,
    teacher_benign: bool = True,
    utility_max_new_tokens: int | None = None,
    teacher_context=None,
    include_teacher: bool = True,
) -> list[dict[str, Any]]:
    """One job per prompt with its final conversation, in a fixed order (student harmful, teacher harmful, then per
    benign set: student, teacher, utility). Teacher conversations come from `rendering.render_teacher_messages`,
    exactly as in training (a `teacher_context` with a benign rows' context answers benign sets under it); the
    teacher answers each query id once, the ids taking the set's languages in turn."""
    jobs: list[dict[str, Any]] = []

    def teacher_jobs(kind: str, set_name: str, columns: dict[str, list], rows: list[int], set_languages: list[str]):
        if not include_teacher:
            return
        by_id: dict[Any, dict[str, int]] = {}
        for index in rows:
            by_id.setdefault(columns["id"][index], {})[columns["language"][index]] = index
        for position, (query_id, per_language) in enumerate(by_id.items()):
            language = set_languages[position % len(set_languages)]
            index = per_language.get(language, next(iter(per_language.values())))
            row = {key: columns[key][index] for key in ("prompt", "teacher_prompt", "language") if key in columns}
            row["harmful"] = kind == "teacher"
            jobs.append(
                {
                    "kind": kind,
                    "set": set_name,
                    "id": query_id,
                    "language": columns["language"][index],
                    "harmful": kind == "teacher",
                    "messages": render_teacher_messages(
                        row,
                        template=teacher_prompt_template,
                        system_prompt=teacher_system_prompt,
                        context=teacher_context,
                    ),
                    # A teacher told to reply in the target language needs that language's budget.
                    "budget": budgets.get((set_name, columns["language"][index]), max_new_tokens),
                    "max_chars": max_chars,
                }
            )

    def student_jobs(kind: str, set_name: str, columns: dict[str, list], rows: list[int]):
        if not include_student:
            return
        english = columns.get("teacher_prompt")
        for index in rows:
            jobs.append(
                {
                    "kind": kind,
                    "set": set_name,
                    "id": columns["id"][index],
                    "language": columns["language"][index],
                    "harmful": kind == "harmful",
                    "messages": render_prompt(columns["prompt"][index], student_system_prompt),
                    "budget": budgets[(set_name, columns["language"][index])],
                    "max_chars": max_chars,
                    "answer": columns["answer"][index] if "answer" in columns else None,
                    # The query's English version, when the data has one: what the off-topic check reads the
                    # answer against (non_answers.is_off_topic).
                    "english_prompt": message_text(english[index]) if english and english[index] else None,
                }
            )

    harmful_columns, languages, harmful_rows = harmful
    student_jobs("harmful", "harmful", harmful_columns, harmful_rows)
    teacher_jobs("teacher", "harmful", harmful_columns, harmful_rows, languages)
    for set_name, (columns, set_languages, rows) in benign.items():
        student_jobs("benign", set_name, columns, rows)
        if teacher_benign and "teacher_prompt" in columns:
            teacher_jobs("teacher_benign", set_name, columns, rows, set_languages)
        if utility_max_new_tokens is not None and "answer" in columns:
            start = len(jobs)
            student_jobs("utility", set_name, columns, rows)
            for job in jobs[start:]:
                job.update(budget=utility_max_new_tokens, max_chars=None)
    return jobs


def job_key(job: dict[str, Any]) -> str:
    """Identifies one answer: what was asked (the full conversation), of whom, with which budget."""
    content = json.dumps([job["kind"], job["set"], job["id"], job["language"], job["messages"], job["budget"],
                          job["max_chars"]], ensure_ascii=False, sort_keys=True)  # fmt: skip
    return hashlib.sha1(content.encode("utf-8")).hexdigest()
