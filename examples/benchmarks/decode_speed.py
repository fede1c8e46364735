"""Rollout decoding against the memory-bandwidth floor: tokens/s per generation batch size and per decode path.

On-policy MSD spends most of a step sampling student completions (docs/performance.md). A decode step on a CPU
must at least read every weight once, so its floor is (bytes of weights) / (memory bandwidth); this script
measures how close `generate` gets to it and what closes the gap. Each cell samples `--max_new_tokens` tokens
(exactly: `min_new_tokens` is set, so every row of every batch decodes the same number of steps) for a batch of
MultiJail prompts (jv, sw, bn, rendered with the chat template, at most `--max_prompt_tokens`), with the LoRA
adapter a training run has (r=16 on every linear layer, freshly initialised: speed does not depend on values).

Decode paths (`--variants`, each a ``+``-joined set of options, e.g. ``merged+static``):

- ``peft``: the trainer's default: the PEFT model generates with the adapter active (two extra small
  matmuls per adapted layer per step);
- ``merged``: the adapter merged into the base weights for the generate call and unmerged after (the
  merge/unmerge time is counted in the cell; `MSDConfig.merge_adapter_for_generation`);
- ``static``: a static KV cache (``cache_implementation="static"``) instead of the dynamic one;
- ``compiled``: ``static`` plus transformers' compiled decode step (``torch.compile`` through
  ``generation_config.compile_config``; the first call, with the compile, is reported as ``warmup_s``).

Thread counts for the decode steps (`--threads`, `MSDConfig.generation_threads`) are a separate axis; the prefill
(one forward over the prompts) always runs on torch's thread count, as in the trainer.

Per cell: the prefill time (a 1-token generate), the time per decode step ((T(n) - T(1)) / (n - 1), best of
`--repeats` after a warm-up), completion tokens/s, and the floor ratio (floor / measured decode step; 1.0 means
generation reads the weights at copy bandwidth). The bandwidth is a STREAM-like copy (trainer_benchmark). A
larger batch does more arithmetic per weight read, so each cell also reports a compute floor (2 x parameters x
batch multiply-adds at the matrix-product rate this machine reaches on the cell's thread count, measured on one
large float32 product) and `roofline_ratio`: max(bandwidth floor, compute floor) / measured decode step.

Usage::

    python examples/benchmarks/decode_speed.py --output_dir outputs/decode
    python examples/benchmarks/decode_speed.py --output_dir outputs/decode --batch_sizes 1,4,16,64 --variants peft,merged

Writes ``DIR/decode_speed.json`` and prints a table. Nothing else may run on the machine while it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the trainer_benchmark package beside this script
from trainer_benchmark.profiling import measure_memory_bandwidth, weight_bytes  # noqa: E402

VARIANTS = ("peft", "merged", "merged+static", "merged+compiled")
OPTIONS = ("peft", "merged", "static", "compiled")
LANGUAGES = ("jv", "sw", "bn")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--model", default=None, help="model name or path (default: the embedded SmolLM2-135M)")
    parser.add_argument("--batch_sizes", default="1,4,16,32", help="comma-separated generation batch sizes")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--max_prompt_tokens", type=int, default=64, help="rendered prompt tokens, at most")
    parser.add_argument(
        "--threads",
        default=None,
        help="comma-separated torch thread counts for the generate call (default: torch's and 1)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats per cell after one warm-up (best kept)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    args.variants = [v for v in args.variants.split(",") if v]
    default_threads = torch.get_num_threads()
    args.threads = [int(t) for t in (args.threads or f"{default_threads},1").split(",") if t]
    args.threads = list(dict.fromkeys(args.threads))
    unknown = sorted({option for v in args.variants for option in v.split("+")} - set(OPTIONS))
    if unknown:
        parser.error(f"--variants: unknown options {unknown}; join any of {list(OPTIONS)} with '+'")
    if any(t < 1 for t in args.threads):
        parser.error(f"--threads must be positive, got {args.threads}")
    if any(b < 1 for b in args.batch_sizes):
        parser.error(f"--batch_sizes must be positive, got {args.batch_sizes}")
    if args.max_new_tokens < 2:
        parser.error(f"--max_new_tokens must be at least 2 (one prefill, one decode step), got {args.max_new_tokens}")
    return args


def load_prompts(tokenizer, count: int, max_prompt_tokens: int, seed: int) -> list[list[int]]:
    """`count` rendered student prompts (token ids), MultiJail train split, at most `max_prompt_tokens` each."""
    from msd_trl import build_safety_mix
    from msd_trl.rendering import render_student_messages, tokenize_messages

    dataset = build_safety_mix(
        list(LANGUAGES), [], seed=seed, tokenizer=tokenizer, max_prompt_tokens=max_prompt_tokens
    )
    if len(dataset) < count:
        raise ValueError(
            f"--max_prompt_tokens={max_prompt_tokens} leaves {len(dataset)} prompts, fewer than the largest batch "
            f"({count}); raise --max_prompt_tokens or lower --batch_sizes"
        )
    return [tokenize_messages(tokenizer, render_student_messages(row)) for row in dataset.select(range(count))]


def _ratio(value: float | None) -> str:
    """A ratio for the console; "n/a" when the decode step was not measurable (at 3 tokens on a loaded machine the
    prefill can take the whole generate time)."""
    return "n/a" if value is None else f"{value:.2f}"


def generation_kwargs(variant: str, new_tokens: int, pad_id: int) -> dict[str, Any]:
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import CompileConfig

    config = GenerationConfig(
        do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
        pad_token_id=pad_id,
    )  # fmt: skip
    options = set(variant.split("+"))
    if options & {"static", "compiled"}:
        config.cache_implementation = "static"
    if "compiled" in options:
        compile_config = CompileConfig(fullgraph=False, dynamic=False, mode="default")
        compile_config._compile_all_devices = True  # transformers compiles only on accelerators unless told to
        config.compile_config = compile_config
    else:
        config.disable_compile = True
    return {"generation_config": config}


def timed_generate(model, ids, mask, variant: str, new_tokens: int, pad_id: int, threads: int) -> float:
    """Seconds for one generate call of `new_tokens` tokens on the variant's decode path, its decode steps on
    `threads` threads (the prefill keeps torch's count), as the trainer runs it (`msd_trl.decoding`)."""
    from msd_trl.decoding import decode_threads, merged_adapter

    kwargs = generation_kwargs(variant, new_tokens, pad_id)
    start = time.perf_counter()
    with (
        torch.no_grad(),
        decode_threads(model, threads),
        merged_adapter(model, enabled="merged" in variant.split("+")),
    ):
        out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    elapsed = time.perf_counter() - start
    if out.shape[1] - ids.shape[1] != new_tokens:
        raise RuntimeError(f"{variant}: generated {out.shape[1] - ids.shape[1]} tokens, expected {new_tokens}")
    return elapsed


def measure_cell(
    model, ids, mask, variant: str, threads: int, args: argparse.Namespace, pad_id: int
) -> dict[str, Any]:
    n = args.max_new_tokens
    first = time.perf_counter()
    timed_generate(model, ids, mask, variant, n, pad_id, threads)  # warm-up (and, when compiled, the compile)
    warmup_s = time.perf_counter() - first
    full = min(timed_generate(model, ids, mask, variant, n, pad_id, threads) for _ in range(args.repeats))
    prefill = min(timed_generate(model, ids, mask, variant, 1, pad_id, threads) for _ in range(args.repeats))
    decode_step = max(full - prefill, 0.0) / (n - 1)
    batch = ids.shape[0]
    return {
        "variant": variant,
        "threads": threads,
        "batch_size": batch,
        "prompt_tokens": int(ids.shape[1]),
        "new_tokens": n,
        "warmup_s": warmup_s,
        "generate_s": full,
        "prefill_s": prefill,
        "decode_step_s": decode_step,
        "tokens_per_s": batch * n / full,
        "decode_tokens_per_s": batch / decode_step if decode_step > 0 else None,
    }


def measure_matmul_gflops(threads: int, size: int = 1024, repeats: int = 5) -> float:
    """Float32 matrix-product rate (GFLOP/s) on `threads` threads: best of `repeats` `[size, size] @ [size, size]`."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a @ b
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return 2 * size**3 / best / 1e9


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from peft import LoraConfig, get_peft_model

    from msd_trl import load_model, load_tokenizer
    from msd_trl.decoding import left_padded
    from msd_trl.models import resolve_model_name_or_path

    args = parse_args(argv)
    torch.manual_seed(args.seed)
    model_path = resolve_model_name_or_path(args.model)
    tokenizer = load_tokenizer(model_path)
    model = load_model(model_path, dtype="float32")
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"))
    model.eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompts = load_prompts(tokenizer, max(args.batch_sizes), args.max_prompt_tokens, args.seed)
    bandwidth = measure_memory_bandwidth()
    model_bytes = weight_bytes(model)
    floor_s = model_bytes / (bandwidth * 1e9)
    gflops = {threads: measure_matmul_gflops(threads) for threads in args.threads}
    parameters = model_bytes // 4  # float32
    cells = []
    for variant in args.variants:
        for threads in args.threads:
            for batch in args.batch_sizes:
                ids, mask = left_padded(prompts[:batch], pad_id)
                cell = measure_cell(model, ids, mask, variant, threads, args, pad_id)
                cell["floor_ratio"] = floor_s / cell["decode_step_s"] if cell["decode_step_s"] > 0 else None
                cell["compute_floor_s"] = 2 * parameters * batch / (gflops[threads] * 1e9)
                roofline = max(floor_s, cell["compute_floor_s"])
                cell["roofline_ratio"] = roofline / cell["decode_step_s"] if cell["decode_step_s"] > 0 else None
                cells.append(cell)
                print(
                    f"{variant:>15} threads {threads} batch {batch:>3}: decode step {cell['decode_step_s'] * 1e3:7.1f} ms "
                    f"(floor {floor_s * 1e3:.1f} ms, ratio {_ratio(cell['floor_ratio'])}; roofline ratio "
                    f"{_ratio(cell['roofline_ratio'])}), prefill {cell['prefill_s']:.2f} s, "
                    f"{cell['tokens_per_s']:.1f} tok/s, warm-up {cell['warmup_s']:.1f} s",
                    flush=True,
                )
    result = {
        "model": args.model or "embedded SmolLM2-135M-Instruct",
        "dtype": "float32",
        "lora": "r=16, alpha=32, all-linear (unmerged unless the variant says so)",
        "machine": {
            "platform": platform.platform(),
            "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        },  # fmt: skip
        "torch": torch.__version__,
        "memory_bandwidth_gb_s": bandwidth,
        "weight_bytes": model_bytes,
        "floor_decode_step_s": floor_s,
        "matmul_gflops": {str(threads): rate for threads, rate in gflops.items()},
        "max_new_tokens": args.max_new_tokens,
        "max_prompt_tokens": args.max_prompt_tokens,
        "repeats": args.repeats,
        "cells": cells,
    }
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / "decode_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
