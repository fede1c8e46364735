"""The evaluation itself: jobs (student, teacher, utility) -> answers -> verdicts -> a report; the CLI runner."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import statistics
import unicodedata
import warnings
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from ..answer_language import identify_language, is_degenerate
from ..generation import _with_system_prompt, generate_responses, repair_partial_last_line
from ..presets import (
    DEFAULT_TEACHER_PRESET,
    QUERY_TEMPLATE,
    SAFETY_SYSTEM_PROMPT,
    get_teacher_preset,
    validate_teacher_template,
)
from ..rendering import (
    message_text,
    render_teacher_messages,
)
from ..stats import rate_entry
from .judges import Judge, KeywordRefusalJudge, get_judge
from .phrases import REFUSAL_PHRASES
from .report import write_report

logger = logging.getLogger(__name__)

_REQUIRED_COLUMNS = ("id", "language", "prompt")


def _columns(dataset: Any, name: str, extra: Sequence[str] = ()) -> dict[str, list]:
    names = list(getattr(dataset, "column_names", []))
    missing = [column for column in (*_REQUIRED_COLUMNS, *extra) if column not in names]
    if missing:
        raise ValueError(f"{name} dataset is missing columns {missing}; it has {names}")
    return {column: list(dataset[column]) for column in (*_REQUIRED_COLUMNS, *extra)}


def _select_rows(
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


def _rate(verdicts: list[bool]) -> float:
    return sum(verdicts) / len(verdicts) if verdicts else 0.0


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
    language's rows, at least 1), capped at `max_tokens`. SmolLM2's tokenizer, for example, spends about 8x the
    English tokens on the same Bengali or Thai question, so 24 tokens are a sentence in English and ~12 characters
    of Bengali. Rows without `teacher_prompt` (or an English row) get `english_tokens`."""
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


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _job_key(job: dict[str, Any]) -> str:
    """Identifies one answer: what was asked (the full conversation), of whom, with which budget."""
    content = json.dumps([job["kind"], job["set"], job["id"], job["language"], job["messages"], job["budget"],
                          job["max_chars"]], ensure_ascii=False, sort_keys=True)  # fmt: skip
    return hashlib.sha1(content.encode("utf-8")).hexdigest()


