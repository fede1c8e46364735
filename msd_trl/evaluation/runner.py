"""The evaluation: `evaluate` (jobs -> answers -> verdicts -> records -> a report) and `run_evaluation`, what
`msd-trl evaluate` runs (data from the corpus registry or the user's files, each split by its own rule; model and
adapter loading; report files). Every setting comes from one `EvaluationArguments`.

Each step is its own module with pure, separately tested functions: `jobs` (rows, budgets, conversations),
`answers` (resumable batched generation), `judges`, `scoring` (records and rates), `report` (files).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..corpora import get_corpus
from ..decoding import decode_threads
from ..rendering import message_text
from .answers import answer_jobs
from .arguments import EvaluationArguments
from .jobs import Selected, build_jobs, generation_budgets, language_budgets, select_set
from .judges import KeywordRefusalJudge, get_judge
from .phrases import REFUSAL_PHRASES
from .report import write_report
from .scoring import extract_number, rate_sections, score_records, summary

logger = logging.getLogger(__name__)

__all__ = ["evaluate", "extract_number", "language_budgets", "run_evaluation"]


def _arguments(args: EvaluationArguments | None, settings: Mapping[str, Any], caller: str) -> EvaluationArguments:
    """`args` with `settings` (keyword arguments named after its fields) applied; unknown names are refused."""
    names = {item.name for item in dataclasses.fields(EvaluationArguments)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise ValueError(f"{caller}() got unknown settings {unknown}; EvaluationArguments fields are {sorted(names)}")
    if args is None:
        return EvaluationArguments(**settings)
    if not isinstance(args, EvaluationArguments):
        raise ValueError(f"{caller}(args=...) expects EvaluationArguments, got {type(args).__name__}")
    return dataclasses.replace(args, **settings) if settings else args


def evaluate(
    model: Any,
    tokenizer: Any,
    *,
    harmful: Any,
    benign: Any | Mapping[str, Any] | None = None,
    languages: Sequence[str] | None = None,
    benign_languages: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    args: EvaluationArguments | None = None,
    partial_path: str | Path | None = None,
    model_name: str | None = None,
    **settings: Any,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Measure refusal on harmful rows, over-refusal on benign rows, answer language, and the teacher ceiling.

    Args:
        harmful: rows with columns ``id``, ``language``, ``prompt`` (target language) and ``teacher_prompt``
            (English), e.g. from ``load_multijail``. Prompts may be strings or chat messages.
        benign: benign rows with ``id``, ``language``, ``prompt`` (e.g. ``load_mgsm``), a mapping ``{name: rows}``
            of several benign sets (e.g. ``{"mgsm": ..., "multiq": ...}``), or ``None`` to skip.
        languages / benign_languages: language codes to evaluate; default ``args.languages``, else every language
            in the rows. ``benign_languages`` may map each benign set's name to its languages.
        args: the settings (:class:`EvaluationArguments`; its data fields are ``run_evaluation``'s business);
            ``settings`` are keyword arguments named after its fields that override it.
        partial_path: a JSON-lines file where every answer is saved as soon as its batch is done; answers already
            in it (same prompt, kind, budget) are not generated again, so an interrupted evaluation resumes.
        model_name: recorded in the report; default ``args.model_name_or_path``, else ``model.name_or_path``.

    The teacher answers each harmful query id once and, with ``teacher_benign``, each benign query id once; query
    ids take the evaluated languages in turn, so the ``{language}`` of a template is exercised in every language.
    With ``budget_per_language`` every language's budget is ``max_new_tokens`` scaled by its token cost
    (:func:`language_budgets`).

    Returns ``(report, records)``. The report keeps the fixed schema ``{"model", "adapter", "judge",
    "languages": {code: {"n", "refusal_rate", "attack_success_rate", ...}}, "benign": {code: {"n",
    "over_refusal_rate", ...}}, "teacher": {"n", "refusal_rate", ...}}`` (``benign`` = the first benign set) and
    adds ``benign_sets`` (every set by name), ``utility``, ``summary`` and ``settings``. Every rate has a 95 %
    Wilson interval under ``<rate>_ci``. Records hold one dict per prompt: ``kind`` (harmful / benign / teacher /
    teacher_benign / utility), ``set``, ``id``, ``language``, ``harmful``, ``system_prompt``, ``prompt``,
    ``response``, ``refusal``, ``answer_language``, ``in_query_language``, ``max_new_tokens``.
    """
    args = _arguments(args, settings, "evaluate")
    context = args.teacher_context
    judge = get_judge(args.judge)
    languages = args.languages if languages is None else languages
    harmful_set = select_set(harmful, "harmful", languages, args.limit, extra=("teacher_prompt",))
    languages = harmful_set[1]
    benign_sets: dict[str, Any] = {}
    if benign is not None:
        benign_sets = dict(benign) if isinstance(benign, Mapping) else {"benign": benign}
    selected_benign: dict[str, Selected] = {}
    for set_name, rows in benign_sets.items():
        wanted = benign_languages.get(set_name) if isinstance(benign_languages, Mapping) else benign_languages
        extra = [c for c in ("teacher_prompt", "answer") if c in rows.column_names]
        selected_benign[set_name] = select_set(rows, set_name, wanted, args.limit, extra=extra)
    budgets = generation_budgets(
        tokenizer, {"harmful": harmful_set, **selected_benign}, max_new_tokens=args.max_new_tokens,
        max_budget_tokens=args.max_budget_tokens, per_language=args.budget_per_language,
    )  # fmt: skip
    # All jobs go through one generate pass, so length grouping spans every kind.
    jobs = build_jobs(
        harmful_set, selected_benign, budgets, teacher_prompt_template=context.template,
        teacher_system_prompt=context.system_prompt, teacher_context=context,
        student_system_prompt=args.student_system_prompt, max_new_tokens=args.max_new_tokens,
        max_chars=args.max_chars, include_student=args.include_student, teacher_benign=args.teacher_benign,
        utility_max_new_tokens=args.utility_max_new_tokens, include_teacher=args.include_teacher,
    )  # fmt: skip
    responses = answer_jobs(
        model, tokenizer, jobs, batch_size=args.batch_size, do_sample=args.do_sample, temperature=args.temperature,
        progress=args.progress, partial_path=partial_path,
    )  # fmt: skip
    verdicts = judge([message_text(job["messages"]) for job in jobs], responses)
    records = score_records(jobs, responses, verdicts, answer_language=args.answer_language)
    utility_sets = [name for name, (columns, _, _) in selected_benign.items() if "answer" in columns]
    sections = rate_sections(
        records, languages, {name: chosen[1] for name, chosen in selected_benign.items()},
        answer_language=args.answer_language,
        utility_sets=utility_sets if args.utility_max_new_tokens is not None else (),
    )  # fmt: skip
    sets_report = sections["benign_sets"]
    model_name = model_name or args.model_name_or_path
    report = {
        "model": model_name or getattr(model, "name_or_path", None) or type(model).__name__,
        "adapter": args.adapter,
        "judge": judge.name,
        "languages": sections["languages"],
        "benign": next(iter(sets_report.values()), {}),
        "benign_sets": sets_report,
        "teacher": sections["teacher"],
        "utility": sections["utility"],
        "summary": summary(sections),
        "settings": {
            "max_new_tokens": args.max_new_tokens,
            "budget_per_language": args.budget_per_language,
            "max_budget_tokens": args.max_budget_tokens,
            "max_chars": args.max_chars,
            "budgets": {f"{set_name}/{language}": value for (set_name, language), value in budgets.items()},
            "utility_max_new_tokens": args.utility_max_new_tokens,
            "include_student": args.include_student,
            "include_teacher": args.include_teacher,
            "batch_size": args.batch_size,
            "limit": args.limit,
            "do_sample": args.do_sample,
            "temperature": args.temperature if args.do_sample else None,
            "teacher_system_prompt": context.system_prompt or "",
            "teacher_prompt_template": context.template,
            "benign_teacher_preset": args.benign_teacher_preset,
            "student_system_prompt": args.student_system_prompt,
            "benign_sets": list(sets_report),
            "language_identifier": "py3langid 0.4.0 (echo removed)" if args.answer_language else None,
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


def _corpus_rows(name: str, languages: list[str], args: EvaluationArguments):
    """A registered corpus's rows in `languages`, from `args.data_dir`, on the `args.split` side of its own split rule
    (`Corpus.split_rows`: by id with the run's test size and seed, MultiQ by id parity)."""
    corpus = get_corpus(name)
    rows = corpus.read(languages, data_dir=args.data_dir)
    if args.split == "all":
        return rows
    return corpus.split_rows(rows, test_size=args.test_size, seed=args.seed)[args.split]


def _corpus_evaluation_data(args: EvaluationArguments):
    """The harmful corpus in `args.languages` (default: its default languages) and the benign corpora
    (`EvaluationArguments.corpus_languages`)."""
    languages = list(args.languages or get_corpus(args.harmful_corpus).default_languages)
    benign_by_set = args.corpus_languages(languages)
    benign = {name: _corpus_rows(name, codes, args) for name, codes in benign_by_set.items()}
    return _corpus_rows(args.harmful_corpus, languages, args), benign, benign_by_set, languages


def _user_data_with_corpora(args: EvaluationArguments):
    """The user's harmful file (and benign file, else the benign corpora: MultiQ in the languages it has)."""
    harmful, benign, benign_by_set, languages = _user_evaluation_data(
        args.harmful_dataset, args.benign_dataset, args.languages, split=args.split, test_size=args.test_size,
        seed=args.seed,
    )  # fmt: skip
    if args.benign_dataset is None:
        if args.benign_corpora is None:
            # MultiQ stays the benign default (said in the report's settings), in the languages it has; MGSM is
            # MultiJail's companion, not a user's.
            requested = list(languages) if args.multiq_languages is None else list(args.multiq_languages)
            held = get_corpus("multiq").default_languages
            wanted = {"multiq": [code for code in requested if code in held]}
            if len(wanted["multiq"]) < len(requested):
                logger.warning(
                    "benign set: MultiQ (the default; pass benign_dataset for yours) has no questions in %s: "
                    "over-refusal is not measured there",
                    [code for code in requested if code not in held],
                )
        else:
            wanted = args.corpus_languages(languages)
        for name, codes in wanted.items():
            if codes:
                benign[name], benign_by_set[name] = _corpus_rows(name, codes, args), codes
    return harmful, benign, benign_by_set, languages


def run_evaluation(args: EvaluationArguments | str | None = None, **settings: Any) -> dict[str, Any]:
    """Evaluate a model (optionally with a PEFT adapter) and write the report; what ``msd-trl evaluate`` runs.

    ``args`` is an :class:`EvaluationArguments` (every setting and its default are documented there once);
    ``settings`` are keyword arguments named after its fields, applied on top (``run_evaluation(model_name_or_path,
    adapter=..., limit=20)`` also works: a string first argument is the model). Returns the report (also written to
    ``args.output_dir/report.json``).
    """
    from ..models import EMBEDDED_MODEL, load_model, load_tokenizer

    if isinstance(args, str) or args is None and "model_name_or_path" not in settings:
        settings = {"model_name_or_path": args, **settings}
        args = None
    args = _arguments(args, settings, "run_evaluation")
    output_dir = Path(args.output_dir)
    _check_writable(output_dir)  # before any model is loaded or any answer generated
    baseline = args.baseline_report
    if baseline is not None and not isinstance(baseline, Mapping):
        baseline = json.loads(Path(baseline).read_text(encoding="utf-8"))
    # The data first: a user's bad file fails before any model (a classifier judge is one) is loaded.
    if args.harmful_dataset is not None:
        # The user's rows come split by id already (over each whole file, as training splits them).
        harmful, benign, benign_by_set, languages = _user_data_with_corpora(args)
    else:
        harmful, benign, benign_by_set, languages = _corpus_evaluation_data(args)
    judge = get_judge(args.judge)

    unknown = sorted(
        {*languages, *(code for codes in benign_by_set.values() for code in codes)} - set(REFUSAL_PHRASES)
    )
    if unknown and isinstance(judge, KeywordRefusalJudge):
        logger.warning(
            "the keyword judge has no refusal phrases for %s: refusals there are only seen in English (or another "
            "known language); pass a ClassifierJudge or KeywordRefusalJudge(extra_phrases=...) to cover them", unknown
        )  # fmt: skip
    model_path = args.model_name_or_path
    tokenizer = load_tokenizer(model_path)
    model = load_model(model_path, dtype=args.dtype, load_in_4bit=args.load_in_4bit)
    data = dict(
        harmful=harmful,
        benign=benign or None,
        languages=languages,
        benign_languages=benign_by_set,
        partial_path=output_dir / "responses.partial.jsonl",
        model_name=str(model_path) if model_path is not None else EMBEDDED_MODEL,
    )
    args = dataclasses.replace(args, judge=judge, adapter=str(args.adapter) if args.adapter is not None else None)
    teacher_report = teacher_records = None
    if args.adapter is not None:
        from peft import PeftModel

        # MSD's teacher is the base model (under (Q)LoRA the adapter is disabled), so an adapter's report gives the
        # base model's answers under the teacher context: one teacher number for the base and the adapter runs,
        # answered before the adapter is applied.
        if args.include_teacher:
            with decode_threads(model, args.generation_threads):
                teacher_report, teacher_records = evaluate(model, tokenizer, include_student=False, args=args, **data)
        with warnings.catch_warnings():  # transformers' deprecation notice from inside PEFT, not about this run
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = PeftModel.from_pretrained(model, args.adapter)
        if not args.load_in_4bit:
            model = model.merge_and_unload()  # inference only: the adapter's extra products cost decode time

    with decode_threads(model, args.generation_threads):
        report, records = evaluate(
            model, tokenizer, args=args, include_teacher=args.include_teacher and args.adapter is None, **data
        )
    if teacher_report is not None:
        report["teacher"] = teacher_report["teacher"]
        records = records + teacher_records
        report["summary"] = summary({key: report[key] for key in ("languages", "benign_sets", "teacher")})
    report["teacher"]["answered_by"] = (
        None
        if not args.include_teacher
        else "the base model, adapter not applied, under the teacher context"
        if args.adapter is not None
        else "the evaluated model under the teacher context"
    )
    report["settings"].update(
        split=args.split,
        test_size=args.test_size,
        seed=args.seed,
        data_dir=str(args.data_dir) if args.data_dir else None,
        teacher_preset=args.teacher_preset,
        multiq_split="odd ids (fixed)" if "multiq" in benign else None,
        adapter_merged=args.adapter is not None and not args.load_in_4bit,
        generation_threads=args.generation_threads,
    )
    paths = write_report(report, records, output_dir, baseline=baseline)
    (output_dir / "responses.partial.jsonl").unlink(missing_ok=True)  # responses.csv now holds every answer
    logger.info("evaluation written to %s", ", ".join(str(path) for path in paths.values()))
    return report
