"""Benchmark: on-policy and off-policy MSD against TRL's GKD and SDFT trainers, on the same model, rows and settings.

Design
------
Five runs, one after another, each on the same model, the same MultiJail rows (in the same order), batch size,
new-token budget, seed and LoRA adapter (r=16, alpha=32, every linear layer, dropout 0), all in float32 with bf16
and gradient checkpointing off, dropout disabled, sampling at temperature 1.0 (top-p 1, top-k off):

* ``msd_on_policy``: ``OnPolicyMSDTrainer``, self-teacher = the base model with the adapter disabled, MSD's default
  objective (DPSW-weighted reverse KL).
* ``gkd_on_policy``: TRL ``GKDTrainer`` with ``lmbda=1`` (every step samples the student) and ``beta=1`` (reverse
  KL); its teacher is a second copy of the same weights, as GKD needs one.
* ``sdft``: TRL ``SDFTTrainer`` with ``teacher_model_kind="base"`` (adapter disabled, like MSD),
  ``distillation_mode="full_logits"``, ``distillation_alpha=1`` (reverse KL), ``num_generations=1``.
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

Writes ``DIR/benchmark.json`` and ``DIR/benchmark.md`` (a table and the ratios against the project's targets), plus
``DIR/work/`` (the rows, fixed completions, per-run results and logs).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP's default spin-waiting turns any competition for the cores into ~100x slower torch ops (a 2-thread forward
# measured 26 ms alone and 4.1 s beside another busy process on a 2-core machine); sleeping waiters cost little.
# Must be set before torch loads libgomp; subprocesses inherit it.
_OMP_POLICY_TOO_LATE = "torch" in sys.modules and "OMP_WAIT_POLICY" not in os.environ
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import psutil  # noqa: E402
import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from transformers.trainer_callback import PrinterCallback  # noqa: E402

logger = logging.getLogger("compare_trainers")

TRAINERS = ("msd_on_policy", "gkd_on_policy", "sdft", "msd_off_policy", "msd_off_policy_cached", "gkd_off_policy")
OFF_POLICY = ("msd_off_policy", "msd_off_policy_cached", "gkd_off_policy")
TEACHER_CACHE_TOP_K = 20  # = DPSW's top_k, so the cached run's token weights are exact
LANGUAGES = ("jv", "sw", "bn")
# MSD's template, matched to SDFT's default "{prompt}\n\n{privileged_context}" so both teachers read the same text.
MSD_TEACHER_TEMPLATE = "{prompt}\n\n{teacher_prompt}"
SDFT_TEACHER_TEMPLATE = "{prompt}\n\n{privileged_context}"
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"}
LEARNING_RATE = 1e-4
RSS_INTERVAL_S = 0.02

DEFAULTS = {"steps": 8, "warmup": 1, "max_new_tokens": 32, "batch_size": 4, "max_prompt_tokens": 64}
QUICK_DEFAULTS = {"steps": 3, "warmup": 1, "max_new_tokens": 16}

TRAINER_DESCRIPTIONS = {
    "msd_on_policy": "OnPolicyMSDTrainer: self-teacher (adapter disabled), DPSW-weighted reverse KL",
    "gkd_on_policy": "GKDTrainer lmbda=1, beta=1 (reverse KL), teacher = separate copy of the weights",
    "sdft": "SDFTTrainer teacher_model_kind=base, full_logits, distillation_alpha=1 (reverse KL)",
    "msd_off_policy": "OffPolicyMSDTrainer on the fixed teacher text, DPSW-weighted reverse KL",
    "msd_off_policy_cached": "the same with teacher_cache_top_k=20: the teacher's top-20 log-probs computed once "
    "before training (time reported as teacher_cache_s, outside the steps), so steps run only the student",
    "gkd_off_policy": "GKDTrainer lmbda=0, beta=1, on the same fixed text (messages dataset)",
}

BREAKDOWN_KEYS = {
    "data": "fetching and collating the batch (Trainer.get_batch_samples; for SDFT also _prepare_training_batch): "
    "tokenising prompts, padding, completion bookkeeping, outside the sections below",
    "generation": "sampling student completions: MSD generate_completions, GKD generate_on_policy_outputs, SDFT "
    "_generate (0 for off-policy runs)",
    "student_forward": "the student's forward on prompt + completion (forward hooks on the trained model, outside "
    "generation and teacher scoring)",
    "teacher_forward": "the teacher's no-grad forward: MSD teacher_logits (adapter disabled), GKD teacher_model "
    "forward (a separate copy), SDFT the forward under _get_teacher_context_for_self_distillation",
    "loss": "the divergence on the logits: MSD divergence.compute (DPSW weights + reverse KL), GKD "
    "generalized_jsd_loss, SDFT _compute_self_distillation_loss (includes its metric gather)",
    "metrics": "MSD _log_step_metrics (argmax agreement, weight stats, gather); GKD and SDFT have no separate call",
    "backward": "accelerator.backward(loss)",
    "optimizer": "optimizer.step(), between on_pre_optimizer_step and on_optimizer_step",
    "other": "step time minus every part above: Trainer bookkeeping, gradient clipping, zero_grad, scheduler, "
    "tensor glue inside compute_loss",
}

# (ratio key, threshold, description); a target passes when ratio <= threshold.
TARGETS = (
    ("on_policy_vs_sdft_step", 0.9, "on-policy MSD step time <= 0.9 x SDFT"),
    ("on_policy_vs_gkd_step", 0.75, "on-policy MSD step time <= 0.75 x GKD (lmbda=1)"),
    ("on_policy_vs_gkd_mem", 0.65, "on-policy MSD peak memory <= 0.65 x GKD (lmbda=1)"),
    ("off_policy_vs_gkd_step", 0.7, "off-policy MSD step time <= 0.7 x GKD (lmbda=0)"),
    ("off_policy_cached_vs_gkd_step", 0.7, "same, with the teacher top-K cache (teacher_cache_top_k=20)"),
    ("on_policy_other_share", 0.10, "'other' time <= 10 % of the on-policy MSD step"),
)
# Informational: the same memory ratio without the interpreter and libraries (CPU: RSS at the run's start).
EXTRA_TARGETS = (("on_policy_vs_gkd_mem_delta", 0.65, "same, peak memory above the run's starting RSS"),)


@dataclass
class Settings:
    """Everything the runs share; written to benchmark.json."""

    model: str
    model_path: str
    batch_size: int
    max_new_tokens: int
    steps: int
    warmup: int
    max_prompt_tokens: int
    seed: int = 0
    isolate: bool = True
    quick: bool = False
    trainers: list[str] = field(default_factory=lambda: list(TRAINERS))
    languages: list[str] = field(default_factory=lambda: list(LANGUAGES))
    dtype: str = "float32"
    bf16: bool = False
    gradient_checkpointing: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    learning_rate: float = LEARNING_RATE
    lora: dict[str, Any] = field(default_factory=lambda: dict(LORA))
    msd_teacher_prompt_template: str = MSD_TEACHER_TEMPLATE
    sdft_teacher_prompt_template: str = SDFT_TEACHER_TEMPLATE
    fixed_completions: str = "greedy, base model (no adapter) under MSD's teacher context, max_new_tokens"

    @property
    def num_rows(self) -> int:
        return self.batch_size * (self.warmup + self.steps)


# --------------------------------------------------------------------------------------------------------------
# measurement
# --------------------------------------------------------------------------------------------------------------


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


class PeakRSSSampler:
    """Samples this process's RSS every `interval` seconds on a daemon thread; `peak_mb` is the largest sample."""

    def __init__(self, interval: float = RSS_INTERVAL_S):
        self.interval = interval
        self.start_mb = _rss_mb()
        self.peak_mb = self.start_mb
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, _rss_mb())

    def __enter__(self) -> PeakRSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, _rss_mb())