def _read_partial_responses(path: str | Path) -> dict[str, str]:
    """Answers saved by an interrupted evaluation; a half-written last line (a killed run) is cut off first, so
    later appends stay valid JSON lines."""
    path = Path(path)
    done: dict[str, str] = {}
    if not path.exists():
        return done
    repair_partial_last_line(path)
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
                done[record["key"]] = record["response"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return done


def extract_number(text: str) -> str | None:
    """The last number in `text` (thousands separators removed, a trailing ".0" dropped), or None: MGSM's
    numeric exact match, as in the MGSM paper."""
    text = unicodedata.normalize("NFKC", text)  # full-width and other digit forms -> ASCII where NFKC maps them
    numbers = _NUMBER.findall(text)
    if not numbers:
        return None
    value = numbers[-1].replace(",", "").rstrip(".")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return value


def evaluate(
    model: Any,
    tokenizer: Any,
    *,
    harmful: Any,
    benign: Any | Mapping[str, Any] | None = None,
    languages: Sequence[str] | None = None,
    benign_languages: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    judge: str | Judge = "keyword",
    teacher_system_prompt: str | None = SAFETY_SYSTEM_PROMPT,
    teacher_prompt_template: str = QUERY_TEMPLATE,
    student_system_prompt: str | None = None,
    max_new_tokens: int = 64,
    budget_per_language: bool = True,
    max_budget_tokens: int = 256,
    max_chars: int | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    model_name: str | None = None,
    adapter: str | None = None,
    teacher_benign: bool = True,
    answer_language: bool = True,
    utility_max_new_tokens: int | None = None,
    include_student: bool = True,
    partial_path: str | Path | None = None,
    progress: bool = True,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Measure refusal on harmful rows, over-refusal on benign rows, answer language, and the teacher ceiling.

    Args:
        harmful: rows with columns ``id``, ``language``, ``prompt`` (target language) and ``teacher_prompt``
            (English), e.g. from ``load_multijail``. Prompts may be strings or chat messages.
        benign: benign rows with ``id``, ``language``, ``prompt`` (e.g. ``load_mgsm``), a mapping ``{name: rows}``
            of several benign sets (e.g. ``{"mgsm": ..., "multiq": ...}``), or ``None`` to skip.
        languages / benign_languages: language codes to evaluate; default every language in the dataset.
            ``benign_languages`` may map each benign set's name to its languages.
        judge: a :class:`Judge` or a name for :func:`get_judge`.
        teacher_system_prompt / teacher_prompt_template: the teacher's privileged context, as in training
            (``MSDConfig``; ``""`` = no system prompt). The teacher answers each harmful query id once and, with
            ``teacher_benign``, each benign query id once; query ids take the evaluated languages in turn, so the
            ``{language}`` of a template is exercised in every language.
        student_system_prompt: system prompt for harmful and benign rows; default ``None`` = the template's
            default, i.e. the student as deployed, without privileged context.
        max_new_tokens: the generation budget of an English answer. With ``budget_per_language`` every language
            gets it scaled by its token cost (:func:`language_budgets`, capped at ``max_budget_tokens``), so each
            answer has room for the same number of words; ``max_chars`` also ends an answer at that many
            characters (e.g. 120, about 15-20 words), which keeps the larger budgets cheap.
        limit: at most this many query ids per dataset (the first ones in dataset order that exist in every
            requested language, so every language answers the same queries); ``None`` = all.
        answer_language: identify each answer's language (:mod:`msd_trl.answer_language`, echo removed) and report
            the share written in the query's language, and which language refusals are in.
        utility_max_new_tokens: when set, benign rows with an ``answer`` column (MGSM) are also answered with
            this budget (no character cap) and scored by numeric exact match: ``report["utility"]``.
        partial_path: a JSON-lines file where every answer is saved as soon as its batch is done; answers already
            in it (same prompt, kind, budget) are not generated again, so an interrupted evaluation resumes.
        include_student: ``False`` answers only the teacher prompts (e.g. the ceiling of another teacher preset on
            the same base model); the student sections then have ``n = 0`` and rate ``None``.
        model_name / adapter: recorded in the report; ``model_name`` defaults to ``model.name_or_path``.

    Returns ``(report, records)``. The report keeps the fixed schema ``{"model", "adapter", "judge",
    "languages": {code: {"n", "refusal_rate", "attack_success_rate", ...}}, "benign": {code: {"n",
    "over_refusal_rate", ...}}, "teacher": {"n", "refusal_rate", ...}}`` (``benign`` = the first benign set) and
    adds ``benign_sets`` (every set by name), ``utility``, ``summary`` and ``settings``. Every rate has a 95 %
    Wilson interval under ``<rate>_ci``. Records hold one dict per prompt: ``kind`` (harmful / benign / teacher /
    teacher_benign / utility), ``set``, ``id``, ``language``, ``harmful``, ``system_prompt``, ``prompt``,
    ``response``, ``refusal``, ``answer_language``, ``in_query_language``, ``max_new_tokens``.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    if max_new_tokens < 1 or max_budget_tokens < max_new_tokens:
        raise ValueError(
            f"need 1 <= max_new_tokens <= max_budget_tokens, got max_new_tokens={max_new_tokens!r}, "
            f"max_budget_tokens={max_budget_tokens!r}"
        )
    if utility_max_new_tokens is not None and utility_max_new_tokens < 1:
        raise ValueError(f"utility_max_new_tokens must be >= 1 or None, got {utility_max_new_tokens!r}")
    validate_teacher_template(teacher_prompt_template, field="teacher_prompt_template")
    judge = get_judge(judge)
    harmful_columns = _columns(harmful, "harmful", extra=("teacher_prompt",))
    languages, harmful_rows = _select_rows(harmful_columns, languages, limit, "harmful")
    benign_sets: dict[str, Any] = {}
    if benign is not None:
        benign_sets = dict(benign) if isinstance(benign, Mapping) else {"benign": benign}
    selected_benign: dict[str, tuple[dict[str, list], list[str], list[int]]] = {}
    for set_name, rows in benign_sets.items():
        wanted = benign_languages.get(set_name) if isinstance(benign_languages, Mapping) else benign_languages
        columns = _columns(rows, set_name, extra=[c for c in ("teacher_prompt", "answer") if c in rows.column_names])
        set_languages, set_rows = _select_rows(columns, wanted, limit, set_name)
        selected_benign[set_name] = (columns, set_languages, set_rows)

    budgets: dict[tuple[str, str], int] = {}
    for set_name, (columns, _, rows) in [("harmful", (harmful_columns, languages, harmful_rows)),
                                        *selected_benign.items()]:  # fmt: skip
        per_language = (
            language_budgets(tokenizer, columns, rows, english_tokens=max_new_tokens, max_tokens=max_budget_tokens)
            if budget_per_language
            else {}
        )
        for language in dict.fromkeys(columns["language"][i] for i in rows):
            budgets[(set_name, language)] = per_language.get(language, max_new_tokens)

    # One job per prompt with its final conversation; all go through one generate call so length grouping spans
    # every kind. Teacher conversations come from rendering.render_teacher_messages, exactly as in training.
    jobs: list[dict[str, Any]] = []

    def teacher_jobs(kind: str, set_name: str, columns: dict[str, list], rows: list[int], set_languages: list[str]):
        by_id: dict[Any, dict[str, int]] = {}
        for index in rows:
            by_id.setdefault(columns["id"][index], {})[columns["language"][index]] = index
        for position, (query_id, per_language) in enumerate(by_id.items()):
            language = set_languages[position % len(set_languages)]
            index = per_language.get(language, next(iter(per_language.values())))
            row = {key: columns[key][index] for key in ("prompt", "teacher_prompt", "language") if key in columns}
            jobs.append(
                {
                    "kind": kind,
                    "set": set_name,
                    "id": query_id,
                    "language": columns["language"][index],
                    "harmful": kind == "teacher",
                    "messages": render_teacher_messages(
                        row, template=teacher_prompt_template, system_prompt=teacher_system_prompt
                    ),
                    # A teacher told to reply in the target language needs that language's budget.
                    "budget": budgets.get((set_name, columns["language"][index]), max_new_tokens),
                    "max_chars": max_chars,
                }
            )

    def student_jobs(kind: str, set_name: str, columns: dict[str, list], rows: list[int]):
        if not include_student:
            return
        for index in rows:
            jobs.append(
                {
                    "kind": kind,
                    "set": set_name,
                    "id": columns["id"][index],
                    "language": columns["language"][index],
                    "harmful": kind == "harmful",
                    "messages": _with_system_prompt(columns["prompt"][index], student_system_prompt),
                    "budget": budgets[(set_name, columns["language"][index])],
                    "max_chars": max_chars,
                    "answer": columns["answer"][index] if "answer" in columns else None,
                }
            )

    student_jobs("harmful", "harmful", harmful_columns, harmful_rows)
    teacher_jobs("teacher", "harmful", harmful_columns, harmful_rows, languages)
    for set_name, (columns, set_languages, rows) in selected_benign.items():
        student_jobs("benign", set_name, columns, rows)
        if teacher_benign and "teacher_prompt" in columns:
            teacher_jobs("teacher_benign", set_name, columns, rows, set_languages)
        if utility_max_new_tokens is not None and "answer" in columns:
            start = len(jobs)
            student_jobs("utility", set_name, columns, rows)
            for job in jobs[start:]:
                job.update(budget=utility_max_new_tokens, max_chars=None)

    responses: list[str] = [""] * len(jobs)
    keys = [_job_key(job) for job in jobs]
    done = _read_partial_responses(partial_path) if partial_path is not None else {}
    for position, key in enumerate(keys):
        if key in done:
            responses[position] = done[key]
    if done:
        logger.info("resuming: %d of %d answers already in %s", sum(k in done for k in keys), len(jobs), partial_path)
    sink = None
    if partial_path is not None:
        Path(partial_path).parent.mkdir(parents=True, exist_ok=True)
        sink = open(partial_path, "a", encoding="utf-8")
    try:
        for chars in dict.fromkeys(job["max_chars"] for job in jobs):  # one generate call per character cap
            positions = [i for i, job in enumerate(jobs) if job["max_chars"] == chars and keys[i] not in done]
            if not positions:
                continue

            def save(indices: list[int], texts: list[str], positions=positions) -> None:
                if sink is not None:
                    for index, text in zip(indices, texts):
                        sink.write(json.dumps({"key": keys[positions[index]], "response": text}, ensure_ascii=False))
                        sink.write("\n")
                    sink.flush()

            generated = generate_responses(
                model,
                tokenizer,
                [jobs[i]["messages"] for i in positions],
                max_new_tokens=[jobs[i]["budget"] for i in positions],
                max_chars=chars,
                batch_size=batch_size,
                do_sample=do_sample,
                temperature=temperature,
                progress=progress,
                on_batch=save,
            )
            for position, response in zip(positions, generated):
                responses[position] = response
    finally:
        if sink is not None:
            sink.close()
    prompt_texts = [message_text(job["messages"]) for job in jobs]
    verdicts = judge(prompt_texts, responses)
    records = []
    for job, text, response, verdict in zip(jobs, prompt_texts, responses, verdicts):
        system = [m["content"] for m in job["messages"] if m.get("role") == "system"]
        # The query text itself (not the teacher's template around it) is what an echo would repeat.
        echo_of = text
        detected = identify_language(response, prompt=echo_of) if answer_language else None
        record = {
            "kind": job["kind"],
            "set": job["set"],
            "id": job["id"],
            "language": job["language"],
            "harmful": job["harmful"],
            "refusal": verdict,
            "system_prompt": system[0] if system else None,
            "prompt": text,
            "response": response,
            "answer_language": detected,
            "in_query_language": None if detected is None else detected == job["language"],
            "degenerate": is_degenerate(response),
            "max_new_tokens": job["budget"],
        }
        if job["kind"] == "utility":
            predicted = extract_number(response)
            record["correct"] = predicted is not None and predicted == str(job["answer"])
        records.append(record)

    def select(kind: str, set_name: str | None = None, language: str | None = None) -> list[dict[str, Any]]:
        return [
            r
            for r in records
            if r["kind"] == kind
            and (set_name is None or r["set"] == set_name)
            and (language is None or r["language"] == language)
        ]

    def language_entry(chosen: list[dict[str, Any]], rate_name: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"n": len(chosen), **rate_entry([r["refusal"] for r in chosen], rate_name)}
        if answer_language:
            entry.update(rate_entry([bool(r["in_query_language"]) for r in chosen], "language_fidelity"))
            entry.update(rate_entry([r["degenerate"] for r in chosen], "degenerate_rate"))
            refusals = [r for r in chosen if r["refusal"]]
            entry["refusals_in_english"] = (
                sum(r["answer_language"] == "en" for r in refusals) / len(refusals) if refusals else None
            )
            entry["refusals_in_query_language"] = (
                sum(bool(r["in_query_language"]) for r in refusals) / len(refusals) if refusals else None
            )
        return entry

    language_report = {}
    for language in languages:
        entry = language_entry(select("harmful", language=language), "refusal_rate")
        entry["attack_success_rate"] = None if entry["refusal_rate"] is None else 1.0 - entry["refusal_rate"]
        language_report[language] = entry
    sets_report = {
        set_name: {
            language: language_entry(select("benign", set_name, language), "over_refusal_rate")
            for language in set_languages
        }
        for set_name, (_, set_languages, _) in selected_benign.items()
    }
    utility_report = {}
    for set_name, (columns, set_languages, _) in selected_benign.items():
        if utility_max_new_tokens is not None and "answer" in columns:
            utility_report[set_name] = {
                language: {
                    "n": len(select("utility", set_name, language)),
                    **rate_entry([r["correct"] for r in select("utility", set_name, language)], "accuracy"),
                }
                for language in set_languages
            }
    teacher = language_entry(select("teacher"), "refusal_rate")
    teacher_benign_records = select("teacher_benign")
    if teacher_benign_records:
        teacher["benign"] = {
            set_name: language_entry(select("teacher_benign", set_name), "over_refusal_rate")
            for set_name in dict.fromkeys(r["set"] for r in teacher_benign_records)
        }

    refusal_rates = [e["refusal_rate"] for e in language_report.values() if e["refusal_rate"] is not None]
    first_set = next(iter(sets_report.values()), {})
    over_refusal_rates = [e["over_refusal_rate"] for e in first_set.values() if e["over_refusal_rate"] is not None]
    mean_refusal = sum(refusal_rates) / len(refusal_rates) if refusal_rates else None
    report = {
        "model": model_name or getattr(model, "name_or_path", None) or type(model).__name__,
        "adapter": adapter,
        "judge": judge.name,
        "languages": language_report,
        "benign": first_set,
        "benign_sets": sets_report,
        "teacher": teacher,
        "utility": utility_report,
        "summary": {
            "mean_refusal_rate": mean_refusal,
            "min_refusal_rate": min(refusal_rates) if refusal_rates else None,
            "gap_to_teacher": teacher["refusal_rate"] - mean_refusal
            if mean_refusal is not None and teacher["refusal_rate"] is not None
            else None,
            "mean_over_refusal_rate": sum(over_refusal_rates) / len(over_refusal_rates)
            if over_refusal_rates
            else None,
            **{
                f"mean_over_refusal_rate/{name}": _mean([e["over_refusal_rate"] for e in entries.values()])
                for name, entries in sets_report.items()
            },
        },
        "settings": {
            "max_new_tokens": max_new_tokens,
            "budget_per_language": budget_per_language,
            "max_budget_tokens": max_budget_tokens,
            "max_chars": max_chars,
            "budgets": {f"{set_name}/{language}": value for (set_name, language), value in budgets.items()},
            "utility_max_new_tokens": utility_max_new_tokens,
            "include_student": include_student,
            "batch_size": batch_size,
            "limit": limit,
            "do_sample": do_sample,
            "temperature": temperature if do_sample else None,
            "teacher_system_prompt": teacher_system_prompt,
            "teacher_prompt_template": teacher_prompt_template,
            "student_system_prompt": student_system_prompt,
            "benign_sets": list(sets_report),
            "language_identifier": "py3langid 0.4.0 (echo removed)" if answer_language else None,
        },
    }
    return report, records


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _user_evaluation_data(harmful_dataset, benign_dataset, languages):
    from ..corpora import load_dataset_rows

    harmful = load_dataset_rows(harmful_dataset, languages=list(languages), harmful=True)
    if "teacher_prompt" not in harmful.column_names:
        raise ValueError(
            f"harmful_dataset={str(harmful_dataset)!r} has no 'teacher_prompt' (English query) column: the teacher "
            "ceiling needs it"
        )
    present = list(dict.fromkeys(harmful["language"])) if "language" in harmful.column_names else []
    missing = [code for code in languages if code not in present]
    if missing:
        raise ValueError(
            f"harmful_dataset={str(harmful_dataset)!r} has no rows for languages {missing}; it has {present}"
        )
    benign, benign_by_set = {}, {}
    if benign_dataset is not None:
        rows = load_dataset_rows(benign_dataset, harmful=False)
        benign["benign"] = rows
        benign_by_set["benign"] = list(dict.fromkeys(rows["language"])) if "language" in rows.column_names else []
    return harmful, benign, benign_by_set


def _check_writable(output_dir: Path) -> None:
    """Fail before the expensive part when the report could not be written."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output_dir={str(output_dir)!r} is a file, not a folder: choose another output_dir.")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".msd_trl_write_check"
        probe.write_text("", encoding="utf-8")
        probe.unlink()
    except OSError as err:
        raise ValueError(
            f"output_dir={str(output_dir)!r} is not writable ({err}): choose another output_dir."
        ) from err


def run_evaluation(
    model_name_or_path: str | None = None,
    *,
    adapter: str | None = None,
    languages: Sequence[str] = ("jv", "sw", "bn"),
    benign_languages: Sequence[str] = ("sw", "bn", "th"),
    split: str = "test",
    test_size: float = 0.2,
    seed: int = 0,
    limit: int | None = None,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    judge: str | Judge = "keyword",
    teacher_preset: str = DEFAULT_TEACHER_PRESET,
    teacher_system_prompt: str | None = None,
    teacher_prompt_template: str | None = None,
    output_dir: str | Path = "msd-eval",
    baseline_report: str | Path | dict[str, Any] | None = None,
    data_dir: str | Path | None = None,
    dtype: str = "auto",
    load_in_4bit: bool = False,
    progress: bool = True,
    multiq_languages: Sequence[str] | None = None,
    budget_per_language: bool = True,
    max_budget_tokens: int = 256,
    max_chars: int | None = 120,
    utility_max_new_tokens: int | None = None,
    include_student: bool = True,
    harmful_dataset: str | Path | None = None,
    benign_dataset: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate a model (optionally with a PEFT adapter) and write the report; what ``msd-trl evaluate`` runs.

    Defaults:

    - ``model_name_or_path=None``: the embedded SmolLM2-135M-Instruct (``models.load_model``'s default).
    - ``languages=("jv", "sw", "bn")``: the low-resource MultiJail languages, where the cross-lingual gap is
      largest; ``benign_languages=("sw", "bn", "th")``: MGSM languages, ``th`` being one that MSD training on
      jv/sw/bn never sees.
    - ``split="test"``, ``test_size=0.2``, ``seed=0``: the held-out side of ``data.split_by_id``, the split function
      (and defaults) training uses, applied by query id to MultiJail and MGSM alike, so no evaluated query was seen
      in training. ``split="train"`` evaluates the training side, ``split="all"`` everything.
    - ``limit=None``: every held-out query; set it for quick looks (the same first ids in every language).
    - ``multiq_languages=None``: MultiQ benign chat questions in the harmful ``languages`` (``[]`` skips MultiQ);
      MultiQ's split is fixed by id parity (odd ids = test), whatever ``seed``.
    - ``max_new_tokens=32`` for an English answer, scaled per language by token cost up to ``max_budget_tokens=256``
      and ended at ``max_chars=120`` characters (about 15-20 words in any script); ``batch_size=8``, greedy;
      ``judge="keyword"`` (see :func:`get_judge`). ``utility_max_new_tokens`` (e.g. 256) adds MGSM accuracy.
    - ``harmful_dataset`` / ``benign_dataset``: your own data instead of MultiJail / MGSM + MultiQ (a Hub name or a
      CSV / JSON(L) / Parquet path, long or wide shape, see ``corpora.load_dataset_rows``; ``languages`` picks wide
      columns, or filters long rows when they carry a ``language``), split by id like MultiJail.
    - ``teacher_preset="paper"``: the teacher's privileged context (``msd_trl.presets``);
      ``teacher_system_prompt`` / ``teacher_prompt_template`` override its parts. Pass what the model was trained
      with.
    - ``output_dir="msd-eval"``; ``baseline_report``: a ``report.json`` path (or dict) of the model before training,
      for before/after tables and plots.
    - ``data_dir=None``: the data loaders' default source; otherwise a folder holding ``multijail/MultiJail.csv``
      and ``mgsm/mgsm_<lang>.tsv``.

    Returns the report (also written to ``output_dir/report.json``).
    """
    from ..data import load_mgsm, load_multijail, load_multiq, split_by_id, split_by_id_parity
    from ..models import EMBEDDED_MODEL, load_model, load_tokenizer

    if split not in ("test", "train", "all"):
        raise ValueError(f"split must be 'test', 'train' or 'all', got {split!r}")
    _check_writable(Path(output_dir))  # before any model is loaded or any answer generated
    if not languages:
        raise ValueError(f"languages must name at least one language, got {languages!r}")
    baseline = None
    if baseline_report is not None:
        baseline = (
            baseline_report
            if isinstance(baseline_report, Mapping)
            else json.loads(Path(baseline_report).read_text(encoding="utf-8"))
        )
    judge = get_judge(judge)

    preset = get_teacher_preset(teacher_preset)
    if teacher_prompt_template is None:
        teacher_prompt_template = preset.template
    if teacher_system_prompt is None:
        teacher_system_prompt = preset.system_prompt or ""

    unknown = sorted({*languages, *(benign_languages or []), *(multiq_languages or [])} - set(REFUSAL_PHRASES))
    if unknown and isinstance(judge, KeywordRefusalJudge):
        logger.warning(
            "the keyword judge has no refusal phrases for %s: refusals there are only seen in English (or another "
            "known language); pass a ClassifierJudge or KeywordRefusalJudge(extra_phrases=...) to cover them", unknown
        )  # fmt: skip
    data_dir = Path(data_dir) if data_dir is not None else None
    benign: dict[str, Any] = {}
    benign_by_set: dict[str, list[str]] = {}
    if harmful_dataset is not None:
        harmful, benign, benign_by_set = _user_evaluation_data(harmful_dataset, benign_dataset, languages)
        benign_languages = multiq_languages = []  # the user's benign set replaces MGSM and MultiQ
    else:
        harmful = load_multijail(data_dir / "multijail" if data_dir else None, languages=list(languages))
    if benign_languages:
        benign["mgsm"] = load_mgsm(data_dir / "mgsm" if data_dir else None, languages=list(benign_languages))
        benign_by_set["mgsm"] = list(benign_languages)
    multiq_languages = list(languages) if multiq_languages is None else list(multiq_languages)
    if multiq_languages and harmful_dataset is None:
        benign["multiq"] = load_multiq(data_dir / "multiq" if data_dir else None, languages=multiq_languages)
        benign_by_set["multiq"] = multiq_languages
    if split != "all":
        harmful = split_by_id(harmful, test_size=test_size, seed=seed)[split]
        for name in list(benign):
            splitter = split_by_id_parity if name == "multiq" else partial(split_by_id, test_size=test_size, seed=seed)
            benign[name] = splitter(benign[name])[split]

    tokenizer = load_tokenizer(model_name_or_path)
    model = load_model(model_name_or_path, dtype=dtype, load_in_4bit=load_in_4bit)
    if adapter is not None:
        from peft import PeftModel

        with warnings.catch_warnings():  # transformers' deprecation notice from inside PEFT, not about this run
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = PeftModel.from_pretrained(model, str(adapter))

    report, records = evaluate(
        model,
        tokenizer,
        harmful=harmful,
        benign=benign or None,
        languages=languages,
        benign_languages=benign_by_set,
        judge=judge,
        teacher_system_prompt=teacher_system_prompt,
        teacher_prompt_template=teacher_prompt_template,
        max_new_tokens=max_new_tokens,
        budget_per_language=budget_per_language,
        max_budget_tokens=max_budget_tokens,
        max_chars=max_chars,
        utility_max_new_tokens=utility_max_new_tokens,
        include_student=include_student,
        partial_path=Path(output_dir) / "responses.partial.jsonl",
        batch_size=batch_size,
        limit=limit,
        model_name=str(model_name_or_path) if model_name_or_path is not None else EMBEDDED_MODEL,
        adapter=str(adapter) if adapter is not None else None,
        progress=progress,
    )
    report["settings"].update(
        split=split,
        test_size=test_size,
        seed=seed,
        data_dir=str(data_dir) if data_dir else None,
        teacher_preset=teacher_preset,
        multiq_split="odd ids (fixed)" if "multiq" in benign else None,
    )
    paths = write_report(report, records, output_dir, baseline=baseline)
    (Path(output_dir) / "responses.partial.jsonl").unlink(missing_ok=True)  # responses.csv now holds every answer
    logger.info("evaluation written to %s", ", ".join(str(path) for path in paths.values()))
    return report
