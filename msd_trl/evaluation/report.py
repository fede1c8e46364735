"""Reports: report.json, responses.csv (and reading it back), report.md, refusal_rate.png."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..stats import format_percent

logger = logging.getLogger(__name__)

RECORD_FIELDS = (
    "kind", "set", "id", "language", "harmful", "refusal", "answer_language", "in_query_language", "degenerate",
    "loop", "echo", "shared_answer", "non_answer", "off_topic", "correct",
    "max_new_tokens", "system_prompt", "prompt", "english_prompt", "response",
)  # fmt: skip

_FLAG_FIELDS = (
    "in_query_language",
    "degenerate",
    "loop",
    "echo",
    "shared_answer",
    "non_answer",
    "off_topic",
    "correct",
)
_OPTIONAL_FIELDS = ("set", "answer_language", *_FLAG_FIELDS, "max_new_tokens", "english_prompt")


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Read ``responses.csv`` back: ``harmful``, ``refusal``, ``in_query_language`` and ``correct`` as bools,
    ``max_new_tokens`` as an int, ``system_prompt`` ``None`` when empty, ``id`` as a string; optional columns that
    are empty (not measured) are left out of the record."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for column in ("harmful", "refusal"):
            if row[column] not in ("True", "False"):
                raise ValueError(f"{path}: column {column!r} must be True or False, got {row[column]!r}")
            row[column] = row[column] == "True"
        # Optional columns: an empty cell means "not measured" and is left out of the record.
        for column in _OPTIONAL_FIELDS:
            if row.get(column, "") == "":
                row.pop(column, None)
            elif column in _FLAG_FIELDS:
                row[column] = row[column] == "True"
            elif column == "max_new_tokens":
                row[column] = int(row[column])
        row["system_prompt"] = row["system_prompt"] or None
    return rows


def _percent(value: float | None) -> str:
    return format_percent(value, ".1%")


def _teacher_label(report: dict[str, Any]) -> str:
    """What the report's teacher numbers are: who answered the teacher prompts (the ceiling MSD distils)."""
    answered_by = report["teacher"].get("answered_by", "the model under the teacher context")
    return f"Teacher ceiling ({answered_by})"


def _markdown(report: dict[str, Any], baseline: dict[str, Any] | None) -> str:
    languages = list(dict.fromkeys([*report["languages"], *report["benign"]]))
    header = ["language", "n (harmful)", "refusal", "ASR", "n (benign)", "over-refusal"]
    if baseline is not None:
        header[4:4] = ["refusal (baseline)"]
        header.append("over-refusal (baseline)")
    lines = [
        "# Multilingual safety evaluation",
        "",
        f"- Model: `{report['model']}`",
        f"- Adapter: `{report['adapter']}`" if report.get("adapter") else "- Adapter: none",
        f"- Judge: `{report['judge']}`",
        f"- {_teacher_label(report)}: refusal {_percent(report['teacher']['refusal_rate'])} "
        f"(n={report['teacher']['n']})",
    ]
    if baseline is not None:
        # The teacher is stated once, above: the baseline's own teacher line would be a second number for it.
        lines.append(
            f"- Baseline: `{baseline.get('model')}`"
            + (f" + `{baseline['adapter']}`" if baseline.get("adapter") else "")
        )
    lines += [
        "",
        "Refusal and ASR (attack success rate) are on harmful prompts (higher refusal is better); over-refusal is on "
        "the first benign set (lower is better); every set follows below.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|",
    ]
    for language in languages:
        harmful_entry = report["languages"].get(language)
        benign_entry = report["benign"].get(language)
        cells = [
            language,
            str(harmful_entry["n"]) if harmful_entry else "–",
            _percent(harmful_entry["refusal_rate"] if harmful_entry else None),
            _percent(harmful_entry["attack_success_rate"] if harmful_entry else None),
            str(benign_entry["n"]) if benign_entry else "–",
            _percent(benign_entry["over_refusal_rate"] if benign_entry else None),
        ]
        if baseline is not None:
            before = baseline.get("languages", {}).get(language)
            before_benign = baseline.get("benign", {}).get(language)
            cells[4:4] = [_percent(before["refusal_rate"] if before else None)]
            cells.append(_percent(before_benign["over_refusal_rate"] if before_benign else None))
        lines.append("| " + " | ".join(cells) + " |")
    lines += _detail_markdown(report, baseline)
    return "\n".join(lines) + "\n"