class StepProfiler:
    """Exclusive time of named sections within each optimizer step, plus the step's wall time and token count.

    Sections nest on a stack: entering a section pauses its parent, so each key gets its own ("self") time and the
    parts never add up to more than the step. A section given `skip_inside` is not timed when one of those keys is
    already open (e.g. a hook on the student model that fires during teacher scoring under PEFT, where both are
    the same module).
    """

    def __init__(self, sync: bool = False):
        self._sync = torch.cuda.synchronize if sync else (lambda: None)
        self._stack: list[list] = []  # [key, resumed_at]
        self._current: dict[str, float] = defaultdict(float)
        self._step_start: float | None = None
        self._tokens = 0
        self.steps: list[dict[str, Any]] = []

    # ---- sections
    def push(self, key: str) -> None:
        self._sync()
        now = time.perf_counter()
        if self._stack:
            parent = self._stack[-1]
            self._current[parent[0]] += now - parent[1]
        self._stack.append([key, now])

    def pop(self) -> None:
        self._sync()
        now = time.perf_counter()
        key, resumed_at = self._stack.pop()
        self._current[key] += now - resumed_at
        if self._stack:
            self._stack[-1][1] = now

    def inside(self, keys) -> bool:
        return any(entry[0] in keys for entry in self._stack)

    @contextlib.contextmanager
    def section(self, key: str, skip_inside: tuple[str, ...] = ()):
        if skip_inside and self.inside(skip_inside):
            yield
            return
        self.push(key)
        try:
            yield
        finally:
            self.pop()

    def wrap(self, obj: Any, name: str, key: str, skip_inside: tuple[str, ...] = ()) -> None:
        """Time `obj.name(...)` as `key` by shadowing it with an instance attribute (the class is untouched)."""
        original = getattr(obj, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            with self.section(key, skip_inside):
                return original(*args, **kwargs)

        setattr(obj, name, timed)

    def hook_forward(self, module: torch.nn.Module, key: str, skip_inside: tuple[str, ...] = ()) -> None:
        """Time every forward of `module` as `key` (pre- and post-forward hooks)."""
        opened: list[bool] = []

        def before(_module, _args):
            skip = self.inside((key, *skip_inside))
            opened.append(not skip)
            if not skip:
                self.push(key)

        def after(_module, _args, _output):
            if opened.pop():
                self.pop()

        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)

    # ---- steps
    def mark_step_start(self) -> None:
        if self._step_start is None:
            self._sync()
            self._step_start = time.perf_counter()

    def add_tokens(self, count: int) -> None:
        self._tokens += int(count)

    def end_step(self) -> dict[str, Any]:
        self._sync()
        now = time.perf_counter()
        start = self._step_start if self._step_start is not None else now
        record = {"step_s": now - start, "tokens": self._tokens, "sections": dict(self._current)}
        self.steps.append(record)
        self._current = defaultdict(float)
        self._tokens = 0
        self._step_start = None
        return record


