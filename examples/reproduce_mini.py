"""A small, real reproduction of MSD's claim on the embedded SmolLM2-135M-Instruct (CPU, fp32, LoRA), over seeds.

    python examples/reproduce_mini.py --output_dir outputs/reproduce_mini --seeds 0,1,2

Student: the target-language query alone. Teacher: the same frozen model under a preset context (`paper` by
default: original query + English translation, judge safety in English, reply in the user's language; or
`english_refusal`, the English query under a system prompt prescribing one English refusal sentence). Training
rows: MultiJail train ids in jv, sw, bn, mixed with benign rows (MGSM sw math and MultiQ even-id chat questions in
jv, sw, bn), so the student sees benign non-English questions it must keep answering.

Seeds vary the training (LoRA initialisation, rollout sampling, data order and mix); the by-id split is fixed
(`--split_seed`), so every cell and seed is measured on the same held-out ids and each run's Wilson interval covers
the sampling of those ids. Evaluation (`msd_trl.evaluation.run_evaluation` with `EVALUATION`, round 2's settings,
on the first 20 held-out MultiJail ids, MultiQ odd ids and held-out MGSM ids per language): refusal on harmful queries in the trained languages and in languages never trained on
(th, ko, ar, vi); over-refusal on MultiQ chat questions in the same seven languages and on MGSM math (sw, th);
the share of answers in the query's language; every rate with a 95 % Wilson interval; the teacher's own refusal and
over-refusal (base model under each preset) as the ceiling.

Cells (`--cells`): `on_dpsw_english` (on-policy DPSW, English-refusal teacher, MultiQ chat rows in the benign mix)
and its closest ablations: `on_dpsw_paper` (the paper's teacher instead), `on_rkl_english` (reverse KL instead of
DPSW), `off_dpsw_english` (off-policy), `on_dpsw_english_mgsm_only` (benign rows MGSM math only: the landed
recipe), and six selectivity levers: `on_dpsw_english_benign60` (60 % benign rows instead of 40 %),
`on_dpsw_english_epochs3` (three times the steps, adapters saved on the way), `off_dpsw_english_temp03` (off-policy
teacher text sampled at temperature 0.3 instead of 0.9), `on_dpsw_english_floor0` (DPSW floor 0 instead of 0.1),
`on_dpsw_english_topk5` (DPSW teacher view over the top 5 tokens instead of 20), `on_dpsw_english_multiq_wide`
(benign chat rows in eight more languages, none of them evaluated). Every cell runs every seed of `--seeds` unless
it is listed in `--single_seed_cells` (first seed only; by default the levers and the MGSM-only recipe). Without
`--cells`, the first four run (3 seeds x 4 cells: 4-4.5 hours here with `--fast_cpu_decoding`).

Each run's training output and evaluation go to OUTPUT_DIR/<cell>/seed<k>/ (base: OUTPUT_DIR/base/seed<split>/<preset>/);
a run whose report exists is not redone, so an interrupted reproduction resumes where it stopped. The combined
results (per run, and mean/spread per cell) go to OUTPUT_DIR/mini_reproduction.json, .md and .png, and with
--results_json also there.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import shlex
import sys
import time
from pathlib import Path

from msd_trl.cli import train
from msd_trl.evaluation import EvaluationArguments, read_records, run_evaluation
from msd_trl.models import EMBEDDED_MODEL
from msd_trl.stats import mean_and_spread, rate_entry

TRAINED = ["jv", "sw", "bn"]
UNSEEN = ["th", "ko", "ar", "vi"]
MGSM_TRAIN = ["sw"]
# MGSM bn questions are ~400 tokens (all dropped from training by the 128-token cap) and cost most of an
# evaluation; sw (trained) and th (unseen) keep both sides of the comparison.
MGSM_EVAL = ["sw", "th"]
MULTIQ_TRAIN = TRAINED
# MultiQ languages outside MultiJail's (so never evaluated here), for the multiq_wide lever.
MULTIQ_WIDE = ["de", "fr", "es", "zh", "ja", "hi", "ru", "ind"]
CELLS: dict[str, dict] = {
    "on_dpsw_english": {"trainer": "on-policy", "divergence": "dpsw", "preset": "english_refusal"},
    # The paper's teacher context (original query + English translation + instruction) is ~30 tokens longer: under
    # the same cap MGSM sw would keep 53 of 200 rows, too few for the 40 % benign mix; 32 more tokens keep a mix
    # like the other cells' (jv 76, sw 62, bn 54 harmful rows; MGSM 64; MultiQ 25/23/16).
    "on_dpsw_paper": {"trainer": "on-policy", "divergence": "dpsw", "preset": "paper", "extra_prompt_tokens": 32},
    "on_rkl_english": {"trainer": "on-policy", "divergence": "reverse_kl", "preset": "english_refusal"},
    "off_dpsw_english": {"trainer": "off-policy", "divergence": "dpsw", "preset": "english_refusal"},
    # Selectivity lever: 60 % benign rows instead of 40 %.
    "on_dpsw_english_benign60": {
        "trainer": "on-policy", "divergence": "dpsw", "preset": "english_refusal", "benign_proportion": 0.6,
    },
    # The landed recipe: benign rows are MGSM math only, no chat questions.
    "on_dpsw_english_mgsm_only": {
        "trainer": "on-policy", "divergence": "dpsw", "preset": "english_refusal", "multiq_languages": [],
    },
    # Selectivity lever: three times --max_steps (three epochs of the default 320 rows), with the adapter saved
    # every --max_steps (checkpoint-80, checkpoint-160) for examples/refusal_probability.py.
    "on_dpsw_english_epochs3": {
        "trainer": "on-policy", "divergence": "dpsw", "preset": "english_refusal", "steps_factor": 3,
    },
    # Selectivity lever: off-policy teacher text sampled at temperature 0.3 instead of 0.9 (closer to the
    # teacher's greedy answer, which refuses more of the harmful rows).
    "off_dpsw_english_temp03": {
        "trainer": "off-policy", "divergence": "dpsw", "preset": "english_refusal", "extra": ["--temperature", "0.3"],
    },
    # Selectivity lever: DPSW's floor w_min at 0 instead of 0.1, the sharpest weighting (a token the teacher is
    # unsure of or the student already agrees on gets no weight); the other end, uniform weights, is on_rkl_english.
    "on_dpsw_english_floor0": {
        "trainer": "on-policy", "divergence": "dpsw", "preset": "english_refusal",
        "extra": ["--dpsw_min_weight", "0.0"],
    },
    # Selectivity lever: DPSW's teacher view over the top 5 tokens instead of 20 (confidence among few candidates).
    "on_dpsw_english_topk5": {
        "trainer": "on-policy", "divergence": "dpsw", "preset": "english_refusal", "extra": ["--dpsw_top_k", "5"],
    },
    # Selectivity lever: benign chat rows in eight more languages (never evaluated: neither trained nor unseen), so
    # "not English" stops predicting "harmful" in the mix; same benign share, so fewer chat rows per trained language.
    "on_dpsw_english_multiq_wide": {
        "trainer": "on-policy", "divergence": "dpsw", "preset": "english_refusal",
        "multiq_languages": MULTIQ_TRAIN + MULTIQ_WIDE,
    },
    # A teacher context per row kind (issue 22): the English-refusal context on harmful rows, the paper's (answer in
    # the user's language) on benign rows; 32 more prompt tokens for the paper context, as on_dpsw_paper.
    "on_dpsw_english_paper_benign": {
        "trainer": "on-policy", "divergence": "dpsw", "preset": "english_refusal", "benign_preset": "paper",
        "extra_prompt_tokens": 32,
    },
    "off_dpsw_english_paper_benign": {
        "trainer": "off-policy", "divergence": "dpsw", "preset": "english_refusal", "benign_preset": "paper",
        "extra_prompt_tokens": 32,
    },
    # More benign chat rows in the trained languages: 80 % of the benign rows from MultiQ instead of 50 % (same 40 %
    # benign share, so MultiQ rows 64 -> 102 and MGSM rows 64 -> 26).
    "on_dpsw_english_chat80": {
        "trainer": "on-policy", "divergence": "dpsw", "preset": "english_refusal", "extra": ["--multiq_share", "0.8"],
    },
    # Benign chat rows in the unseen languages' scripts too: MultiQ even ids in th, ko, ar, vi (evaluation reads odd
    # ids; their harmful rows stay untrained), 80 % of the benign rows from MultiQ as in on_dpsw_english_chat80.
    "on_dpsw_english_chat80_unseen_scripts": {
        "trainer": "on-policy", "divergence": "dpsw", "preset": "english_refusal",
        "multiq_languages": MULTIQ_TRAIN + UNSEEN, "extra": ["--multiq_share", "0.8"],
    },
    # The unseen languages trained on both sides: harmful rows (their by-id training split) and MultiQ even ids in th,
    # ko, ar, vi beside jv, sw, bn, the mix of on_dpsw_english_chat80_unseen_scripts otherwise, off-policy (the cheaper
    # trainer that reached the on-policy cell's selectivity): can a language whose benign rows alone removed its
    # refusals (.00-.05) keep them when it also has harmful rows? Evaluation still reads held-out ids only.
    "off_dpsw_english_chat80_all_languages": {
        "trainer": "off-policy", "divergence": "dpsw", "preset": "english_refusal", "languages": TRAINED + UNSEEN,
        "multiq_languages": MULTIQ_TRAIN + UNSEEN, "extra": ["--multiq_share", "0.8"],
    },
}  # fmt: skip
# How every run (and the base model) is evaluated: round 2's settings, the ones docs/results was measured with, set
# here as explicit EvaluationArguments values (not its defaults): the first 20 held-out ids per language, a 24-token
# English budget scaled per language up to 128 tokens, answers ended at 80 characters, batches of 16; MultiJail and
# MultiQ in the trained and unseen languages, MGSM in sw and th. The --eval_* flags override them;
# examples/learning_curves.py evaluates its checkpoints with the same object.
EVALUATION = EvaluationArguments(
    languages=TRAINED + UNSEEN, benign_languages=MGSM_EVAL, multiq_languages=TRAINED + UNSEEN,
    limit=20, max_new_tokens=24, max_budget_tokens=128, max_chars=80, batch_size=16,
)  # fmt: skip
# What a plain run does: the recommended cell and its closest ablations, every seed (4-4.5 hours on 2 CPU cores
# with --fast_cpu_decoding); the levers run when named in --cells.
DEFAULT_CELLS = ["on_dpsw_english", "on_dpsw_paper", "on_rkl_english", "off_dpsw_english"]
SINGLE_SEED_CELLS = [
    "on_dpsw_english_mgsm_only", "on_dpsw_english_benign60", "on_dpsw_english_epochs3", "off_dpsw_english_temp03",
    "on_dpsw_english_floor0", "on_dpsw_english_topk5", "on_dpsw_english_multiq_wide", "on_dpsw_english_chat80",
    "on_dpsw_english_chat80_unseen_scripts", "off_dpsw_english_chat80_all_languages",
]  # fmt: skip


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/reproduce_mini")
    parser.add_argument(
        "--cells", default=",".join(DEFAULT_CELLS),
        help=f"Comma-separated cells (default: the recommended one and its closest ablations); any of {list(CELLS)}.",
    )  # fmt: skip
    parser.add_argument(
        "--seeds", default="0,1,2",
        help="Comma-separated training seeds (LoRA init, rollout sampling, data order and mix).",
    )  # fmt: skip
    parser.add_argument(
        "--split_seed", type=int, default=0,
        help="Seed of the by-id train/held-out split, fixed so every cell and seed is measured on the same ids.",
    )  # fmt: skip
    parser.add_argument(
        "--single_seed_cells", default=",".join(SINGLE_SEED_CELLS),
        help="Cells run on one seed.",
    )  # fmt: skip
    parser.add_argument("--max_steps", type=int, default=80)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--learning_rate", type=float, default=5e-4)
    parser.add_argument("--max_new_tokens", type=int, default=24, help="Rollout / teacher-text length.")
    parser.add_argument(
        "--max_prompt_tokens", type=int, default=192,
        help="Drop training rows whose rendered conversation (as the trainer renders it) is longer.",
    )  # fmt: skip
    parser.add_argument("--benign_proportion", type=float, default=0.4)
    parser.add_argument("--max_train_rows", type=int, default=320, help="Training rows (and teacher texts).")
    # The evaluation's settings, defaults from EVALUATION (one place).
    parser.add_argument(
        "--eval_limit", type=_limit, default=EVALUATION.limit,
        help="Held-out queries per language ('all': every held-out id).",
    )  # fmt: skip
    parser.add_argument(
        "--eval_max_new_tokens", type=int, default=EVALUATION.max_new_tokens,
        help="English budget, scaled per language.",
    )  # fmt: skip
    parser.add_argument("--eval_max_budget_tokens", type=int, default=EVALUATION.max_budget_tokens)
    parser.add_argument("--eval_max_chars", type=int, default=EVALUATION.max_chars)
    parser.add_argument("--eval_batch_size", type=int, default=EVALUATION.batch_size)
    parser.add_argument("--model", default=None, help="Default: the embedded SmolLM2-135M-Instruct.")
    parser.add_argument(
        "--fast_cpu_decoding", action=argparse.BooleanOptionalAction, default=True,
        help="Without a GPU: one torch thread while generating and the adapter merged for rollouts and evaluation "
        "(MSDConfig.generation_threads / merge_adapter_for_generation; ~2x faster decoding here, docs/performance.md).",
    )  # fmt: skip
    parser.add_argument("--results_json", default=None, help="Also write the combined JSON here.")
    parser.add_argument("--extra", default="", help="Extra `msd-trl train` flags, e.g. '--lora_r 8'.")
    parser.add_argument(
        "--only_existing", action="store_true",
        help="Train and evaluate nothing new: collect the runs whose reports exist (to report a partial run).",
    )  # fmt: skip
    return parser.parse_args(argv)


def _csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _limit(value: str) -> int | None:
    return None if value.strip().lower() in ("all", "none") else int(value)


def evaluation_arguments(args, output_dir: Path, **settings) -> EvaluationArguments:
    """EVALUATION with the --eval_* flags of `args`, its model, and `settings` (the run's adapter, split seed, teacher
    context, output folder) applied."""
    return dataclasses.replace(
        EVALUATION, model_name_or_path=args.model, limit=args.eval_limit, max_new_tokens=args.eval_max_new_tokens,
        max_budget_tokens=args.eval_max_budget_tokens, max_chars=args.eval_max_chars,
        batch_size=args.eval_batch_size, output_dir=str(output_dir), **settings,
    )  # fmt: skip


def _fast_cpu_decoding(args) -> bool:
    import torch

    return args.fast_cpu_decoding and not torch.cuda.is_available()


def evaluate_run(
    args,
    run_dir: Path,
    adapter: str | None,
    seed: int,
    preset: str,
    student: bool = True,
    benign_preset: str | None = None,
) -> dict:
    report_path = run_dir / "eval" / "report.json"
    if report_path.exists():
        return json.loads(report_path.read_text())
    return run_evaluation(
        evaluation_arguments(
            args, run_dir / "eval", adapter=adapter, seed=seed, teacher_preset=preset, include_student=student,
            benign_teacher_preset=benign_preset, generation_threads=1 if _fast_cpu_decoding(args) else None,
        )
    )  # fmt: skip


def trained_languages(cell: str) -> list[str]:
    """The languages whose harmful rows a cell trains on (TRAINED unless the cell names its own)."""
    return CELLS[cell].get("languages", TRAINED)


def train_argv(args, cell: str, seed: int, run_dir: Path) -> list[str]:
    """The `msd-trl train` flags of one (cell, seed) run."""
    spec = CELLS[cell]
    argv = [
        "--trainer", spec["trainer"], "--divergence", spec["divergence"], "--teacher_preset", spec["preset"],
        "--languages", ",".join(trained_languages(cell)), "--benign_languages", ",".join(MGSM_TRAIN),
        "--multiq_languages", ",".join(spec.get("multiq_languages", MULTIQ_TRAIN)),
        "--benign_proportion", str(spec.get("benign_proportion", args.benign_proportion)),
        "--max_prompt_tokens", str(args.max_prompt_tokens + spec.get("extra_prompt_tokens", 0)),
        "--max_train_rows", str(args.max_train_rows),
        "--split_seed", str(args.split_seed), "--seed", str(seed),
        "--max_steps", str(spec.get("steps_factor", 1) * args.max_steps),
        "--per_device_train_batch_size", str(args.batch_size),
        "--learning_rate", str(args.learning_rate), "--lr_scheduler_type", "constant",
        "--max_new_tokens", str(args.max_new_tokens), "--logging_steps", "10",
        "--output_dir", str(run_dir),
    ]  # fmt: skip
    if args.model:
        argv += ["--model_name_or_path", args.model]
    if _fast_cpu_decoding(args):
        argv += ["--generation_threads", "1", "--merge_adapter_for_generation", "true"]
    if spec.get("benign_preset"):
        argv += ["--benign_teacher_preset", spec["benign_preset"]]
    if spec.get("steps_factor", 1) > 1:
        argv += ["--save_strategy", "steps", "--save_steps", str(args.max_steps)]
    return argv + spec.get("extra", []) + shlex.split(args.extra)


def train_run(args, cell: str, seed: int, run_dir: Path) -> tuple[list[str], float]:
    """Train one run unless its summary exists; its flags and training wall time."""
    argv = train_argv(args, cell, seed, run_dir)
    summary_path = run_dir / "run_summary.json"
    if not summary_path.exists():
        train(argv)
    return argv, json.loads(summary_path.read_text())["total_wall_time_s"]


def check_training_mixes(args, pending: list[tuple[str, int, Path]]) -> None:
    """Build the training rows of every run still to train (tokenizer only: seconds a run) before the hours of
    evaluation and training start, so a cell whose mix cannot be built (say, too few rows left under the length cap
    with its teacher context) fails now, naming the cell and seed."""
    from msd_trl.cli import build_train_parser
    from msd_trl.models import load_tokenizer, resolve_model_name_or_path

    tokenizer = load_tokenizer(resolve_model_name_or_path(args.model))
    for cell, seed, run_dir in pending:
        data_args, config, _ = build_train_parser().parse_args_and_config(args=train_argv(args, cell, seed, run_dir))
        try:
            data_args.build_dataset(tokenizer, config=config)
        except ValueError as error:
            raise ValueError(f"cell {cell!r} seed {seed}: its training rows cannot be built: {error}") from error


@functools.lru_cache(maxsize=1)
def english_queries() -> dict[str, str]:
    """Query id -> its English text, for MultiJail, MultiQ and MGSM (the corpora evaluation reads): what the
    off-topic check reads an answer against when its responses.csv predates the `english_prompt` column."""
    from msd_trl.corpora import get_corpus

    english = {}
    for name in ("multijail", "multiq", "mgsm"):
        rows = get_corpus(name).read(["en"], data_dir=None)
        english.update({str(i): text for i, text in zip(rows["id"], rows["prompt"])})
    return english


def rejudged_rates(eval_dir: Path) -> dict[tuple[str, str, str], dict]:
    """Degenerate, non-answer and off-topic shares, with Wilson intervals as in the report, per (kind, set,
    language), re-judged from responses.csv with the current detector (`msd_trl.evaluation.non_answers`), so runs
    evaluated before it (or before a change to it) are judged alike. The off-topic share is over the answers the
    check could judge (absent when it judged none)."""
    from msd_trl.evaluation.non_answers import flag_records

    path = eval_dir / "responses.csv"
    if not path.exists():
        return {}
    records = read_records(path)
    english = None if all(r.get("english_prompt") for r in records if r["kind"] == "benign") else english_queries()
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for record in flag_records(records, english):
        groups.setdefault((record["kind"], record.get("set", ""), record["language"]), []).append(record)
    rates = {}
    for key, rows in groups.items():
        judged = [r["off_topic"] for r in rows if r.get("off_topic") is not None]
        rates[key] = {
            **rate_entry([r["degenerate"] for r in rows], "degenerate_rate"),
            **rate_entry([r["non_answer"] for r in rows], "non_answer_rate"),
            **(rate_entry(judged, "off_topic_rate") if judged else {}),
        }
    return rates


def run_entry(report: dict, eval_dir: Path | None = None) -> dict:
    """The numbers of one evaluation: rates, their intervals, answer language, and the degenerate and non-answer
    shares per language (re-judged from the saved answers when they exist)."""
    rejudged = rejudged_rates(eval_dir) if eval_dir is not None else {}

    def pick(section: dict, rate: str, kind: str, set_name: str) -> dict:
        return {
            code: {
                "rate": entry[rate],
                "ci": entry[f"{rate}_ci"],
                "language_fidelity": entry.get("language_fidelity"),
                "degenerate_rate": rejudged.get((kind, set_name, code), {}).get(
                    "degenerate_rate", entry.get("degenerate_rate")
                ),
                "non_answer_rate": rejudged.get((kind, set_name, code), {}).get(
                    "non_answer_rate", entry.get("non_answer_rate")
                ),
                "off_topic_rate": rejudged.get((kind, set_name, code), {}).get(
                    "off_topic_rate", entry.get("off_topic_rate")
                ),
                "n": entry["n"],
            }
            for code, entry in section.items()
        }

    sets = report["benign_sets"]
    return {
        "refusal": pick(report["languages"], "refusal_rate", "harmful", "harmful"),
        "multiq_over_refusal": pick(sets.get("multiq", {}), "over_refusal_rate", "benign", "multiq"),
        "mgsm_over_refusal": pick(sets.get("mgsm", {}), "over_refusal_rate", "benign", "mgsm"),
        "refusals_in_english": {c: e.get("refusals_in_english") for c, e in report["languages"].items()},
    }


def teacher_text_entry(run_dir: Path) -> dict | None:
    """What an off-policy run trained on: the share of its sampled teacher texts the keyword judge calls refusals,
    per source (multijail harmful; mgsm, multiq benign), and the sampling temperature. None without teacher text."""
    path = run_dir / "teacher_completions.jsonl"
    if not path.exists():
        return None
    from msd_trl.evaluation import get_judge

    header, rows = None, []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "fingerprint" in record:
            header = record["fingerprint"]
        else:
            rows.append(record)
    judge, by_source = get_judge("keyword"), {}
    for row in rows:
        by_source.setdefault(str(row["id"]).split("-")[0], []).append(row)  # multijail-6, multiq-gpt-1, mgsm-2
    refusal = {}
    for source, group in sorted(by_source.items()):
        flags = judge([""] * len(group), [r["teacher_completion"] for r in group])  # the file keeps no prompts
        refusal[source] = {"rate": sum(flags) / len(flags), "n": len(flags)}
    return {"temperature": (header or {}).get("temperature"), "refusal": refusal}


def teacher_entry(report: dict) -> dict:
    teacher = report["teacher"]
    benign = teacher.get("benign", {})
    return {
        "refusal_rate": teacher["refusal_rate"],
        "refusal_rate_ci": teacher["refusal_rate_ci"],
        "language_fidelity": teacher.get("language_fidelity"),
        "degenerate_rate": teacher.get("degenerate_rate"),
        "multiq_over_refusal_rate": benign.get("multiq", {}).get("over_refusal_rate"),
        "mgsm_over_refusal_rate": benign.get("mgsm", {}).get("over_refusal_rate"),
        "n": teacher["n"],
    }


def aggregate(runs: dict[str, dict]) -> dict:
    """Mean and spread over seeds of every rate in `runs` ({seed: run_entry})."""
    first = next(iter(runs.values()))
    summary: dict = {}
    for section in ("refusal", "multiq_over_refusal", "mgsm_over_refusal"):
        summary[section] = {
            code: {
                "rate": mean_and_spread([run[section][code]["rate"] for run in runs.values()]),
                "language_fidelity": mean_and_spread(
                    [run[section][code]["language_fidelity"] for run in runs.values()]
                ),
                "degenerate_rate": mean_and_spread(
                    [run[section][code].get("degenerate_rate") for run in runs.values()]
                ),
                "non_answer_rate": mean_and_spread(
                    [run[section][code].get("non_answer_rate") for run in runs.values()]
                ),
            }
            for code in first[section]
        }
    # Selectivity: how much more often a harmful query is refused than a benign chat question in the same language,
    # per seed (0: refused alike, whatever the level).
    summary["selectivity"] = {
        code: {
            "rate": mean_and_spread(
                [run["refusal"][code]["rate"] - run["multiq_over_refusal"][code]["rate"]
                 if run["refusal"][code]["rate"] is not None and run["multiq_over_refusal"][code]["rate"] is not None
                 else None for run in runs.values()]
            )
        }
        for code in first["refusal"]
        if code in first["multiq_over_refusal"]
    }  # fmt: skip
    return summary


def results_table(results: dict) -> str:
    """Markdown: one row per cell (mean over seeds, min to max in brackets when there are several), then one row per
    run with each rate's 95 % Wilson interval."""
    languages = results["trained_languages"] + results["unseen_languages"]

    def cell(stats: dict) -> str:
        if stats["mean"] is None:
            return "–"
        spread = f" ({stats['min']:.2f} to {stats['max']:.2f})" if stats["n"] > 1 else ""
        return f"{stats['mean']:.2f}{spread}"

    lines = []
    for title, section, key in (
        ("Refusal on held-out harmful MultiJail (higher is better)", "refusal", "rate"),
        ("Over-refusal on held-out MultiQ chat questions (lower is better)", "multiq_over_refusal", "rate"),
        ("Selectivity: refusal minus MultiQ over-refusal, per seed (0 = harmful and benign refused alike)",
         "selectivity", "rate"),
        ("Benign MultiQ answers in the question's language (higher is better)", "multiq_over_refusal",
         "language_fidelity"),
        ("Benign MultiQ answers that are degenerate: loops, echoes of the question, one text for many questions "
         "(lower is better)", "multiq_over_refusal", "degenerate_rate"),
        ("Benign MultiQ non-answers: refusals plus degenerate answers (lower is better)", "multiq_over_refusal",
         "non_answer_rate"),
    ):  # fmt: skip
        lines += [f"**{title}**", "", "| cell | seeds | " + " | ".join(languages) + " |",
                  "|" + " --- |" * (len(languages) + 2)]  # fmt: skip
        for name, entry in results["cells"].items():
            stats = entry["summary"][section]
            cells = [cell(stats[c][key]) if c in stats else "–" for c in languages]
            lines.append(f"| {name} | {len(entry['seeds'])} | " + " | ".join(cells) + " |")
        lines.append("")
    per_run = (("Refusal per run, with its 95 % Wilson interval", "refusal"),
               ("MultiQ over-refusal per run, with its 95 % Wilson interval", "multiq_over_refusal"))  # fmt: skip
    for title, section in per_run:
        lines += [f"**{title}**", "", "| cell | seed | " + " | ".join(languages) + " |",
                  "|" + " --- |" * (len(languages) + 2)]  # fmt: skip
        for name, entry in results["cells"].items():
            for seed, run in entry["runs"].items():
                rates = [run[section].get(c) for c in languages]
                cells = [f"{r['rate']:.2f} [{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]" if r else "–" for r in rates]
                lines.append(f"| {name} | {seed} | " + " | ".join(cells) + " |")
        lines.append("")
    mgsm = MGSM_EVAL
    lines += ["**Over-refusal on held-out MGSM math (lower is better)**", "",
              "| cell | " + " | ".join(mgsm) + " |", "|" + " --- |" * (len(mgsm) + 1)]  # fmt: skip
    for name, entry in results["cells"].items():
        stats = entry["summary"]["mgsm_over_refusal"]
        lines.append(f"| {name} | " + " | ".join(cell(stats[c]["rate"]) for c in mgsm) + " |")
    lines += ["", "**Teacher (base model under the preset; mean over seeds)**", "",
              "| preset | refusal (harmful, English judge + query language) | MultiQ over-refusal | in query language |",
              "| --- | --- | --- | --- |"]  # fmt: skip
    for preset, per_seed in results["teacher"].items():
        refusal = mean_and_spread([t["refusal_rate"] for t in per_seed.values()])
        over = mean_and_spread([t["multiq_over_refusal_rate"] for t in per_seed.values()])
        fidelity = mean_and_spread([t["language_fidelity"] for t in per_seed.values()])
        lines.append(f"| {preset} | {cell(refusal)} | {cell(over)} | {cell(fidelity)} |")
    return "\n".join(lines) + "\n"


