"""Benchmark: on-policy and off-policy MSD against TRL's GKD and SDFT trainers, on the same model, rows and settings.

Design
------
Seven runs, one after another, each on the same model, the same MultiJail rows (in the same order), batch size,
new-token budget, seed and LoRA adapter (r=16, alpha=32, every linear layer, dropout 0), all in float32 with bf16
and gradient checkpointing off, dropout disabled, sampling at temperature 1.0 (top-p 1, top-k off):

* ``msd_on_policy``: ``OnPolicyMSDTrainer``, self-teacher = the base model with the adapter disabled, MSD's default
  objective (DPSW-weighted reverse KL).
* ``gkd_on_policy``: TRL ``GKDTrainer`` with ``lmbda=1`` (every step samples the student) and ``beta=1`` (reverse
  KL); its teacher is a second copy of the same weights, as GKD needs one.
* ``sdft``: TRL ``SDFTTrainer`` with ``teacher_model_kind="base"`` (adapter disabled, like MSD),
  ``distillation_mode="full_logits"``, ``distillation_alpha=1`` (reverse KL), ``num_generations=1``.
* ``distillation``: TRL ``DistillationTrainer`` (the trainer TRL recommends for on-policy distillation) with
  ``beta=1`` (reverse KL) and its chunked loss on hidden states; its teacher is a second copy of the weights.
* ``msd_off_policy``: ``OffPolicyMSDTrainer`` on fixed teacher text.
* ``msd_off_policy_cached``: the same with ``teacher_cache_top_k=20`` (teacher scored once, before the steps).
* ``gkd_off_policy``: ``GKDTrainer`` with ``lmbda=0`` on the same fixed text (a ``messages`` dataset).

The fixed text is generated once, greedily, by the base model under the teacher's context
(``msd_trl.generate_teacher_completions``) and reused by both off-policy runs. The teacher context of MSD and SDFT
is the same text: SDFT's default template ``"{prompt}\\n\\n{privileged_context}"`` with the English query as the
privileged context, and MSD's ``teacher_prompt_template="{prompt}\\n\\n{teacher_prompt}"``, so both teachers read the
same tokens. GKD has no privileged context: its teacher reads the student's prompt.

What is measured, per run (``warmup`` steps first, excluded from every statistic):

* **Step time**: from the moment the Trainer starts fetching the step's batch (``get_batch_samples``) to
  ``on_step_end``. Not from ``on_step_begin``: the Trainer prefetches the batch *before* ``on_step_begin``, and MSD
  generates its rollouts there (to count completion tokens before the loss), so an ``on_step_begin`` timer would
  hide MSD's generation and flatter it.
* **Breakdown**: exclusive ("self") time of named sections per step, measured by wrapping the trainer instance's
  methods and hooking module forwards (``BREAKDOWN_KEYS`` says what each key covers for each trainer); nested
  sections are subtracted from their parent, so the parts add up to at most the step time; ``other`` is the rest.
  Reported as means over the measured steps. On a GPU every section boundary synchronises the device.
* **Peak memory**: on a GPU ``torch.cuda.max_memory_allocated`` (reset at the start of the run); on CPU the peak
  resident set size (RSS), sampled every 20 ms by a background thread from before the models are loaded to the end
  of training. RSS rarely shrinks inside one process, so by default (``--isolate``) each run happens in a fresh
  subprocess and its peak belongs to it alone; ``peak_mem_delta_mb`` subtracts the RSS at the run's start (the
  interpreter and libraries), the CPU analogue of allocated GPU memory.
* **Throughput**: completion tokens scored per measured step (counted from each trainer's loss inputs) divided by
  step time.

On CPU the script sets ``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets it: with OpenMP's default
spin-waiting, torch on a shared machine slows down about a hundredfold whenever another process wants the same cores,
which would make the comparison measure the neighbours instead of the trainers.

Usage::

    python examples/benchmarks/compare_trainers.py --output_dir bench            # full: 8 steps, 32 new tokens
    python examples/benchmarks/compare_trainers.py --quick --output_dir bench    # 3 steps, 16 new tokens
    python examples/benchmarks/compare_trainers.py --output_dir bench --only msd_on_policy,gkd_on_policy

Code: this file is the command line; the work is in the ``trainer_benchmark`` package beside it, by concern:
``settings`` (what the runs share, breakdown keys, targets), ``profiling`` (timers, memory sampler),
``runners`` (rows, fixed text, one trainer per method, a run) and ``report`` (ratios, targets, Markdown).

Writes ``DIR/benchmark.json`` and ``DIR/benchmark.md`` (a table and the ratios against the project's targets), plus
``DIR/work/`` (the rows, fixed completions, per-run results and logs).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP's default spin-waiting turns any competition for the cores into ~100x slower torch ops (a 2-thread forward
# measured 26 ms alone and 4.1 s beside another busy process on a 2-core machine); sleeping waiters cost little.
# Must be set before torch loads libgomp; subprocesses inherit it.
_OMP_POLICY_TOO_LATE = "torch" in sys.modules and "OMP_WAIT_POLICY" not in os.environ
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the trainer_benchmark package beside this script
from trainer_benchmark.profiling import (  # noqa: E402, F401
    PeakRSSSampler,
    StepProfiler,
    instrument,
    measure_memory_bandwidth,
)
from trainer_benchmark.report import _device_description, compute_ratios, evaluate_targets, render_markdown  # noqa: E402, F401
from trainer_benchmark.runners import (  # noqa: E402, F401
    add_fixed_completions,
    build_qwen_shaped_checkpoint,
    build_trainer,
    prepare_rows,
    run_trainer,
)
from trainer_benchmark.settings import (  # noqa: E402, F401
    BREAKDOWN_KEYS,
    DEFAULTS,
    EXTRA_TARGETS,
    LOSS_CHUNK_SIZE,
    OFF_POLICY,
    OPTIONAL_TRAINERS,
    QUICK_DEFAULTS,
    QWEN_SHAPED,
    TARGETS,
    TRAINER_DESCRIPTIONS,
    TRAINERS,
    Settings,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=False, help="where benchmark.json, benchmark.md and work/ go")
    parser.add_argument(
        "--model", default=None,
        help=f"model name or path (default: the embedded SmolLM2-135M); {QWEN_SHAPED!r}: Qwen2.5-0.5B's architecture "
        "with random weights, built once under OUTPUT_DIR/work",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="3 measured steps, 1 warm-up, 16 new tokens")
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument(
        "--gradient_accumulation", type=int, default=None,
        help="micro-batches per optimizer step (default 4: the 4 x 4 headline; --quick: 1)",
    )  # fmt: skip
    parser.add_argument("--max_new_tokens", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="measured steps")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps, excluded from every statistic")
    parser.add_argument("--max_prompt_tokens", type=int, default=None, help="drop rows with longer prompts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--only", default=None,
        help=f"comma-separated subset of {','.join(TRAINERS)} (default: all of them), or opt-in rows: "
        f"{','.join(OPTIONAL_TRAINERS)}",
    )  # fmt: skip
    parser.add_argument(
        "--isolate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run each trainer in a fresh subprocess so its peak RSS is its own (default on)",
    )
    parser.add_argument(
        "--msd_fast_decoding", action=argparse.BooleanOptionalAction, default=True,
        help="on a CPU in float32: MSD rollouts on one torch thread with the adapter merged (MSDConfig."
        "generation_threads=1, merge_adapter_for_generation=True), as the project's CPU configs run; default on",
    )  # fmt: skip
    parser.add_argument(
        "--msd_rollout_batch_size", type=int, default=None,
        help="MSDConfig.rollout_batch_size of the MSD on-policy rows: rows per generate call (default: every rollout "
        "of an optimizer step in one call)",
    )  # fmt: skip
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep DIR/work's rows, fixed teacher text and each trainer's result from an earlier run with the same "
        "settings, and run only the trainers without a result (delete DIR/work/results/NAME.json to re-measure one)",
    )
    parser.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_work_dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._worker is None and args.output_dir is None:
        parser.error("--output_dir is required")
    return args


def settings_from_args(args: argparse.Namespace) -> Settings:
    from msd_trl.models import EMBEDDED_MODEL, resolve_model_name_or_path

    values = {}
    for key, default in DEFAULTS.items():
        given = getattr(args, key)
        values[key] = given if given is not None else QUICK_DEFAULTS.get(key, default) if args.quick else default
    for key in ("batch_size", "gradient_accumulation", "max_new_tokens", "steps", "max_prompt_tokens"):
        if values[key] < 1:
            raise ValueError(f"--{key} must be >= 1, got {values[key]!r}.")
    if args.msd_rollout_batch_size is not None and args.msd_rollout_batch_size < 1:
        raise ValueError(f"--msd_rollout_batch_size must be >= 1, got {args.msd_rollout_batch_size!r}.")
    if values["warmup"] < 0:
        raise ValueError(f"--warmup must be >= 0, got {values['warmup']!r}.")
    trainers = list(TRAINERS)
    if args.only:
        trainers = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = [name for name in trainers if name not in TRAINERS + OPTIONAL_TRAINERS]
        if unknown or not trainers:
            raise ValueError(
                f"--only={args.only!r} names unknown trainers {unknown}; choose from {list(TRAINERS + OPTIONAL_TRAINERS)}."
            )
    model = args.model or EMBEDDED_MODEL
    if model == QWEN_SHAPED:
        model_path = build_qwen_shaped_checkpoint(Path(args.output_dir) / "work" / QWEN_SHAPED)
    else:
        model_path = resolve_model_name_or_path(model)
    fast = args.msd_fast_decoding and not torch.cuda.is_available() and Settings.dtype == "float32"
    return Settings(
        model=model,
        model_path=model_path,
        msd_generation_threads=1 if fast else None,
        msd_merge_adapter_for_generation=fast,
        msd_rollout_batch_size=args.msd_rollout_batch_size,
        seed=args.seed,
        isolate=args.isolate,
        quick=args.quick,
        trainers=trainers,
        **values,
    )


def _run_worker(name: str, work_dir: Path) -> None:
    settings = Settings(**_read_saved_settings(work_dir)[0])
    rows = json.loads((work_dir / "rows.json").read_text())
    result = run_trainer(name, settings, rows, work_dir)
    (work_dir / "results").mkdir(exist_ok=True)
    (work_dir / "results" / f"{name}.json").write_text(json.dumps(result, indent=2))


def _run_isolated(name: str, work_dir: Path) -> dict[str, Any]:
    log_path = work_dir / "logs" / f"{name}.stderr.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--_worker", name, "--_work_dir", str(work_dir)]
    with log_path.open("w") as stderr:
        completed = subprocess.run(command, stderr=stderr, check=False)
    result_path = work_dir / "results" / f"{name}.json"
    if completed.returncode != 0 or not result_path.exists():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        print(f"    {name} FAILED (exit {completed.returncode}); last lines of {log_path}:\n{tail}", flush=True)
        return {"error": f"exit code {completed.returncode}; see {log_path}\n{tail}"}
    return json.loads(result_path.read_text())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the report written to DIR/benchmark.json."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if args._worker is not None:
        _run_worker(args._worker, Path(args._work_dir))
        return {}

    settings = settings_from_args(args)
    output_dir = Path(args.output_dir)
    work_dir = output_dir / "work"
    (work_dir / "results").mkdir(parents=True, exist_ok=True)
    resumed = args.resume and _same_settings(work_dir, settings)
    if not resumed:
        for stale in (work_dir / "results").glob("*.json"):
            stale.unlink()
    start = time.perf_counter()
    print(f"Benchmark on {_device_description()}; model {settings.model}; trainers {settings.trainers}", flush=True)

    fixed_s = None
    if resumed:
        rows = json.loads((work_dir / "rows.json").read_text())
        fixed_s = _read_saved_settings(work_dir)[1]
        print(f"  resuming: {len(rows)} rows and the results in {work_dir / 'results'} kept", flush=True)
    else:
        rows = prepare_rows(settings)
        print(f"  {len(rows)} MultiJail rows (prompts <= {settings.max_prompt_tokens} tokens)", flush=True)
        if any(name in OFF_POLICY for name in settings.trainers):
            fixed_s = add_fixed_completions(rows, settings)
            print(f"  fixed teacher completions for the off-policy runs: {fixed_s:.1f} s", flush=True)
        (work_dir / "rows.json").write_text(json.dumps(rows, ensure_ascii=False, indent=1))
        (work_dir / "settings.json").write_text(
            json.dumps({**asdict(settings), "fixed_completions_s": fixed_s}, indent=2)
        )

    results: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(settings.trainers, 1):
        print(f"[{index}/{len(settings.trainers)}] {name}: {TRAINER_DESCRIPTIONS[name]}", flush=True)
        existing = work_dir / "results" / f"{name}.json"
        if resumed and existing.exists():
            results[name] = json.loads(existing.read_text())
            print(f"    {name}: kept from the earlier run ({existing})", flush=True)
            continue
        if settings.isolate:
            result = _run_isolated(name, work_dir)
        else:
            result = run_trainer(name, settings, rows, work_dir)
        results[name] = result
        if "error" not in result:
            existing.write_text(json.dumps(result, indent=2))  # what --resume keeps
            print(
                f"    {name}: median {result['step_s_median']:.3f} s/step, peak {result['peak_mem_mb']:.0f} MB, "
                f"{result['tokens_per_s']:.1f} completion tok/s, other {100 * result['other_share']:.1f} %",
                flush=True,
            )

    bandwidth = measure_memory_bandwidth()
    vocab_size = json.loads((Path(settings.model_path) / "config.json").read_text()).get("vocab_size", 0)
    ratios = compute_ratios(results, bandwidth_gb_s=bandwidth, large_vocab=vocab_size > 100_000)
    report = {
        "device": _device_description(),
        "model": settings.model,
        "settings": {
            **asdict(settings),
            # No machine's absolute path in a results file: relative to the output folder, or ~ for the home cache.
            "model_path": _portable_path(settings.model_path, output_dir),
            "num_rows": settings.num_rows,
            "label": settings.label,
            "memory_bandwidth_gb_s": bandwidth,
            "vocab_size": vocab_size,
            "fixed_completions_s": fixed_s,
            "omp_wait_policy": _omp_wait_policy(settings),
            "torch_threads": torch.get_num_threads(),
            "breakdown_keys": BREAKDOWN_KEYS,
            "versions": _versions(),
        },
        "results": results,
        "ratios": ratios,
        "targets": evaluate_targets(ratios),
        "wall_s": time.perf_counter() - start,
    }
    (output_dir / "benchmark.json").write_text(json.dumps(report, indent=2))
    markdown = render_markdown(report)
    (output_dir / "benchmark.md").write_text(markdown)
    print(markdown, flush=True)
    return report


def _portable_path(path: str | Path, output_dir: Path) -> str:
    """`path` as it can be written into a results file: relative to `output_dir` when inside it, with `~` for the home
    folder, else as given (a Hub id stays a Hub id)."""
    resolved, base = Path(path).expanduser().resolve(), Path(output_dir).resolve()
    if resolved.is_relative_to(base):
        return str(resolved.relative_to(base))
    if resolved.is_relative_to(Path.home()):
        return str(Path("~") / resolved.relative_to(Path.home()))
    return str(path)


def _read_saved_settings(work_dir: Path) -> tuple[dict[str, Any], float | None]:
    """DIR/work/settings.json: the run's Settings fields, and the seconds its fixed teacher text took."""
    saved = json.loads((work_dir / "settings.json").read_text())
    fixed_s = saved.pop("fixed_completions_s", None)
    return saved, fixed_s