class _ProfilerCallback(TrainerCallback):
    """Step boundaries, the optimizer section and a progress line per step."""

    def __init__(self, profiler: StepProfiler, name: str, warmup: int, total: int):
        self.profiler = profiler
        self.name = name
        self.warmup = warmup
        self.total = total

    def on_step_begin(self, args, state, control, **kwargs):
        self.profiler.mark_step_start()  # fallback; get_batch_samples marks the start earlier

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.profiler.push("optimizer")

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.profiler.pop()

    def on_step_end(self, args, state, control, **kwargs):
        record = self.profiler.end_step()
        index = len(self.profiler.steps)
        phase = "warm-up" if index <= self.warmup else "measured"
        print(
            f"    {self.name}: step {index}/{self.total} ({phase}) {record['step_s']:.3f} s, "
            f"{record['tokens']} completion tokens",
            flush=True,
        )


def _count_completion_tokens(inputs: dict[str, Any]) -> int:
    """Completion tokens the loss scores: MSD and SDFT carry `completion_mask`, GKD `labels` (-100 = ignored)."""
    if "completion_mask" in inputs:
        return int(inputs["completion_mask"].sum().item())
    if "labels" in inputs:
        return int((inputs["labels"][:, 1:] != -100).sum().item())  # GKD shifts labels by one inside its loss
    raise ValueError(f"cannot count completion tokens: the loss inputs have keys {sorted(inputs)}.")


