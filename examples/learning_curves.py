"""Learning curves of MSD on the embedded SmolLM2-135M-Instruct: checkpoints every N steps, each evaluated greedily.

    python examples/learning_curves.py --output_dir outputs/learning_curves --cells on_dpsw_english --seeds 0,1,2

Each (cell, seed) run trains `--steps` optimizer steps (480 = 6 epochs of the 320-row mix at batch 4) with the
adapter saved every `--checkpoint_every` steps, using exactly `examples/reproduce_mini.py`'s training command for
the cell (same data, split, learning rate, rollout length), so step 80 of a curve is that script's 80-step run.

Phases (`--phase`): `train` trains the runs (resuming from the last checkpoint of an interrupted run), `evaluate`
evaluates every checkpoint already saved, `all` (default) does both. Runs and checkpoints whose outputs exist are
not redone, so two processes can train different seeds side by side and a later call collects everything.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reproduce_mini  # noqa: E402  (the cells, the training command and the evaluation settings of round 2)

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/learning_curves")
    parser.add_argument(
        "--cells", default="on_dpsw_english", help=f"Comma-separated cells of {list(reproduce_mini.CELLS)}."
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=480, help="Optimizer steps of each run (480 = 6 epochs).")
    parser.add_argument("--checkpoint_every", type=int, default=80, help="Save (and evaluate) every this many steps.")
    parser.add_argument("--phase", choices=["train", "evaluate", "all"], default="all")
    parser.add_argument("--split_seed", type=int, default=0)
    parser.add_argument("--eval_limit", type=int, default=20, help="Held-out queries per language (round 2: 20).")
    parser.add_argument("--eval_max_chars", type=int, default=80)
    parser.add_argument("--eval_max_budget_tokens", type=int, default=128)
    return parser.parse_args(argv)


def reproduce_args(args, steps: int | None = None):
    """reproduce_mini's arguments for these runs: its training command with `--steps` steps and checkpoints every
    `--checkpoint_every`, and round 2's evaluation settings."""
    return reproduce_mini.parse_args([
        "--max_steps", str(steps or args.steps), "--split_seed", str(args.split_seed),
        "--eval_limit", str(args.eval_limit), "--eval_max_chars", str(args.eval_max_chars),
        "--eval_max_budget_tokens", str(args.eval_max_budget_tokens),
        "--extra", f"--save_strategy steps --save_steps {args.checkpoint_every}",
    ])  # fmt: skip


def checkpoints(run_dir: Path) -> dict[int, Path]:
    """step -> checkpoint folder, for the checkpoints of a run that hold an adapter."""
    found = {}
    for path in run_dir.glob("checkpoint-*"):
        match = CHECKPOINT.match(path.name)
        if match and (path / "adapter_model.safetensors").exists():
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def train_run(args, cell: str, seed: int, run_dir: Path) -> None:
    """Train one run unless it finished; an interrupted run resumes from its last checkpoint."""
    if (run_dir / "run_summary.json").exists():
        return
    r_args = reproduce_args(args)
    argv = reproduce_mini.train_argv(r_args, cell, seed, run_dir)
    saved = checkpoints(run_dir)
    if saved:
        last = saved[max(saved)]
        if (last / "trainer_state.json").exists():
            argv += ["--resume_from_checkpoint", str(last)]
    print(f"learning_curves: training {cell} seed {seed}: msd-trl train {' '.join(argv)}", flush=True)
    reproduce_mini.train(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    cells = reproduce_mini._csv(args.cells)
    seeds = [int(s) for s in reproduce_mini._csv(args.seeds)]
    unknown = sorted(set(cells) - set(reproduce_mini.CELLS))
    if unknown:
        raise ValueError(f"--cells has unknown cell(s) {unknown}; choose from {list(reproduce_mini.CELLS)}")
    if args.steps % args.checkpoint_every:
        raise ValueError(f"--steps {args.steps} must be a multiple of --checkpoint_every {args.checkpoint_every}")
    runs = [(cell, seed, output_dir / cell / f"seed{seed}") for seed in seeds for cell in cells]
    if args.phase in ("train", "all"):
        for cell, seed, run_dir in runs:
            train_run(args, cell, seed, run_dir)
    (output_dir / "settings.json").write_text(json.dumps(vars(args), indent=2))


if __name__ == "__main__":
    main()