def _same_settings(work_dir: Path, settings: Settings) -> bool:
    """Whether DIR/work holds an earlier run's rows with the same settings (`--resume`); says why not."""
    if not (work_dir / "settings.json").exists() or not (work_dir / "rows.json").exists():
        print(f"  --resume: no earlier run in {work_dir}; starting afresh", flush=True)
        return False
    saved = _read_saved_settings(work_dir)[0]
    saved.pop("trainers", None)  # another subset of trainers is fine: each result stands on its own
    current = json.loads(json.dumps(asdict(settings)))
    current.pop("trainers")
    differing = sorted(key for key in set(saved) | set(current) if saved.get(key) != current.get(key))
    if differing:
        print(
            f"  --resume: settings differ from the earlier run ({', '.join(differing)}); starting afresh", flush=True
        )
        return False
    return True


def _omp_wait_policy(settings: Settings) -> str:
    policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    if _OMP_POLICY_TOO_LATE and not settings.isolate:
        return f"{policy} (too late: torch was loaded before this script, with the OpenMP default)"
    return policy


def _versions() -> dict[str, str]:
    import importlib.metadata

    names = ("torch", "transformers", "trl", "peft", "accelerate")
    return {name: importlib.metadata.version(name) for name in names}


if __name__ == "__main__":
    report = main()
    if any("error" in result for result in report.get("results", {}).values()):
        sys.exit(1)