def instrument(trainer, name: str, profiler: StepProfiler) -> None:
    """Attach timers to one trainer instance (see BREAKDOWN_KEYS)."""
    original_get_batch_samples = trainer.get_batch_samples

    def get_batch_samples(*args, **kwargs):
        profiler.mark_step_start()  # the step begins here: MSD generates inside this call
        with profiler.section("data"):
            return original_get_batch_samples(*args, **kwargs)

    trainer.get_batch_samples = get_batch_samples

    original_compute_loss = trainer.compute_loss

    def compute_loss(model, inputs, *args, **kwargs):
        profiler.add_tokens(_count_completion_tokens(inputs))
        return original_compute_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = compute_loss
    profiler.wrap(trainer.accelerator, "backward", "backward")
    profiler.hook_forward(trainer.model, "student_forward", skip_inside=("generation", "teacher_forward"))

    if name.startswith("msd"):
        profiler.wrap(trainer, "generate_completions", "generation")
        profiler.wrap(trainer, "teacher_logits", "teacher_forward")
        profiler.wrap(trainer.divergence, "compute", "loss")
        profiler.wrap(trainer, "_log_step_metrics", "metrics")
    elif name.startswith("gkd"):
        profiler.wrap(trainer, "generate_on_policy_outputs", "generation")  # a staticmethod, looked up on self
        profiler.hook_forward(trainer.teacher_model, "teacher_forward")
        profiler.wrap(trainer, "generalized_jsd_loss", "loss")
    elif name == "sdft":
        profiler.wrap(trainer, "_generate", "generation")
        profiler.wrap(trainer, "_prepare_training_batch", "data")
        profiler.wrap(trainer, "_compute_self_distillation_loss", "loss")
        original_teacher_context = trainer._get_teacher_context_for_self_distillation

        # SDFT runs exactly the teacher forward inside this context (`with torch.no_grad(), <context>:`).
        @contextlib.contextmanager
        def teacher_context():
            with profiler.section("teacher_forward"), original_teacher_context():
                yield

        trainer._get_teacher_context_for_self_distillation = teacher_context
    else:
        raise ValueError(f"unknown trainer name={name!r}; choose from {list(TRAINERS)}.")


# --------------------------------------------------------------------------------------------------------------
# data and trainers
# --------------------------------------------------------------------------------------------------------------


def prepare_rows(settings: Settings) -> list[dict[str, Any]]:
    """The benchmark rows: MultiJail train-split queries whose prompts fit `max_prompt_tokens`, the first N."""
    from msd_trl import build_safety_mix, load_tokenizer

    tokenizer = load_tokenizer(settings.model_path)
    dataset = build_safety_mix(
        settings.languages,
        [],
        seed=settings.seed,
        tokenizer=tokenizer,
        max_prompt_tokens=settings.max_prompt_tokens,
    )
    if len(dataset) < settings.num_rows:
        raise ValueError(
            f"max_prompt_tokens={settings.max_prompt_tokens} leaves {len(dataset)} MultiJail rows, fewer than the "
            f"{settings.num_rows} needed (batch_size x (warmup + steps)); raise --max_prompt_tokens."
        )
    dataset = dataset.select(range(settings.num_rows))
    return [{key: row[key] for key in ("id", "language", "prompt", "teacher_prompt")} for row in dataset]


