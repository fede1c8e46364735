"""A small, real reproduction of MSD's claim on the embedded SmolLM2-135M-Instruct (CPU, fp32, LoRA).

    python examples/reproduce_mini.py --output_dir outputs/reproduce_mini

Teacher context: the English query + `msd_trl.evaluation.SAFETY_SYSTEM_PROMPT`; student: the target-language query
alone. Training rows: MultiJail train ids in jv, sw, bn mixed with benign MGSM train ids in sw, bn (the teacher
answers those, so the student learns to keep answering). Evaluation: held-out ids (split by query id, the same
split) in the trained languages and in languages never trained on (th, ko, ar, vi), over-refusal on held-out MGSM
sw, bn, th, and the teacher's own refusal rate as the ceiling.

Runs: `base` (no training), `on_policy_dpsw`, `on_policy_rkl`, `off_policy_dpsw`, `off_policy_rkl` (the DPSW
ablation). Each run's training output and evaluation report go to OUTPUT_DIR/<run>/; a run whose report exists is
not redone, so an interrupted reproduction resumes. The combined results go to OUTPUT_DIR/mini_reproduction.json
(and, with --results_json, wherever docs/results/ wants them).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from msd_trl.cli import train
from msd_trl.evaluation import run_evaluation

TRAINED = ["jv", "sw", "bn"]
UNSEEN = ["th", "ko", "ar", "vi"]
BENIGN_TRAIN = ["sw", "bn"]
BENIGN_EVAL = ["sw", "bn", "th"]
RUNS = {
    "on_policy_dpsw": ("on-policy", "dpsw"),
    "on_policy_rkl": ("on-policy", "reverse_kl"),
    "off_policy_dpsw": ("off-policy", "dpsw"),
    "off_policy_rkl": ("off-policy", "reverse_kl"),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/reproduce_mini")
    parser.add_argument("--runs", default="base," + ",".join(RUNS), help="Comma-separated subset of the runs.")
    parser.add_argument("--max_steps", type=int, default=80)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--learning_rate", type=float, default=5e-4)
    parser.add_argument("--max_new_tokens", type=int, default=24, help="Rollout / teacher-text length.")
    parser.add_argument("--max_prompt_tokens", type=int, default=128, help="Drop longer training prompts.")
    parser.add_argument("--benign_proportion", type=float, default=0.4)
    parser.add_argument("--max_train_rows", type=int, default=320, help="Training rows (and teacher texts).")
    parser.add_argument("--eval_limit", type=int, default=60, help="Held-out queries per language.")
    parser.add_argument("--eval_max_new_tokens", type=int, default=24)
    parser.add_argument("--eval_batch_size", type=int, default=16)
    parser.add_argument("--model", default=None, help="Default: the embedded SmolLM2-135M-Instruct.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results_json", default=None, help="Also write the combined JSON here.")
    parser.add_argument("--extra", default="", help="Extra `msd-trl train` flags, e.g. '--lora_r 8'.")
    return parser.parse_args(argv)


def evaluate_run(args, run_dir: Path, adapter: str | None, baseline: dict | None) -> dict:
    report_path = run_dir / "eval" / "report.json"
    if report_path.exists():
        return json.loads(report_path.read_text())
    return run_evaluation(
        args.model,
        adapter=adapter,
        languages=TRAINED + UNSEEN,
        benign_languages=BENIGN_EVAL,
        seed=args.seed,
        limit=args.eval_limit,
        max_new_tokens=args.eval_max_new_tokens,
        batch_size=args.eval_batch_size,
        output_dir=run_dir / "eval",
        baseline_report=baseline,
    )


def train_run(args, name: str, run_dir: Path) -> tuple[list[str], float]:
    trainer, divergence = RUNS[name]
    argv = [
        "--trainer", trainer, "--divergence", divergence,
        "--languages", ",".join(TRAINED), "--benign_languages", ",".join(BENIGN_TRAIN),
        "--benign_proportion", str(args.benign_proportion), "--max_prompt_tokens", str(args.max_prompt_tokens),
        "--max_train_rows", str(args.max_train_rows),
        "--split_seed", str(args.seed), "--seed", str(args.seed),
        "--max_steps", str(args.max_steps), "--per_device_train_batch_size", str(args.batch_size),
        "--learning_rate", str(args.learning_rate), "--lr_scheduler_type", "constant",
        "--max_new_tokens", str(args.max_new_tokens), "--logging_steps", "10",
        "--output_dir", str(run_dir),
    ]  # fmt: skip
    if args.model:
        argv += ["--model_name_or_path", args.model]
    argv += shlex.split(args.extra)
    summary_path = run_dir / "run_summary.json"
    if not summary_path.exists():
        train(argv)
    summary = json.loads(summary_path.read_text())
    return argv, summary["total_wall_time_s"]


def run_entry(report: dict, wall_time_s: float) -> dict:
    return {
        "refusal_rate": {code: entry["refusal_rate"] for code, entry in report["languages"].items()},
        "over_refusal_rate": {code: entry["over_refusal_rate"] for code, entry in report["benign"].items()},
        "wall_time_s": round(wall_time_s, 1),
    }


def results_table(results: dict) -> str:
    """Markdown: one row per run, refusal per language (trained | unseen), over-refusal, training wall time."""
    trained, unseen = results["trained_languages"], results["unseen_languages"]
    benign = list(results["runs"]["base"]["over_refusal_rate"])
    header = (
        ["run"]
        + [f"{c} (trained)" for c in trained]
        + [f"{c} (unseen)" for c in unseen]
        + [f"over-refusal {c}" for c in benign]
        + ["train s"]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name, run in results["runs"].items():
        cells = [f"{run['refusal_rate'][c]:.3f}" for c in trained + unseen]
        cells += [f"{run['over_refusal_rate'][c]:.3f}" for c in benign]
        lines.append("| " + " | ".join([name, *cells, f"{run['wall_time_s']:.0f}"]) + " |")
    teacher = results["teacher"]
    lines.append(f"\nTeacher (English query + safety system prompt) refusal rate: {teacher['refusal_rate']:.3f}.")
    return "\n".join(lines) + "\n"


def plot_results(results: dict, path: Path) -> Path:
    """Grouped bars: refusal rate per language (harmful) and over-refusal (benign) for every run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = list(results["runs"])
    panels = [("refusal_rate", "refusal on held-out harmful MultiJail"), ("over_refusal_rate", "over-refusal on MGSM")]
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5), gridspec_kw={"width_ratios": [7, 3]})
    for ax, (key, title) in zip(axes, panels):
        codes = list(results["runs"]["base"][key])
        width = 0.8 / len(runs)
        for i, run in enumerate(runs):
            values = [results["runs"][run][key].get(code, 0.0) for code in codes]
            ax.bar([x + i * width for x in range(len(codes))], values, width, label=run)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(codes))], codes)
        ax.set_ylim(0, 1)
        ax.set_title(title)
        if key == "refusal_rate":
            ax.axhline(results["teacher"]["refusal_rate"], color="black", linestyle="--", label="teacher (ceiling)")
            ax.axvline(len(results["trained_languages"]) - 0.1, color="grey", linewidth=0.8)
    axes[0].legend(fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> dict:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    wanted = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = sorted(set(wanted) - {"base", *RUNS})
    if unknown:
        raise ValueError(f"--runs has unknown run(s) {unknown}; choose from {['base', *RUNS]}")
    base = evaluate_run(args, output_dir / "base", None, None)
    results = {
        "model": args.model or "embedded:smollm2-135m-instruct",
        "command": "python examples/reproduce_mini.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "teacher": {"refusal_rate": base["teacher"]["refusal_rate"], "n": base["teacher"]["n"]},
        "trained_languages": TRAINED,
        "unseen_languages": UNSEEN,
        "settings": {k: v for k, v in vars(args).items() if k not in ("output_dir", "results_json", "runs")},
        "runs": {"base": run_entry(base, 0.0)},
    }
    for name in [r for r in wanted if r != "base"]:
        run_dir = output_dir / name
        train_argv, train_time = train_run(args, name, run_dir)
        eval_start = time.time()
        report = evaluate_run(args, run_dir, str(run_dir), base)
        print(
            f"reproduce_mini: {name}: training took {train_time:.0f} s (run_summary.json), evaluation "
            f"{time.time() - eval_start:.0f} s this call (0 when its report already existed)"
        )
        results["runs"][name] = run_entry(report, train_time)
        results["runs"][name]["train_command"] = "msd-trl train " + " ".join(shlex.quote(a) for a in train_argv)
        (output_dir / "mini_reproduction.json").write_text(json.dumps(results, indent=2))
    text = json.dumps(results, indent=2)
    (output_dir / "mini_reproduction.json").write_text(text)
    plot_results(results, output_dir / "mini_reproduction.png")
    (output_dir / "mini_reproduction.md").write_text(results_table(results))
    if args.results_json:
        Path(args.results_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results_json).write_text(text)
        plot_results(results, Path(args.results_json).with_suffix(".png"))
    print(f"reproduce_mini: results in {output_dir / 'mini_reproduction.json'}")
    return results


if __name__ == "__main__":
    main()