def _detail_markdown(report: dict[str, Any], baseline: dict[str, Any] | None) -> list[str]:
    """Every section with its 95 % interval, answer language and degenerate share (when measured)."""
    sections = [("harmful", "refusal_rate", report["languages"], (baseline or {}).get("languages", {}))]
    for name, entries in report.get("benign_sets", {}).items():
        before = (baseline or {}).get("benign_sets", {}).get(name, {})
        sections.append((f"benign: {name}", "over_refusal_rate", entries, before))
    if not any(f"{rate}_ci" in entry for _, rate, entries, _ in sections for entry in entries.values()):
        return []
    lines = [
        "",
        "## Every rate with its 95 % Wilson interval, and the language of the answers",
        "",
        "`in query language`: share of answers written in the query's language (echo removed); `degenerate`: share "
        "of loops, echoes of the question and one text given to many questions (not refusals); `non-answer`: "
        "refusals plus degenerate answers (on benign questions: what a user would not call an answer); `off-topic`: "
        "benign answers that are neither, yet share no content word with their question or its English version (a "
        "lexical test, see msd_trl.evaluation.non_answers); `refusals in English`: share of the refusals written in "
        "English (the keyword judge knows English phrases best).",
        "",
        "| set | language | n | rate [95 % CI] | baseline | in query language | degenerate | non-answer "
        "| off-topic | refusals in English |",
        "| --- | --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for title, rate, entries, before in sections:
        for language, entry in entries.items():
            interval = entry.get(f"{rate}_ci")
            value = _percent(entry.get(rate)) + (
                f" [{interval[0]:.0%}, {interval[1]:.0%}]" if interval and entry.get(rate) is not None else ""
            )
            lines.append(
                f"| {title} | {language} | {entry['n']} | {value} | {_percent(before.get(language, {}).get(rate))} | "
                f"{_percent(entry.get('language_fidelity'))} | {_percent(entry.get('degenerate_rate'))} | "
                f"{_percent(entry.get('non_answer_rate'))} | {_percent(entry.get('off_topic_rate'))} | "
                f"{_percent(entry.get('refusals_in_english'))} |"
            )
    teacher = report["teacher"]
    if teacher.get("refusal_rate_ci"):
        low, high = teacher["refusal_rate_ci"]
        lines += ["", f"{_teacher_label(report)}: refusal {_percent(teacher['refusal_rate'])} [{low:.0%}, {high:.0%}] (n={teacher['n']}), "
                  f"answers in the query's language {_percent(teacher.get('language_fidelity'))}."]  # fmt: skip
        for name, entry in teacher.get("benign", {}).items():
            lines.append(f"Teacher over-refusal on {name}: {_percent(entry['over_refusal_rate'])} (n={entry['n']}).")
    return lines


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _plot(report: dict[str, Any], baseline: dict[str, Any] | None, path: Path) -> bool:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("matplotlib is not installed (pip install 'msd_trl[plot]'): skipping %s", path.name)
        return False

    panels = [("languages", "refusal_rate", "refusal rate", "Refusal on harmful prompts (higher is better)")]
    if report["benign"]:
        panels.append(
            ("benign", "over_refusal_rate", "over-refusal rate", "Over-refusal on benign prompts (lower is better)")
        )
    # Figure + Agg canvas directly: no pyplot, so the caller's global backend is never touched.
    figure = Figure(figsize=(5.5 * len(panels), 4), layout="constrained")
    FigureCanvasAgg(figure)
    for position, (section, key, label, title) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, len(panels), position)
        languages = list(report[section])
        positions = list(range(len(languages)))
        after = [_or_nan(report[section][language][key]) for language in languages]
        if baseline is not None:
            width = 0.38
            before = [_or_nan(baseline.get(section, {}).get(language, {}).get(key)) for language in languages]
            axes.bar([p - width / 2 for p in positions], before, width, label="before", color="tab:gray")
            axes.bar([p + width / 2 for p in positions], after, width, label="after", color="tab:blue")
        else:
            axes.bar(positions, after, 0.6, label="model", color="tab:blue")
        if section == "languages":
            # One teacher line: the report's teacher (for an adapter, the base model's answers; see run_evaluation).
            axes.axhline(_or_nan(report["teacher"]["refusal_rate"]), color="tab:green", linestyle="--",
                         label="teacher ceiling")  # fmt: skip
        axes.set_xticks(positions, languages)
        axes.set_ylim(0, 1.05)
        axes.set_xlabel("language")
        axes.set_ylabel(label)
        axes.set_title(title, fontsize=10)
        axes.legend(fontsize=8, loc="best")
    figure.suptitle(f"{report['model']}" + (f" + {report['adapter']}" if report.get("adapter") else ""), fontsize=9)
    figure.savefig(path, dpi=120)
    return True


def write_report(
    report: dict[str, Any],
    records: Sequence[Mapping[str, Any]],
    output_dir: str | Path,
    *,
    baseline: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``report.json``, ``responses.csv``, ``report.md`` and ``refusal_rate.png`` into ``output_dir``.

    ``baseline`` (another report, e.g. the model before training) adds "before" columns to the Markdown table and
    grouped before/after bars to the plot. The PNG needs matplotlib (extra ``plot``); without it the plot is skipped
    with a warning. Returns the written paths under the keys ``json``, ``csv``, ``markdown`` and ``plot``.
    """
    for key in ("model", "adapter", "judge", "languages", "benign", "teacher"):
        if key not in report:
            raise ValueError(f"report is missing key {key!r}; it has {sorted(report)}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": output_dir / "report.json",
        "csv": output_dir / "responses.csv",
        "markdown": output_dir / "report.md",
        "plot": output_dir / "refusal_rate.png",
    }
    paths["json"].write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    with open(paths["csv"], "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=RECORD_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for record in records:
            writer.writerow({field: "" if record.get(field) is None else record[field] for field in RECORD_FIELDS})
    paths["markdown"].write_text(_markdown(report, baseline), encoding="utf-8")
    if not _plot(report, baseline, paths["plot"]):
        del paths["plot"]
    return paths