def add_fixed_completions(rows: list[dict[str, Any]], settings: Settings) -> float:
    """Greedy teacher text for the off-policy runs, generated once; returns the seconds it took."""
    from datasets import Dataset

    from msd_trl import generate_teacher_completions, load_model, load_tokenizer

    start = time.perf_counter()
    model = load_model(settings.model_path, dtype=settings.dtype)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    dataset = generate_teacher_completions(
        model,
        Dataset.from_list(rows),
        load_tokenizer(settings.model_path),
        teacher_prompt_template=settings.msd_teacher_prompt_template,
        max_new_tokens=settings.max_new_tokens,
        do_sample=False,
        batch_size=settings.batch_size,
        seed=settings.seed,
    )
    for row, text in zip(rows, dataset["teacher_completion"]):
        row["teacher_completion"] = text
    del model
    return time.perf_counter() - start


def _common_args(settings: Settings, output_dir: Path) -> dict[str, Any]:
    return {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": settings.batch_size,
        "gradient_accumulation_steps": 1,
        "max_steps": settings.warmup + settings.steps,
        "learning_rate": settings.learning_rate,
        "bf16": settings.bf16,
        "activation_checkpointing": settings.gradient_checkpointing,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
        "disable_dropout": True,
        "seed": settings.seed,
        "temperature": settings.temperature,
        "dataloader_num_workers": 0,
    }


def build_trainer(name: str, settings: Settings, rows: list[dict[str, Any]], output_dir: Path, callbacks: list):
    """One trainer, on a freshly loaded model, set up as the module docstring says."""
    from datasets import Dataset
    from transformers import set_seed
    from trl.experimental.gkd import GKDConfig, GKDTrainer
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer

    from msd_trl import (
        MSDConfig,
        OffPolicyMSDTrainer,
        OnPolicyMSDTrainer,
        default_lora_config,
        load_model,
        load_tokenizer,
    )

    set_seed(settings.seed)
    tokenizer = load_tokenizer(settings.model_path)
    model = load_model(settings.model_path, dtype=settings.dtype)
    peft_config = default_lora_config(**settings.lora)  # a fresh one per run: trainers may edit it
    common = _common_args(settings, output_dir)

    if name in ("msd_on_policy", "msd_off_policy", "msd_off_policy_cached"):
        args = MSDConfig(
            teacher_cache_top_k=TEACHER_CACHE_TOP_K if name == "msd_off_policy_cached" else None,
            **common,
            max_new_tokens=settings.max_new_tokens,
            top_p=settings.top_p,
            top_k=settings.top_k,
            lmbda=1.0,
            teacher_prompt_template=settings.msd_teacher_prompt_template,
            train_sampling_strategy="sequential",
        )
        columns = ("id", "language", "prompt", "teacher_prompt")
        if name != "msd_on_policy":
            columns += ("teacher_completion",)
        dataset = Dataset.from_list([{key: row[key] for key in columns} for row in rows])
        trainer_cls = OnPolicyMSDTrainer if name == "msd_on_policy" else OffPolicyMSDTrainer
        return trainer_cls(
            model=model,
            teacher_model=None,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=callbacks,
            peft_config=peft_config,
        )

    if name in ("gkd_on_policy", "gkd_off_policy"):
        args = GKDConfig(
            **common,
            max_new_tokens=settings.max_new_tokens,
            lmbda=1.0 if name == "gkd_on_policy" else 0.0,
            beta=1.0,
            train_sampling_strategy="sequential",
        )
        # On-policy GKD replaces the assistant turn with a rollout; the collator still needs one.
        dataset = Dataset.from_list(
            [
                {
                    "messages": [
                        {"role": "user", "content": row["prompt"]},
                        {"role": "assistant", "content": row.get("teacher_completion", "")},
                    ]
                }
                for row in rows
            ]
        )
        teacher = load_model(settings.model_path, dtype=settings.dtype)
        return GKDTrainer(
            model=model,
            teacher_model=teacher,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=callbacks,
            peft_config=peft_config,
        )

    if name == "sdft":
        args = SDFTConfig(
            **common,
            max_completion_length=settings.max_new_tokens,
            num_generations=1,
            top_p=settings.top_p,
            top_k=settings.top_k,
            teacher_model_kind="base",
            distillation_mode="full_logits",
            distillation_alpha=1.0,
            teacher_prompt_template=settings.sdft_teacher_prompt_template,
            shuffle_dataset=False,
        )
        dataset = Dataset.from_list(
            [
                {"prompt": [{"role": "user", "content": row["prompt"]}], "privileged_context": row["teacher_prompt"]}
                for row in rows
            ]
        )
        return SDFTTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=callbacks,
            peft_config=peft_config,
        )
    raise ValueError(f"unknown trainer name={name!r}; choose from {list(TRAINERS)}.")


