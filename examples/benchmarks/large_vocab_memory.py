"""Peak memory of MSD's loss on a large vocabulary: the plain loss vs `MSDConfig.loss_chunk_size`.

The model is randomly initialised with Qwen2.5-0.5B-Instruct's architecture (vocabulary 151,936, hidden 896,
24 layers; no weights are needed: memory does not depend on their values), in float32 with a LoRA adapter (r=16,
every linear layer) and the self-teacher (adapter disabled). Each variant trains `--steps` off-policy steps on
fixed teacher text (no generation, so the number is the loss path's) in a fresh subprocess, while a thread samples
its resident set size every 20 ms (on a GPU: `torch.cuda.max_memory_allocated`). Reported: peak, and peak minus
the resident size after the model was built (the training step's own memory).

Usage::

    python examples/benchmarks/large_vocab_memory.py --output_dir outputs/large_vocab
    python examples/benchmarks/large_vocab_memory.py --output_dir outputs/large_vocab --chunk_sizes 0,64,16

Writes ``DIR/large_vocab_memory.json`` (and prints a table). Prompts use the embedded SmolLM2 tokenizer (its ids
are valid in the larger vocabulary); completions are `--completion_tokens` long.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the trainer_benchmark package beside this script
from trainer_benchmark.settings import QWEN25_05B_CONFIG as QWEN25_05B  # noqa: E402


def _train(model, rows: list[dict], tokenizer, chunk_size: int, args: argparse.Namespace) -> float:
    """Train one variant off-policy on the rows; returns the seconds of `trainer.train()`."""
    from datasets import Dataset
    from peft import LoraConfig

    from msd_trl import MSDConfig, OffPolicyMSDTrainer

    trainer = OffPolicyMSDTrainer(
        model=model,
        args=MSDConfig(
            output_dir=str(Path(args.output_dir) / "work" / f"chunk{chunk_size}"), per_device_train_batch_size=args.batch_size,
            max_steps=args.steps, learning_rate=1e-4, report_to="none", save_strategy="no", logging_steps=1,
            loss_chunk_size=chunk_size or None, teacher_preset="english_refusal", max_new_tokens=args.completion_tokens,
            dataloader_drop_last=True,
        ),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"),
    )  # fmt: skip
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def run_variant(chunk_size: int, args: argparse.Namespace) -> dict:
    """One variant in this process: build the model, train, return peak memory."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from msd_trl.models import load_tokenizer

    torch.manual_seed(0)
    tokenizer = load_tokenizer()
    config = Qwen2Config(**QWEN25_05B)
    if args.layers:
        config.num_hidden_layers = args.layers
    model = Qwen2ForCausalLM(config)
    text = "I'm sorry, but I can't help with that. " * 200
    words = text.split()
    rows = [
        {"id": f"q{i}", "language": "jv", "prompt": f"Pitakon nomer {i}: piye carane?",
         "teacher_prompt": f"Question number {i}: how?", "teacher_completion": " ".join(words[: args.completion_tokens])}
        for i in range(args.batch_size * args.steps)
    ]  # fmt: skip
    from trainer_benchmark.profiling import PeakRSSSampler

    cuda = torch.cuda.is_available()
    if cuda:
        model = model.cuda()
        torch.cuda.reset_peak_memory_stats()
    with PeakRSSSampler() as sampler:  # RSS from here on, the model already built
        base = torch.cuda.memory_allocated() / 2**20 if cuda else sampler.start_mb
        elapsed = _train(model, rows, tokenizer, chunk_size, args)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else sampler.peak_mb
    completion = [len(tokenizer(r["teacher_completion"], add_special_tokens=False)["input_ids"]) for r in rows]
    return {
        "loss_chunk_size": chunk_size or None,
        "peak_mb": round(peak, 1),
        "peak_above_model_mb": round(peak - base, 1),
        "train_s": round(elapsed, 1),
        "completion_tokens_per_row": max(completion),
        "device": "cuda" if cuda else "cpu",
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--chunk_sizes", default="0,64", help="comma-separated; 0 = the plain loss")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument(
        "--completion_tokens", type=int, default=128,
        help="completion length in words of teacher text (the tokens are counted and reported: 128 words = 192)",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--layers", type=int, default=None, help="fewer layers (same vocabulary) for a quick look")
    parser.add_argument("--_variant", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    output_dir = Path(args.output_dir)
    if args._variant is not None:
        print(json.dumps(run_variant(args._variant, args)))
        return {}
    output_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for chunk in [int(c) for c in args.chunk_sizes.split(",") if c.strip()]:
        command = [sys.executable, str(Path(__file__).resolve()), *(argv if argv is not None else sys.argv[1:]),
                   "--_variant", str(chunk)]  # fmt: skip
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            raise RuntimeError(f"variant loss_chunk_size={chunk} failed:\n{completed.stderr[-3000:]}")
        results.append(json.loads(completed.stdout.strip().splitlines()[-1]))
        print(results[-1], flush=True)
    plain = next((r for r in results if r["loss_chunk_size"] is None), None)
    for r in results:
        r["above_model_vs_plain"] = (
            round(r["peak_above_model_mb"] / plain["peak_above_model_mb"], 3) if plain else None
        )
    report = {
        "model": "Qwen2.5-0.5B-shaped, random weights" + (f", {args.layers} layers" if args.layers else ""),
        "config": QWEN25_05B | ({"num_hidden_layers": args.layers} if args.layers else {}),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "command": "python examples/benchmarks/large_vocab_memory.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "results": results,
    }
    (output_dir / "large_vocab_memory.json").write_text(json.dumps(report, indent=2))
    print("| loss_chunk_size | peak MB | above the model MB | vs plain | train s |\n| --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['loss_chunk_size']} | {r['peak_mb']} | {r['peak_above_model_mb']} | {r['above_model_vs_plain']} | "
              f"{r['train_s']} |")  # fmt: skip
    return report


if __name__ == "__main__":
    main()
