"""GPU check: does on-policy MSD fit a 7-8B model under QLoRA on one 24 GB GPU, and how does it compare with TRL's
`DistillationTrainer` and `GKDTrainer` at the same settings? One run of at most 8 minutes on a bare, offline GPU
machine (scripts/gpu_check.sh is the entry point; docs/vllm.md#the-gpu-check says how to run it).

Design
------
* **Prepared here, run there.** ``--prepare`` (on a machine with a package index) downloads the wheels a bare
  torch + transformers + peft + accelerate machine lacks: trl, datasets and bitsandbytes at the versions installed
  here, and datasets' small dependencies (dill, multiprocess, xxhash) for several Python versions, into ``wheels/``
  (git-ignored) with a ``requirements.txt`` pinning them. The working tree with ``wheels/`` must stay under 64 MiB;
  the size is checked. The run installs from that folder only (``pip install --no-index --find-links wheels``).
  pyarrow and pandas (datasets' large dependencies, ~55 MB together) are not carried by default; ``--also`` adds
  packages when the GPU machine lacks them too, and the run says plainly which import is missing.
* **Models from a config, no download.** Qwen2.5-7B- and Llama-3-8B-shaped models (the published architectures,
  random weights: memory and speed do not depend on the values) are built on the device in bf16, saved once under
  the work folder with a small byte-level tokenizer built in-process, and loaded by every run the way users load
  theirs: ``msd_trl.load_model(..., load_in_4bit=True)`` (NF4, double quantisation, bf16 compute), LoRA r=16 on all
  linear layers. Random weights never sample the stop id, so every rollout is the full completion budget.
* **The runs are compare_trainers.py's.** Each (shape, trainer) is ``trainer_benchmark.runners.run_trainer``: the
  same trainer set-up, step clock, breakdown keys and peak-memory reading (``torch.cuda.max_memory_allocated``,
  reset per run) as the CPU benchmark, one after another, each in a fresh process on a GPU (compare_trainers'
  worker: an OOM or leftover memory of one run cannot change the next one's peak). Trainers: on-policy MSD with the
  self-teacher (``msd_on_policy``; ``msd_on_policy_chunked`` with ``loss_chunk_size``), ``distillation`` and
  ``gkd_on_policy`` (teacher = a second 4-bit copy, as they need one). Settings: batch 4 x accumulation 4, 512-token
  prompts, 256 new tokens, bf16 compute, gradient checkpointing.
* **Inside 8 minutes.** Runs go in priority order (MSD on both shapes first, then the anchors) and a run is skipped,
  and recorded as skipped, when the time left is less than the previous run of that shape took.
* **The answer.** ``docs/results/gpu_check.json``: per shape and trainer the peak memory in GiB, whether it fits in
  22 GiB (a 24 GB consumer GPU with headroom), step time and its breakdown, rollout tokens/s (completion tokens per
  step / generation seconds per step); per shape the targets (MSD step <= the faster anchor, MSD peak below both).
* ``--tiny``: the same code path on CPU with tiny shapes, 1 step, few tokens (seconds); CI runs it
  (tests/test_gpu_check.py), writing to a temporary folder.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the trainer_benchmark package beside this script

GIB = 2**30
FITS_GIB = 22.0  # a 24 GB consumer GPU, with headroom for the CUDA context and fragmentation
TREE_LIMIT_MIB = 64  # what travels to the GPU machine: the working tree with wheels/
CARRIED = ("trl", "datasets", "bitsandbytes")  # at the versions installed here
SMALL_DEPENDENCIES = ("dill", "multiprocess", "xxhash")  # datasets' dependencies a torch machine lacks (< 1 MB)
PYTHON_VERSIONS = ("3.10", "3.11", "3.12", "3.13")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_24_x86_64")

# The published architectures (config.json of Qwen/Qwen2.5-7B-Instruct and meta-llama/Meta-Llama-3-8B-Instruct).
SHAPES: dict[str, dict[str, Any]] = {
    "qwen2.5-7b-shaped": {
        "model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
        "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
        "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
    },
    "llama-3-8b-shaped": {
        "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "max_position_embeddings": 8192, "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
    },
}  # fmt: skip
# --tiny: the same architectures, a few thousand parameters per layer.
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 1024}  # fmt: skip

# Priority order: MSD on both shapes first (the claim), then the anchors (the comparison).
RUN_ORDER = (
    ("qwen2.5-7b-shaped", "msd_on_policy_chunked"),
    ("llama-3-8b-shaped", "msd_on_policy_chunked"),
    ("qwen2.5-7b-shaped", "msd_on_policy"),
    ("qwen2.5-7b-shaped", "distillation"),
    ("qwen2.5-7b-shaped", "gkd_on_policy"),
    ("llama-3-8b-shaped", "msd_on_policy"),
    ("llama-3-8b-shaped", "distillation"),
    ("llama-3-8b-shaped", "gkd_on_policy"),
)
FULL = {"batch_size": 4, "gradient_accumulation": 4, "prompt_tokens": 512, "max_new_tokens": 256, "steps": 1,
        "warmup": 1, "time_budget_s": 400}  # fmt: skip
TINY_RUN = {"batch_size": 2, "gradient_accumulation": 2, "prompt_tokens": 24, "max_new_tokens": 4, "steps": 1,
            "warmup": 0, "time_budget_s": 600}  # fmt: skip
TEACHER_PROMPT_TOKENS = 48  # the English query beside the long target-language prompt
# MSD's teacher also reads the preset's system prompt and template (the "paper" preset); room for them, so no
# teacher prompt is truncated: MSD's teacher reads that much more than the anchors' teachers, as in real use.
TEACHER_CONTEXT_TOKENS = 512


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepare", action="store_true", help="download the wheels into --wheels_dir and stop")
    parser.add_argument("--wheels_dir", default=str(ROOT / "wheels"))
    parser.add_argument("--also", default="", help="--prepare: more packages to carry, comma-separated")
    parser.add_argument("--dry_run", action="store_true", help="--prepare: print the pip commands, download nothing")
    parser.add_argument("--tiny", action="store_true", help="CPU, tiny shapes, 1 step: the code path in seconds")
    parser.add_argument(
        "--output", default=None, help="JSON path (default: docs/results/gpu_check.json; --tiny: a temp dir)"
    )
    parser.add_argument("--work_dir", default=None, help="checkpoints and run folders (default: a temp dir)")
    parser.add_argument("--only", default=None, help="comma-separated shape:trainer pairs of RUN_ORDER to run")
    for key in ("steps", "warmup", "max_new_tokens", "prompt_tokens", "batch_size", "gradient_accumulation"):
        parser.add_argument(f"--{key}", type=int, default=None)
    parser.add_argument("--time_budget_s", type=float, default=None, help="no run starts when it would end past this")
    parser.add_argument(
        "--isolate", action=argparse.BooleanOptionalAction, default=None,
        help="each run in a fresh process (compare_trainers' worker), so no run's memory or CUDA state leaks into the "
        "next one's peak; default: on with a GPU, off for --tiny",
    )  # fmt: skip
    return parser.parse_args(argv)


# ------------------------------------------------------------------ prepare (here, with an index)


def prepare_commands(wheels_dir: Path, also: list[str]) -> tuple[list[list[str]], list[str]]:
    """The pip download commands and the pinned requirements the run installs."""
    pinned = [f"{name}=={importlib.metadata.version(name)}" for name in CARRIED]
    small = [f"{name}=={importlib.metadata.version(name)}" for name in SMALL_DEPENDENCIES]
    extra = [f"{name}=={importlib.metadata.version(name)}" for name in also]
    base = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(wheels_dir)]
    commands = [base + pinned]  # trl, datasets: pure Python; bitsandbytes: one py3 manylinux wheel
    for version in PYTHON_VERSIONS:  # the compiled ones, for whichever Python the GPU machine has
        platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
        commands.append(base + ["--python-version", version, *platforms, *small, *extra])
    return commands, pinned + small + extra


def tree_size_mib(extra: Path | None = None) -> float:
    """MiB of what travels: the tracked and untracked-not-ignored files, plus `extra` (the wheels folder)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True,
        check=True,
    ).stdout.split(b"\0")  # fmt: skip
    total = sum((ROOT / name.decode()).stat().st_size for name in listed if name and (ROOT / name.decode()).is_file())
    if extra is not None and extra.is_dir():
        total += sum(path.stat().st_size for path in extra.rglob("*") if path.is_file())
    return total / 2**20