def plot_results(results: dict, path: Path) -> Path | None:
    """Refusal (harmful) and MultiQ over-refusal per language, one bar group per cell, seed min-max as error bars."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    languages = results["trained_languages"] + results["unseen_languages"]
    cells = list(results["cells"])
    fig, axes = plt.subplots(1, 2, figsize=(15, 4.5))
    for ax, (section, title) in zip(
        axes, [("refusal", "refusal on held-out harmful MultiJail"), ("multiq_over_refusal", "over-refusal, MultiQ")]
    ):
        width = 0.8 / max(1, len(cells))
        for i, name in enumerate(cells):
            stats = [results["cells"][name]["summary"][section].get(c, {}).get("rate") for c in languages]
            means = [s["mean"] if s and s["mean"] is not None else 0.0 for s in stats]
            low = [m - (s["min"] if s and s["min"] is not None else m) for m, s in zip(means, stats)]
            high = [(s["max"] if s and s["max"] is not None else m) - m for m, s in zip(means, stats)]
            ax.bar([x + i * width for x in range(len(languages))], means, width, yerr=[low, high], label=name,
                   capsize=2)  # fmt: skip
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(languages))], languages)
        ax.axvline(len(results["trained_languages"]) - 0.1, color="grey", linewidth=0.8)
        ax.set_ylim(0, 1.05)
        ax.set_title(title + " (left of the line: trained languages)", fontsize=10)
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> dict:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    cells, seeds = _csv(args.cells), [int(s) for s in _csv(args.seeds)]
    unknown = sorted(set(cells) - set(CELLS))
    if unknown:
        raise ValueError(f"--cells has unknown cell(s) {unknown}; choose from {list(CELLS)}")
    if not seeds:
        raise ValueError("--seeds must name at least one seed")
    single = set(_csv(args.single_seed_cells))
    results: dict = {
        "model": args.model or EMBEDDED_MODEL,
        "command": "python examples/reproduce_mini.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "trained_languages": TRAINED,
        "unseen_languages": UNSEEN,
        "seeds": seeds,
        "settings": {k: v for k, v in vars(args).items() if k not in ("output_dir", "results_json")},
        "teacher": {},
        "cells": {},
    }

    def write() -> None:
        text = json.dumps(results, indent=2)
        (output_dir / "mini_reproduction.json").write_text(text)
        (output_dir / "mini_reproduction.md").write_text(results_table(results))
        plot_results(results, output_dir / "mini_reproduction.png")
        if args.results_json:
            Path(args.results_json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.results_json).write_text(text)
            plot_results(results, Path(args.results_json).with_suffix(".png"))

    # Seed-major order: every cell gets its first seed before any cell gets its second.
    runs = [(cell, seed, output_dir / cell / f"seed{seed}") for seed in seeds for cell in cells
            if cell not in single or seed == seeds[0]]  # fmt: skip
    if not args.only_existing:
        check_training_mixes(args, [run for run in runs if not (run[2] / "run_summary.json").exists()])
    # Base model: once (greedy decoding on the fixed held-out ids has no seed); the teacher ceiling of every preset
    # in use (the first preset's run answers the student prompts too, the others only the teacher's).
    presets = list(dict.fromkeys(CELLS[c]["preset"] for c in cells))
    split = args.split_seed
    for position, preset in enumerate(presets):
        run_dir = output_dir / "base" / f"seed{split}" / preset
        if args.only_existing and not (run_dir / "eval" / "report.json").exists():
            continue
        report = evaluate_run(args, run_dir, None, split, preset, student=position == 0)
        results["teacher"][preset] = {str(split): teacher_entry(report)}
        if position == 0:
            entry = run_entry(report, run_dir / "eval")
            results["cells"]["base"] = {"seeds": [split], "runs": {str(split): entry}}
            results["cells"]["base"]["summary"] = aggregate(results["cells"]["base"]["runs"])
    write()
    for cell, seed, run_dir in runs:
        if args.only_existing and not (run_dir / "eval" / "report.json").exists():
            continue
        train_argv, train_time = train_run(args, cell, seed, run_dir)
        start = time.time()
        report = evaluate_run(args, run_dir, str(run_dir), split, CELLS[cell]["preset"],
                              benign_preset=CELLS[cell].get("benign_preset"))  # fmt: skip
        print(f"reproduce_mini: {cell} seed {seed}: training {train_time:.0f} s, evaluation "
              f"{time.time() - start:.0f} s this call (0 when its report already existed)")  # fmt: skip
        entry = results["cells"].setdefault(cell, {"seeds": [], "runs": {}, **CELLS[cell]})
        entry["seeds"].append(seed)
        entry["runs"][str(seed)] = {
            **run_entry(report, run_dir / "eval"),
            "train_wall_time_s": train_time,
            "train_command": "msd-trl train " + " ".join(shlex.quote(a) for a in train_argv),
        }
        if (teacher_text := teacher_text_entry(run_dir)) is not None:
            entry["runs"][str(seed)]["teacher_text"] = teacher_text
        entry["summary"] = aggregate(entry["runs"])
        write()
    print(f"reproduce_mini: results in {output_dir / 'mini_reproduction.json'}")
    return results


if __name__ == "__main__":
    main()
