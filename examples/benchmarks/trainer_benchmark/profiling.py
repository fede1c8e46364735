"""Measurement: peak memory sampling, per-step timing and the exclusive-time breakdown of named sections."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections import defaultdict
from typing import Any

import psutil
import torch
from transformers import TrainerCallback

from .settings import (
    RSS_INTERVAL_S,
    TRAINERS,
)

logger = logging.getLogger("compare_trainers")


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


class PeakRSSSampler:
    """Samples this process's RSS every `interval` seconds on a daemon thread; `peak_mb` is the largest sample.

    With `section` (a callable naming the section running now, e.g. `StepProfiler.current`), `peak_by_section_mb`
    also keeps the largest sample taken inside each section: which phase of a step sets the peak.
    """

    def __init__(self, interval: float = RSS_INTERVAL_S, section=None):
        self.interval = interval
        self.start_mb = _rss_mb()
        self.peak_mb = self.start_mb
        self.peak_by_section_mb: dict[str, float] = {}
        self._section = section
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            rss = _rss_mb()
            self.peak_mb = max(self.peak_mb, rss)
            if self._section is not None:
                key = self._section() or "outside steps"
                self.peak_by_section_mb[key] = max(self.peak_by_section_mb.get(key, 0.0), rss)

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

    def current(self) -> str | None:
        """The innermost open section (None between sections)."""
        try:  # read from the memory sampler's thread while the step pushes and pops
            return self._stack[-1][0]
        except IndexError:
            return None

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


def measure_memory_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """Copy bandwidth in GB/s (STREAM "copy": read one buffer, write another; best of `repeats`). The floor of a
    decode step is the bytes of weights it must read divided by this."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    source = torch.ones(megabytes * 2**20 // 4, device=device)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        target.copy_(source)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * source.numel() * source.element_size() / best / 1e9


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes a decode step must read: every parameter once (`parameters()` yields tied weights, such as an
    embedding shared with the output head, once)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


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
    elif name == "distillation":
        import trl.trainer.distillation_trainer as distillation_module

        profiler.wrap(trainer, "_generate", "generation")
        # Its loss calls the backbones directly (hidden states, then chunked lm_head projections): hook those.
        teacher = trainer.accelerator.unwrap_model(trainer.teacher_model)
        profiler.hook_forward(teacher.base_model, "teacher_forward")
        student = trainer.accelerator.unwrap_model(trainer.model)
        student = student.base_model.model if hasattr(student, "peft_config") else student
        profiler.hook_forward(student.base_model, "student_forward", skip_inside=("generation", "teacher_forward"))
        profiler.wrap(distillation_module, "_chunked_divergence_loss", "loss")
    else:
        raise ValueError(f"unknown trainer name={name!r}; choose from {list(TRAINERS)}.")
