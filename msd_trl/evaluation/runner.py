"""The evaluation: `evaluate` (jobs -> answers -> verdicts -> records -> a report) and `run_evaluation`, what
`msd-trl evaluate` runs (data, split, model and adapter loading, report files).

Each step is its own module with pure, separately tested functions: `jobs` (rows, budgets, conversations),
`answers` (resumable batched generation), `judges`, `scoring` (records and rates), `report` (files).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from ..decoding import check_thread_count, decode_threads
from ..presets import (
    DEFAULT_TEACHER_PRESET,
    QUERY_TEMPLATE,
    SAFETY_SYSTEM_PROMPT,
    TeacherContext,
    get_teacher_preset,
    validate_teacher_template,
)
from ..rendering import message_text
from .answers import answer_jobs
from .jobs import Selected, build_jobs, generation_budgets, language_budgets, select_set
from .judges import Judge, KeywordRefusalJudge, get_judge
from .phrases import REFUSAL_PHRASES
from .report import write_report
from .scoring import extract_number, rate_sections, score_records, summary

logger = logging.getLogger(__name__)

__all__ = ["evaluate", "extract_number", "language_budgets", "run_evaluation"]


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
    include_teacher: bool = True,
    partial_path: str | Path | None = None,
    progress: bool = True,
    benign_teacher_preset: str | None = None,
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
        include_teacher: ``False`` answers no teacher prompt (``teacher`` has ``n = 0``, rate ``None``);
            ``run_evaluation`` does so for an adapter, whose teacher is the base model, answered before the adapter
            is applied, and when asked (e.g. checkpoints of one run, whose teacher was measured once).
        model_name / adapter: recorded in the report; ``model_name`` defaults to ``model.name_or_path``.
        benign_teacher_preset: the teacher context of benign rows when training used one per row kind
            (``MSDConfig.benign_teacher_preset``): the teacher answers benign sets under that preset.

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
    teacher_context = None
    if benign_teacher_preset is not None:
        benign_preset = get_teacher_preset(benign_teacher_preset)
        teacher_context = TeacherContext(
            teacher_prompt_template,
            teacher_system_prompt or None,
            TeacherContext(benign_preset.template, benign_preset.system_prompt),
        )
    judge = get_judge(judge)
    harmful_set = select_set(harmful, "harmful", languages, limit, extra=("teacher_prompt",))
    languages = harmful_set[1]
    benign_sets: dict[str, Any] = {}
    if benign is not None:
        benign_sets = dict(benign) if isinstance(benign, Mapping) else {"benign": benign}
    selected_benign: dict[str, Selected] = {}
    for set_name, rows in benign_sets.items():
        wanted = benign_languages.get(set_name) if isinstance(benign_languages, Mapping) else benign_languages
        extra = [c for c in ("teacher_prompt", "answer") if c in rows.column_names]
        selected_benign[set_name] = select_set(rows, set_name, wanted, limit, extra=extra)
    budgets = generation_budgets(
        tokenizer, {"harmful": harmful_set, **selected_benign}, max_new_tokens=max_new_tokens,
        max_budget_tokens=max_budget_tokens, per_language=budget_per_language,
    )  # fmt: skip
    # All jobs go through one generate pass, so length grouping spans every kind.
    jobs = build_jobs(
        harmful_set, selected_benign, budgets, teacher_prompt_template=teacher_prompt_template,
        teacher_system_prompt=teacher_system_prompt, student_system_prompt=student_system_prompt,
        max_new_tokens=max_new_tokens, max_chars=max_chars, include_student=include_student,
        teacher_benign=teacher_benign, utility_max_new_tokens=utility_max_new_tokens, teacher_context=teacher_context,
        include_teacher=include_teacher,
    )  # fmt: skip
    responses = answer_jobs(
        model, tokenizer, jobs, batch_size=batch_size, do_sample=do_sample, temperature=temperature,
        progress=progress, partial_path=partial_path,
    )  # fmt: skip
    verdicts = judge([message_text(job["messages"]) for job in jobs], responses)
    records = score_records(jobs, responses, verdicts, answer_language=answer_language)
    utility_sets = [name for name, (columns, _, _) in selected_benign.items() if "answer" in columns]
    sections = rate_sections(
        records, languages, {name: chosen[1] for name, chosen in selected_benign.items()},
        answer_language=answer_language, utility_sets=utility_sets if utility_max_new_tokens is not None else (),
    )  # fmt: skip
    sets_report = sections["benign_sets"]
    report = {
        "model": model_name or getattr(model, "name_or_path", None) or type(model).__name__,
        "adapter": adapter,
        "judge": judge.name,
        "languages": sections["languages"],
        "benign": next(iter(sets_report.values()), {}),
        "benign_sets": sets_report,
        "teacher": sections["teacher"],
        "utility": sections["utility"],
        "summary": summary(sections),
        "settings": {
            "max_new_tokens": max_new_tokens,
            "budget_per_language": budget_per_language,
            "max_budget_tokens": max_budget_tokens,
            "max_chars": max_chars,
            "budgets": {f"{set_name}/{language}": value for (set_name, language), value in budgets.items()},
            "utility_max_new_tokens": utility_max_new_tokens,
            "include_student": include_student,
            "include_teacher": include_teacher,
            "batch_size": batch_size,
            "limit": limit,
            "do_sample": do_sample,
            "temperature": temperature if do_sample else None,
            "teacher_system_prompt": teacher_system_prompt,
            "teacher_prompt_template": teacher_prompt_template,
            "benign_teacher_preset": benign_teacher_preset,
            "student_system_prompt": student_system_prompt,
            "benign_sets": list(sets_report),
            "language_identifier": "py3langid 0.4.0 (echo removed)" if answer_language else None,
        },
    }
    return report, records


def _marked(rows, harmful: bool) -> list[str]:
    """Ids of `rows` whose `harmful` column says `harmful` (none without the column)."""
    if "harmful" not in rows.column_names:
        return []
    return sorted({str(i) for i, flag in zip(rows["id"], rows["harmful"]) if bool(flag) == harmful})


def _user_evaluation_data(harmful_dataset, benign_dataset, languages, *, split: str, test_size, seed):
    """The user's harmful (and benign) rows, split by id over each whole file exactly as training splits them.

    The `harmful` column is honoured: a harmful set holding rows marked benign is refused naming them, unless the
    benign set is the same file, which is then divided by its column (what `msd-trl train --eval_after` does for a
    file holding both kinds)."""
    from ..corpora import load_dataset_rows

    split_kwargs = dict(id_split=None if split == "all" else split, test_size=test_size, seed=seed)
    languages = None if languages is None else list(languages)  # None: every language the file holds
    same_file = benign_dataset is not None and str(benign_dataset) == str(harmful_dataset)
    harmful = load_dataset_rows(
        harmful_dataset, languages=languages, harmful=True, **split_kwargs,
        required={"teacher_prompt": "the English query, which the teacher ceiling needs (harmful set)"},
    )  # fmt: skip
    benign_ids = _marked(harmful, False)
    if benign_ids and not same_file:
        raise ValueError(
            f"harmful_dataset={str(harmful_dataset)!r} holds rows marked benign (harmful=false), ids {benign_ids[:10]}"
            f"{' ...' if len(benign_ids) > 10 else ''}: their refusals would count as safe. Pass the same file as "
            "--benign_dataset to evaluate them as benign, or remove them."
        )
    benign, benign_by_set = {}, {}
    if benign_dataset is not None:
        if same_file:
            rows = harmful.filter(lambda row: not row["harmful"])
            harmful = harmful.filter(lambda row: row["harmful"])
        else:
            rows = load_dataset_rows(benign_dataset, harmful=False, **split_kwargs)
            marked = _marked(rows, True)
            if marked:
                raise ValueError(
                    f"benign_dataset={str(benign_dataset)!r} holds rows marked harmful, ids {marked[:10]}: their "
                    "refusals would count as over-refusal. Move them to --harmful_dataset or fix their 'harmful' value."
                )
        benign["benign"] = rows
        benign_by_set["benign"] = list(dict.fromkeys(rows["language"])) if "language" in rows.column_names else []
    for name, rows in list(benign.items()):
        if len(rows) == 0:  # a small file whose held-out ids are all harmful
            logger.warning("benign set %s has no rows on the %r side of the split: over-refusal is not measured",
                           benign_dataset, split)  # fmt: skip
            del benign[name], benign_by_set[name]
    present = list(dict.fromkeys(harmful["language"])) if "language" in harmful.column_names else []
    missing = [code for code in languages or present if code not in present]
    if missing or not present:
        raise ValueError(
            f"harmful_dataset={str(harmful_dataset)!r} has no harmful rows for languages {missing or languages}; it "
            f"has {present}"
        )
    return harmful, benign, benign_by_set, languages or present


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
    languages: Sequence[str] | None = ("jv", "sw", "bn"),
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
    generation_threads: int | None = None,
    benign_teacher_preset: str | None = None,
    include_teacher: bool = True,
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
      columns, or filters long rows when they carry a ``language``; ``languages=None``: every language the file
      holds), split by id over each whole file as training splits it. The ``harmful`` column is honoured; without a
      ``benign_dataset`` the benign set is MultiQ in the languages it has (``multiq_languages``), said in the log.
    - ``teacher_preset="paper"``: the teacher's privileged context (``msd_trl.presets``);
      ``teacher_system_prompt`` / ``teacher_prompt_template`` override its parts; ``benign_teacher_preset`` is the
      benign rows' context of a run trained with one per row kind. Pass what the model was trained with.
    - ``output_dir="msd-eval"``; ``baseline_report``: a ``report.json`` path (or dict) of the model before training,
      for before/after tables and plots.
    - ``data_dir=None``: the data loaders' default source; otherwise a folder holding ``multijail/MultiJail.csv``
      and ``mgsm/mgsm_<lang>.tsv``.
    - ``adapter``: merged into the base weights for the evaluation (one merge, no training: the same model, faster
      decoding) unless the base is quantized, where it stays a separate layer.
    - ``generation_threads=None``: torch's thread count; on a small CPU ``1`` decodes faster (see
      ``MSDConfig.generation_threads``).

    Returns the report (also written to ``output_dir/report.json``).
    """
    from ..data import MULTIQ_LANGUAGES, load_mgsm, load_multijail, load_multiq, split_by_id, split_by_id_parity
    from ..models import EMBEDDED_MODEL, load_model, load_tokenizer

    if split not in ("test", "train", "all"):
        raise ValueError(f"split must be 'test', 'train' or 'all', got {split!r}")
    check_thread_count(generation_threads, "generation_threads")  # before any model is loaded
    _check_writable(Path(output_dir))  # before any model is loaded or any answer generated
    if languages is not None and not languages:
        raise ValueError(f"languages must name at least one language, got {languages!r}")
    if languages is None and harmful_dataset is None:
        languages = ("jv", "sw", "bn")
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

    data_dir = Path(data_dir) if data_dir is not None else None
    benign: dict[str, Any] = {}
    benign_by_set: dict[str, list[str]] = {}
    if harmful_dataset is not None:
        # The user's rows come split by id already (over each whole file, as training splits them).
        harmful, benign, benign_by_set, languages = _user_evaluation_data(
            harmful_dataset, benign_dataset, languages, split=split, test_size=test_size, seed=seed
        )
        benign_languages = []  # MGSM is MultiJail's companion, not a user's
        if benign_dataset is not None:
            multiq_languages = []  # the user's benign set replaces MultiQ
        else:
            # MultiQ stays the benign default (said in the report's settings), in the languages it has.
            requested = list(languages) if multiq_languages is None else list(multiq_languages)
            multiq_languages = [code for code in requested if code in MULTIQ_LANGUAGES]
            if len(multiq_languages) < len(requested):
                logger.warning(
                    "benign set: MultiQ (the default; pass benign_dataset for yours) has no questions in %s: "
                    "over-refusal is not measured there",
                    [code for code in requested if code not in MULTIQ_LANGUAGES],
                )
    else:
        harmful = load_multijail(data_dir / "multijail" if data_dir else None, languages=list(languages))
    if benign_languages:
        benign["mgsm"] = load_mgsm(data_dir / "mgsm" if data_dir else None, languages=list(benign_languages))
        benign_by_set["mgsm"] = list(benign_languages)
    multiq_languages = list(languages) if multiq_languages is None else list(multiq_languages)
    if multiq_languages:
        benign["multiq"] = load_multiq(data_dir / "multiq" if data_dir else None, languages=multiq_languages)
        benign_by_set["multiq"] = multiq_languages
    if split != "all":
        if harmful_dataset is None:
            harmful = split_by_id(harmful, test_size=test_size, seed=seed)[split]
        for name in [name for name in benign if name in ("mgsm", "multiq")]:
            splitter = split_by_id_parity if name == "multiq" else partial(split_by_id, test_size=test_size, seed=seed)
            benign[name] = splitter(benign[name])[split]

    unknown = sorted({*languages, *(benign_languages or []), *(multiq_languages or [])} - set(REFUSAL_PHRASES))
    if unknown and isinstance(judge, KeywordRefusalJudge):
        logger.warning(
            "the keyword judge has no refusal phrases for %s: refusals there are only seen in English (or another "
            "known language); pass a ClassifierJudge or KeywordRefusalJudge(extra_phrases=...) to cover them", unknown
        )  # fmt: skip
    tokenizer = load_tokenizer(model_name_or_path)
    model = load_model(model_name_or_path, dtype=dtype, load_in_4bit=load_in_4bit)
    common = dict(
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
        partial_path=Path(output_dir) / "responses.partial.jsonl",
        batch_size=batch_size,
        limit=limit,
        model_name=str(model_name_or_path) if model_name_or_path is not None else EMBEDDED_MODEL,
        adapter=str(adapter) if adapter is not None else None,
        progress=progress,
        benign_teacher_preset=benign_teacher_preset,
    )
    teacher_report = teacher_records = None
    if adapter is not None:
        from peft import PeftModel

        # MSD's teacher is the base model (under (Q)LoRA the adapter is disabled), so an adapter's report gives the
        # base model's answers under the teacher context: one teacher number for the base and the adapter runs,
        # answered before the adapter is applied.
        if include_teacher:
            with decode_threads(model, generation_threads):
                teacher_report, teacher_records = evaluate(model, tokenizer, include_student=False, **common)
        with warnings.catch_warnings():  # transformers' deprecation notice from inside PEFT, not about this run
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = PeftModel.from_pretrained(model, str(adapter))
        if not load_in_4bit:
            model = model.merge_and_unload()  # inference only: the adapter's extra products cost decode time

    with decode_threads(model, generation_threads):
        report, records = evaluate(
            model,
            tokenizer,
            include_student=include_student,
            include_teacher=include_teacher and adapter is None,
            **common,
        )
    if teacher_report is not None:
        report["teacher"] = teacher_report["teacher"]
        records = records + teacher_records
        report["summary"] = summary({key: report[key] for key in ("languages", "benign_sets", "teacher")})
    report["teacher"]["answered_by"] = (
        None
        if not include_teacher
        else "the base model, adapter not applied, under the teacher context"
        if adapter is not None
        else "the evaluated model under the teacher context"
    )
    report["settings"].update(
        split=split,
        test_size=test_size,
        seed=seed,
        data_dir=str(data_dir) if data_dir else None,
        teacher_preset=teacher_preset,
        multiq_split="odd ids (fixed)" if "multiq" in benign else None,
        adapter_merged=adapter is not None and not load_in_4bit,
        generation_threads=generation_threads,
    )
    paths = write_report(report, records, output_dir, baseline=baseline)
    (Path(output_dir) / "responses.partial.jsonl").unlink(missing_ok=True)  # responses.csv now holds every answer
    logger.info("evaluation written to %s", ", ".join(str(path) for path in paths.values()))
    return report