def _summarise_steps(steps: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    measured = steps[warmup:]
    if not measured:
        raise ValueError(f"no measured steps: {len(steps)} steps ran and warmup={warmup}.")
    step_times = [s["step_s"] for s in measured]
    step_mean = statistics.fmean(step_times)
    keys = [k for k in BREAKDOWN_KEYS if k != "other"]
    breakdown = {k: statistics.fmean(s["sections"].get(k, 0.0) for s in measured) for k in keys}
    breakdown["other"] = step_mean - sum(breakdown.values())
    tokens = sum(s["tokens"] for s in measured)
    return {
        "step_s_median": statistics.median(step_times),
        "step_s_mean": step_mean,
        "step_s_measured": step_times,
        "step_s_warmup": [s["step_s"] for s in steps[:warmup]],
        "tokens_per_s": tokens / sum(step_times) if sum(step_times) > 0 else 0.0,
        "completion_tokens_per_step": tokens / len(measured),
        "breakdown_s": breakdown,
        "other_share": breakdown["other"] / step_mean if step_mean > 0 else 0.0,
    }


def run_trainer(name: str, settings: Settings, rows: list[dict[str, Any]], work_dir: Path) -> dict[str, Any]:
    """Build, instrument and train one trainer; returns its measurements."""
    import gc

    on_gpu = torch.cuda.is_available()
    total = settings.warmup + settings.steps
    profiler = StepProfiler(sync=on_gpu)
    callback = _ProfilerCallback(profiler, name, settings.warmup, total)
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with PeakRSSSampler() as rss:
        trainer = build_trainer(name, settings, rows, work_dir / "runs" / name, [callback])
        build_s = time.perf_counter() - start
        trainer.remove_callback(PrinterCallback)  # its per-step log dicts would drown the progress lines
        instrument(trainer, name, profiler)
        trainer.train()
    wall_s = time.perf_counter() - start
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    result: dict[str, Any] = {
        "trainer": type(trainer).__name__,
        "description": TRAINER_DESCRIPTIONS[name],
        **_summarise_steps(profiler.steps, settings.warmup),
        "peak_rss_mb": rss.peak_mb,
        "rss_start_mb": rss.start_mb,
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "trainable_dtypes": sorted({str(p.dtype) for p in trainer.model.parameters() if p.requires_grad}),
        "final_loss": losses[-1] if losses else None,
        "build_s": build_s,
        "wall_s": wall_s,
    }
    if on_gpu:
        result["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["peak_mem_source"] = "torch.cuda.max_memory_allocated"
        result["peak_mem_delta_mb"] = result["peak_mem_mb"]
    else:
        result["peak_mem_mb"] = rss.peak_mb
        result["peak_mem_source"] = "peak RSS (sampled every 20 ms)"
        result["peak_mem_delta_mb"] = rss.peak_mb - rss.start_mb
    del trainer
    gc.collect()
    if on_gpu:
        torch.cuda.empty_cache()
    return result


# --------------------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------------------


def _ratio(results: dict[str, Any], a: str, b: str, key: str) -> float | None:
    if a not in results or b not in results or "error" in results[a] or "error" in results[b]:
        return None
    denominator = results[b][key]
    return results[a][key] / denominator if denominator else None


def compute_ratios(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """The ratios the targets are stated in (None where a run is missing or failed)."""
    msd = results.get("msd_on_policy", {})
    msd_off = results.get("msd_off_policy", {})
    return {
        "on_policy_vs_gkd_step": _ratio(results, "msd_on_policy", "gkd_on_policy", "step_s_median"),
        "on_policy_vs_sdft_step": _ratio(results, "msd_on_policy", "sdft", "step_s_median"),
        "on_policy_vs_gkd_mem": _ratio(results, "msd_on_policy", "gkd_on_policy", "peak_mem_mb"),
        "off_policy_vs_gkd_step": _ratio(results, "msd_off_policy", "gkd_off_policy", "step_s_median"),
        "off_policy_cached_vs_gkd_step": _ratio(results, "msd_off_policy_cached", "gkd_off_policy", "step_s_median"),
        "on_policy_vs_gkd_mem_delta": _ratio(results, "msd_on_policy", "gkd_on_policy", "peak_mem_delta_mb"),
        "on_policy_other_share": msd.get("other_share") if "error" not in msd else None,
        "off_policy_other_share": msd_off.get("other_share") if "error" not in msd_off else None,
    }


def evaluate_targets(ratios: dict[str, float | None]) -> dict[str, dict[str, Any]]:
    """PASS when the ratio is at most the threshold, MISS when above, n/a when it could not be computed."""
    verdicts = {}
    for key, threshold, description in TARGETS + EXTRA_TARGETS:
        value = ratios.get(key)
        status = "n/a" if value is None else ("PASS" if value <= threshold else "MISS")
        verdicts[key] = {"value": value, "threshold": threshold, "status": status, "target": description}
    return verdicts


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render_markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    lines = [
        "# MSD vs GKD vs SDFT: step time, memory, throughput",
        "",
        f"Device: {report['device']}. Model: `{report['model']}`. Batch {settings['batch_size']}, "
        f"{settings['max_new_tokens']} new tokens, {settings['steps']} measured steps after {settings['warmup']} "
        f"warm-up, prompts <= {settings['max_prompt_tokens']} tokens, float32, LoRA r={settings['lora']['r']} "
        f"alpha={settings['lora']['lora_alpha']} all-linear, temperature {settings['temperature']}, "
        f"{'one subprocess per trainer' if settings['isolate'] else 'all trainers in one process'}, "
        f"OMP_WAIT_POLICY={settings['omp_wait_policy']}, {settings['torch_threads']} torch threads. "
        f"Total wall time {report['wall_s']:.1f} s.",
        "",
        "| trainer | step s (median) | step s (mean) | peak mem MB | peak mem delta MB | completion tok/step "
        "| tok/s | " + " | ".join(BREAKDOWN_KEYS) + " |",
        "|" + " --- |" * (7 + len(BREAKDOWN_KEYS)),
    ]
    for name, result in report["results"].items():
        if "error" in result:
            lines.append(f"| {name} | failed: {result['error'].splitlines()[-1][:120]} |")
            continue
        parts = " | ".join(_fmt(result["breakdown_s"][k]) for k in BREAKDOWN_KEYS)
        lines.append(
            f"| {name} | {_fmt(result['step_s_median'])} | {_fmt(result['step_s_mean'])} "
            f"| {_fmt(result['peak_mem_mb'], 0)} | {_fmt(result['peak_mem_delta_mb'], 0)} "
            f"| {_fmt(result['completion_tokens_per_step'], 1)} | {_fmt(result['tokens_per_s'], 1)} | {parts} |"
        )
    lines += ["", "## Targets", "", "| target | ratio | threshold | result |", "| --- | --- | --- | --- |"]
    for key, verdict in report["targets"].items():
        informational = " (informational)" if key in {k for k, _, _ in EXTRA_TARGETS} else ""
        lines.append(
            f"| {verdict['target']}{informational} (`{key}`) | {_fmt(verdict['value'])} | {verdict['threshold']} "
            f"| {verdict['status']} |"
        )
    lines += ["", "## What each run is", ""]
    lines += [f"- `{name}`: {TRAINER_DESCRIPTIONS[name]}" for name in report["results"]]
    lines += ["", "## Breakdown keys (seconds per measured step, means)", ""]
    lines += [f"- `{key}`: {meaning}" for key, meaning in BREAKDOWN_KEYS.items()]
    lines += [
        "",
        "Step time runs from the Trainer's batch fetch (`get_batch_samples`, where MSD generates) to `on_step_end`. "
        f"Peak memory: {next(iter(report['results'].values()), {}).get('peak_mem_source', 'n/a')}; the delta "
        "column subtracts the run's starting RSS (CPU) and equals the peak on a GPU. Completion lengths are sampled, "
        "so they differ between on-policy runs: compare tok/s as well as step time.",
        "",
    ]
    return "\n".join(lines)


def _device_description() -> str:
    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return (
        f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    )


# --------------------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=False, help="where benchmark.json, benchmark.md and work/ go")
    parser.add_argument("--model", default=None, help="model name or path (default: the embedded SmolLM2-135M)")
    parser.add_argument("--quick", action="store_true", help="3 measured steps, 1 warm-up, 16 new tokens")
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--max_new_tokens", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="measured steps")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps, excluded from every statistic")
    parser.add_argument("--max_prompt_tokens", type=int, default=None, help="drop rows with longer prompts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(TRAINERS)}")
    parser.add_argument(
        "--isolate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run each trainer in a fresh subprocess so its peak RSS is its own (default on)",
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
    for key in ("batch_size", "max_new_tokens", "steps", "max_prompt_tokens"):
        if values[key] < 1:
            raise ValueError(f"--{key} must be >= 1, got {values[key]!r}.")
    if values["warmup"] < 0:
        raise ValueError(f"--warmup must be >= 0, got {values['warmup']!r}.")
    trainers = list(TRAINERS)
    if args.only:
        trainers = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = [name for name in trainers if name not in TRAINERS]
        if unknown or not trainers:
            raise ValueError(f"--only={args.only!r} names unknown trainers {unknown}; choose from {list(TRAINERS)}.")
    model = args.model or EMBEDDED_MODEL
    return Settings(
        model=model,
        model_path=resolve_model_name_or_path(model),
        seed=args.seed,
        isolate=args.isolate,
        quick=args.quick,
        trainers=trainers,
        **values,
    )


def _run_worker(name: str, work_dir: Path) -> None:
    settings = Settings(**json.loads((work_dir / "settings.json").read_text()))
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
    for stale in (work_dir / "results").glob("*.json"):
        stale.unlink()
    start = time.perf_counter()
    print(f"Benchmark on {_device_description()}; model {settings.model}; trainers {settings.trainers}", flush=True)

    rows = prepare_rows(settings)
    print(f"  {len(rows)} MultiJail rows (prompts <= {settings.max_prompt_tokens} tokens)", flush=True)
    fixed_s = None
    if any(name in OFF_POLICY for name in settings.trainers):
        fixed_s = add_fixed_completions(rows, settings)
        print(f"  fixed teacher completions for the off-policy runs: {fixed_s:.1f} s", flush=True)
    (work_dir / "rows.json").write_text(json.dumps(rows, ensure_ascii=False, indent=1))
    (work_dir / "settings.json").write_text(json.dumps(asdict(settings), indent=2))

    results: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(settings.trainers, 1):
        print(f"[{index}/{len(settings.trainers)}] {name}: {TRAINER_DESCRIPTIONS[name]}", flush=True)
        if settings.isolate:
            result = _run_isolated(name, work_dir)
        else:
            result = run_trainer(name, settings, rows, work_dir)
        results[name] = result
        if "error" not in result:
            print(
                f"    {name}: median {result['step_s_median']:.3f} s/step, peak {result['peak_mem_mb']:.0f} MB, "
                f"{result['tokens_per_s']:.1f} completion tok/s, other {100 * result['other_share']:.1f} %",
                flush=True,
            )

    ratios = compute_ratios(results)
    report = {
        "device": _device_description(),
        "model": settings.model,
        "settings": {
            **asdict(settings),
            "num_rows": settings.num_rows,
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