def prepare(args: argparse.Namespace) -> int:
    wheels_dir = Path(args.wheels_dir)
    also = [name.strip() for name in args.also.split(",") if name.strip()]
    commands, requirements = prepare_commands(wheels_dir, also)
    if args.dry_run:
        for command in commands:
            print(" ".join(command))
        print("requirements:", " ".join(requirements))
        return 0
    wheels_dir.mkdir(parents=True, exist_ok=True)
    for command in commands:
        subprocess.run(command, check=True)
    (wheels_dir / "requirements.txt").write_text("\n".join(requirements) + "\n")
    wheels_mib = sum(p.stat().st_size for p in wheels_dir.rglob("*") if p.is_file()) / 2**20
    total = tree_size_mib(wheels_dir)
    print(f"{wheels_dir}: {wheels_mib:.1f} MiB of wheels; with the working tree {total:.1f} MiB to carry")
    if total > TREE_LIMIT_MIB:
        print(f"over the {TREE_LIMIT_MIB} MiB a device run carries: drop packages from --also", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------ models and rows (there, offline)


def build_tokenizer(directory: Path):
    """A byte-level BPE tokenizer with ChatML special tokens, trained in-process on a few sentences (no download).
    Random weights sample ids past its vocabulary; decoding drops them, as with compare_trainers' Qwen shape."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    corpus = ["How do I make a cake? What is 12 plus 7?", "Kula ora bisa mbantu.", "Samahani, siwezi kusaidia."] * 4
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=300, min_frequency=2,
                            special_tokens=["<pad>", "<|im_start|>", "<|im_end|>"])  # fmt: skip
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, pad_token="<pad>", eos_token="<|im_end|>", bos_token="<|im_start|>"
    )
    tokenizer.chat_template = (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tokenizer.save_pretrained(directory)
    return tokenizer


def build_checkpoint(shape: str, directory: Path, *, tiny: bool) -> str:
    """A random-weight checkpoint of `shape` with the tokenizer, built once (on the GPU in bf16 when there is one)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if (directory / "config.json").exists():
        return str(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(directory)
    values = dict(SHAPES[shape])
    if tiny:
        values.update(TINY)
    model_type = values.pop("model_type")
    config = AutoConfig.for_model(
        model_type, **values, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )  # fmt: skip
    on_gpu = torch.cuda.is_available()
    torch.manual_seed(0)
    with torch.device("cuda" if on_gpu else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if on_gpu else torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory)
    del model
    gc.collect()
    if on_gpu:
        torch.cuda.empty_cache()
    return str(directory)


def synthetic_rows(tokenizer, count: int, prompt_tokens: int, seed: int = 0) -> list[dict[str, Any]]:
    """MSD rows whose rendered student prompt is `prompt_tokens` tokens (the chat template included) and whose
    English query is about TEACHER_PROMPT_TOKENS tokens; the text is random words (random weights do not read it)."""
    rng = random.Random(seed)
    words = ["kula", "ora", "bisa", "mbantu", "samahani", "siwezi", "kusaidia", "cake", "bom", "piye", "carane"]

    def text_of(tokens: int, prefix: str) -> str:
        text = prefix
        overhead = len(tokenizer.apply_chat_template([{"role": "user", "content": ""}], add_generation_prompt=True))
        while len(tokenizer(text)["input_ids"]) < tokens - overhead:
            text += " " + rng.choice(words)
        while len(tokenizer(text)["input_ids"]) > tokens - overhead:
            text = text[:-1]
        return text

    return [
        {"id": f"synthetic-{i}", "language": "jv", "prompt": text_of(prompt_tokens, f"{i}:"),
         "teacher_prompt": text_of(TEACHER_PROMPT_TOKENS, f"{i}:")}
        for i in range(count)
    ]  # fmt: skip


# ------------------------------------------------------------------ the runs


def missing_imports() -> list[str]:
    """The imports the check needs that fail here (`name: error`), tried one by one before anything runs."""
    import importlib

    needed = ("torch", "transformers", "peft", "accelerate", "pyarrow", "pandas", "datasets", "bitsandbytes", "trl")
    failed = []
    for name in needed:
        try:
            importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - ImportError, or a wheel that does not load on this machine
            failed.append(f"{name}: {type(error).__name__}: {error}")
    return failed


def summarise(name: str, result: dict[str, Any]) -> dict[str, Any]:
    """What the check reports of one run (the whole compare_trainers result is kept under `run`)."""
    if "error" in result or "skipped" in result:
        return result
    generation_s = result["breakdown_s"].get("generation", 0.0)
    peak_gib = result["peak_mem_mb"] / 1024
    return {
        "peak_mem_gib": peak_gib,
        "peak_mem_source": result["peak_mem_source"],
        f"fits_{FITS_GIB:g}_gib": peak_gib <= FITS_GIB,
        "step_s_median": result["step_s_median"],
        "breakdown_s": result["breakdown_s"],
        "rollout_tokens_per_s": result["completion_tokens_per_step"] / generation_s if generation_s > 0 else None,
        "completion_tokens_per_step": result["completion_tokens_per_step"],
        "run": result,
    }


def shape_targets(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's GPU targets for one shape, per MSD row: inside 22 GiB, step <= the faster anchor, peak below both."""
    anchors = [results.get(name, {}) for name in ("distillation", "gkd_on_policy")]
    measured = [a for a in anchors if "peak_mem_gib" in a]
    targets: dict[str, Any] = {}
    for name in ("msd_on_policy_chunked", "msd_on_policy"):
        msd = results.get(name, {})
        if "peak_mem_gib" not in msd:
            continue
        row: dict[str, Any] = {f"fits_{FITS_GIB:g}_gib": msd["peak_mem_gib"] <= FITS_GIB}
        if len(measured) == 2:
            row["step_le_fastest_anchor"] = msd["step_s_median"] <= min(a["step_s_median"] for a in measured)
            row["peak_below_both_anchors"] = all(msd["peak_mem_gib"] < a["peak_mem_gib"] for a in measured)
        else:
            row["anchors"] = "not both measured: no comparison"
        targets[name] = row
    return targets or {"status": "no MSD measurement"}


def run_check(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from compare_trainers import _run_isolated, _versions
    from trainer_benchmark.report import _device_description
    from trainer_benchmark.runners import run_trainer
    from trainer_benchmark.settings import Settings

    from msd_trl import load_tokenizer

    on_gpu = torch.cuda.is_available()
    if not on_gpu and not args.tiny:
        raise SystemExit("gpu_check: no CUDA device; run with --tiny for the CPU code path.")
    plan = dict(TINY_RUN if args.tiny else FULL)
    for key in plan:
        if getattr(args, key, None) is not None:
            plan[key] = getattr(args, key)
    order = list(RUN_ORDER)
    if args.only:
        wanted = [tuple(item.split(":")) for item in args.only.split(",") if item]
        unknown = [item for item in wanted if item not in RUN_ORDER]
        if unknown:
            raise ValueError(f"--only names unknown shape:trainer pairs {unknown}; choose from {list(RUN_ORDER)}")
        order = [item for item in RUN_ORDER if item in wanted]
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="gpu_check_"))
    isolate = on_gpu if args.isolate is None else args.isolate
    start = time.perf_counter()
    rows_needed = plan["batch_size"] * plan["gradient_accumulation"] * (plan["warmup"] + plan["steps"])
    settings_by_shape: dict[str, Settings] = {}
    results: dict[str, dict[str, Any]] = {shape: {} for shape in dict.fromkeys(s for s, _ in order)}
    last_wall: dict[str, float] = {}
    for shape, trainer in order:
        elapsed = time.perf_counter() - start
        estimate = last_wall.get(shape, max(last_wall.values(), default=0.0))  # a first run: the other shape's
        if elapsed + estimate > plan["time_budget_s"]:
            results[shape][trainer] = {"skipped": f"time budget: {elapsed:.0f} s used, the last {shape} run took "
                                                  f"{estimate:.0f} s, budget {plan['time_budget_s']:.0f} s"}  # fmt: skip
            print(f"[gpu_check] {shape} {trainer}: skipped (time budget)", flush=True)
            continue
        run_start = time.perf_counter()
        if shape not in settings_by_shape:
            path = build_checkpoint(shape, work_dir / shape, tiny=args.tiny)
            rows = synthetic_rows(load_tokenizer(path), rows_needed, plan["prompt_tokens"])
            settings_by_shape[shape] = Settings(
                model=shape, model_path=path, batch_size=plan["batch_size"], max_new_tokens=plan["max_new_tokens"],
                steps=plan["steps"], warmup=plan["warmup"], max_prompt_tokens=plan["prompt_tokens"],
                gradient_accumulation=plan["gradient_accumulation"], isolate=False, trainers=[],
                dtype="bfloat16" if on_gpu else "float32", bf16=on_gpu, gradient_checkpointing=True,
                load_in_4bit=True, msd_max_prompt_length=plan["prompt_tokens"] + TEACHER_PROMPT_TOKENS + TEACHER_CONTEXT_TOKENS,
            )  # fmt: skip
            (work_dir / f"{shape}.rows.json").write_text(json.dumps(rows))
        settings = settings_by_shape[shape]
        settings.trainers.append(trainer)
        rows = json.loads((work_dir / f"{shape}.rows.json").read_text())
        print(f"[gpu_check] {shape} {trainer}: {time.perf_counter() - start:.0f} s in", flush=True)
        try:
            if isolate:  # compare_trainers' worker reads the settings and rows from the shape's folder
                saved = {**asdict(settings), "trainers": [trainer], "fixed_completions_s": None}
                (work_dir / shape / "settings.json").write_text(json.dumps(saved))
                (work_dir / shape / "rows.json").write_text(json.dumps(rows))
                result = _run_isolated(trainer, work_dir / shape)
            else:
                result = run_trainer(trainer, settings, rows, work_dir / shape)
        except Exception as error:  # noqa: BLE001 - an OOM or a trainer failure is a result too
            result = {"error": f"{type(error).__name__}: {error}"}
            print(f"[gpu_check] {shape} {trainer}: {result['error']}", flush=True)
        finally:
            gc.collect()
            if on_gpu:
                torch.cuda.empty_cache()
        results[shape][trainer] = summarise(trainer, result)
        last_wall[shape] = time.perf_counter() - run_start
    report = {
        "device": _device_description(),
        "tiny": args.tiny,
        "plan": plan,
        "isolated_runs": isolate,
        "shapes": {shape: {k: v for k, v in SHAPES[shape].items()} for shape in results},
        "settings": {shape: asdict(s) for shape, s in settings_by_shape.items()},
        "results": results,
        "targets": {shape: shape_targets(by_trainer) for shape, by_trainer in results.items()},
        "fits_gib": FITS_GIB,
        "versions": _versions(),
        "wall_s": time.perf_counter() - start,
    }
    output = Path(args.output) if args.output else (
        work_dir / "gpu_check.json" if args.tiny else ROOT / "docs" / "results" / "gpu_check.json"
    )  # fmt: skip
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=str))
    print(f"[gpu_check] wrote {output} in {report['wall_s']:.0f} s", flush=True)
    for shape, by_trainer in results.items():
        for trainer, entry in by_trainer.items():
            if "peak_mem_gib" in entry:
                print(f"  {shape} {trainer}: peak {entry['peak_mem_gib']:.2f} GiB "
                      f"({'fits' if entry[f'fits_{FITS_GIB:g}_gib'] else 'does not fit'} {FITS_GIB:g} GiB), "
                      f"step {entry['step_s_median']:.1f} s", flush=True)  # fmt: skip
            else:
                print(f"  {shape} {trainer}: {entry}", flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.prepare:
        return prepare(args)
    missing = missing_imports()
    if missing:
        print(f"gpu_check: cannot import {missing}. Run scripts/gpu_check.sh (it installs from wheels/, made by "
              "`scripts/gpu_check.sh --prepare`; add packages the GPU machine lacks with --also).", file=sys.stderr)  # fmt: skip
        return 2
    report = run_check(args)
    errors = [(s, t) for s, by in report["results"].items() for t, r in by.items() if "error" in r]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
