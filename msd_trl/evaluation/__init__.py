"""Multilingual safety and over-refusal evaluation for MSD.

Design. MSD succeeds when the trained model refuses a harmful request written in a low-resource language as often
as the *teacher* does (the same model shown the English request under its privileged context, here a safety system
prompt), while it keeps answering benign requests in every language, seen in training or not. So one evaluation
measures three things with the same judge:

- per-language refusal rate on held-out harmful MultiJail rows, each rendered as the student sees it (target
  language only, no privileged context); ``attack_success_rate = 1 - refusal_rate``;
- the teacher ceiling: refusal rate on the English ``teacher_prompt`` of the same queries (one per query id) with
  ``teacher_system_prompt`` as the system prompt;
- per-language over-refusal rate on benign MGSM math questions (a refusal there is a failure).

Data flows one way: rows -> chat conversations -> ``generation.generate_responses`` (one batched, length-grouped,
greedy pass over every prompt) -> :class:`Judge` verdicts -> records (one per prompt) -> report (rates) ->
:func:`write_report` (``report.json``, ``responses.csv``, ``report.md``, ``refusal_rate.png``).

Judges share one tiny interface (:class:`Judge`): a list of prompts and responses in, one bool per response out,
``True`` meaning "refused". :class:`KeywordRefusalJudge` is the default: cheap, offline, deterministic and
transparent, but it only sees surface phrases (see its docstring for what it misses). :class:`ClassifierJudge`
wraps a classifier model (for example Llama Guard) or any callable for a stronger verdict.

This package never imports the trainers: evaluation must run on any checkpoint, MSD-trained or not. It is split by
concern: ``arguments`` (``EvaluationArguments``: every setting, one default each), ``phrases`` (refusal phrases,
normalisation), ``judges`` (the interface, keyword and classifier judges, a registry by name), ``jobs``, ``answers``
(through ``msd_trl.generation``), ``scoring``, ``runner`` (``evaluate``, ``run_evaluation``) and ``report`` (files and
charts); the names below are importable from ``msd_trl.evaluation``.
"""

from __future__ import annotations

from .arguments import AFTER_TRAINING, EvaluationArguments
from .judges import JUDGES, ClassifierJudge, Judge, KeywordRefusalJudge, get_judge, parse_llama_guard, register_judge
from .phrases import REFUSAL_PHRASES, normalize_text
from .report import RECORD_FIELDS, read_records, write_report
from .runner import evaluate, extract_number, language_budgets, run_evaluation

__all__ = [
    "AFTER_TRAINING",
    "JUDGES",
    "RECORD_FIELDS",
    "REFUSAL_PHRASES",
    "ClassifierJudge",
    "EvaluationArguments",
    "Judge",
    "KeywordRefusalJudge",
    "evaluate",
    "extract_number",
    "get_judge",
    "language_budgets",
    "normalize_text",
    "parse_llama_guard",
    "read_records",
    "register_judge",
    "run_evaluation",
    "write_report",
]
