"""Why does a language flip to refuse-everything? Per evaluated language, what could make MSD training generalise to
"refuse this language" rather than "refuse harmful requests": its script, its prompt lengths, how many of its
tokens the training prompts already hold, what the teacher does on the same ids, and the monitor's and greedy
curves over training (from examples/learning_curves.py).

    python examples/language_shortcut.py --curves outputs/learning_curves/learning_curves.json \
        --cell on_dpsw_english --output_json outputs/language_shortcut.json

The question comes from issue 22: after 240 steps of on-policy DPSW on jv, sw and bn (English-refusal teacher),
Arabic, never trained, became refuse-everything (harmful .95, MultiQ over-refusal 1.0) while Thai, Korean and
Vietnamese did not. Everything here is measured on the same ids the curves use (the first `--eval_limit` held-out
MultiJail ids and MultiQ odd ids per language), with the training rows of the cell rebuilt from its command
(tokenizer only). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import unicodedata
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reproduce_mini  # noqa: E402

LANGUAGES = reproduce_mini.TRAINED + reproduce_mini.UNSEEN


def dominant_script(texts: list[str]) -> str:
    """The Unicode script most letters of `texts` belong to (the first word of each letter's Unicode name)."""
    counts: Counter[str] = Counter()
    for text in texts:
        for char in text:
            if unicodedata.category(char).startswith("L"):
                counts[unicodedata.name(char, "UNKNOWN").split()[0]] += 1
    return counts.most_common(1)[0][0].title() if counts else "none"


def training_token_ids(cell: str, tokenizer, split_seed: int = 0) -> tuple[Counter, int]:
    """Token ids of the student prompts of the cell's training rows (rebuilt from its command) and their count."""
    from msd_trl.cli import build_train_parser
    from msd_trl.rendering import render_student_messages, tokenize_messages

    args = reproduce_mini.parse_args(["--split_seed", str(split_seed)])
    data_args, config, _ = build_train_parser().parse_args_and_config(
        args=reproduce_mini.train_argv(args, cell, 0, Path("unused"))
    )
    rows = data_args.build_dataset(tokenizer, config=config)
    counts: Counter = Counter()
    for row in rows:
        counts.update(tokenize_messages(tokenizer, render_student_messages(row)))
    return counts, len(rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--curves", required=True, help="learning_curves.json (examples/learning_curves.py)")
    parser.add_argument("--cell", default="on_dpsw_english")
    parser.add_argument("--eval_limit", type=int, default=20)
    parser.add_argument("--split_seed", type=int, default=0)
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args(argv)

    from msd_trl.data import load_multijail, load_multiq, split_by_id, split_by_id_parity
    from msd_trl.models import load_tokenizer
    from msd_trl.rendering import render_student_messages, tokenize_messages

    curves = json.loads(Path(args.curves).read_text())
    tokenizer = load_tokenizer(None)
    trained_counts, n_rows = training_token_ids(args.cell, tokenizer, args.split_seed)
    harmful = split_by_id(load_multijail(languages=LANGUAGES), test_size=0.2, seed=args.split_seed)["test"]
    benign = split_by_id_parity(load_multiq(languages=LANGUAGES))["test"]

    def first_rows(rows, language):
        chosen = [r for r in rows if r["language"] == language]
        ids = list(dict.fromkeys(r["id"] for r in chosen))[: args.eval_limit]
        return [r for r in chosen if r["id"] in set(ids)]

    points = [c for c in curves["curves"] if c["cell"] == args.cell]
    steps = sorted({p["step"] for p in points})
    base = curves["base"].get(reproduce_mini.CELLS[args.cell]["preset"], {})
    results: dict = {"cell": args.cell, "training_rows": n_rows, "steps": [0, *steps], "languages": {}}
    for language in LANGUAGES:
        per_side = {}
        for side, rows in (("harmful", first_rows(harmful, language)), ("benign", first_rows(benign, language))):
            ids = [tokenize_messages(tokenizer, render_student_messages(r)) for r in rows]
            tokens = [t for seq in ids for t in seq]
            per_side[side] = {
                "median_prompt_tokens": statistics.median(len(seq) for seq in ids),
                # Share of the prompts' tokens (chat template included) that occur in the training prompts.
                "tokens_seen_in_training": sum(1 for t in tokens if t in trained_counts) / len(tokens),
                "script": dominant_script([r["prompt"] for r in rows]),
            }

        def curve(key: str, language: str = language) -> list[float | None]:
            values = [base.get("languages", {}).get(language, {}).get(key)]
            for step in steps:
                found = [p["languages"][language][key] for p in points if p["step"] == step]
                found = [v for v in found if v is not None]
                values.append(sum(found) / len(found) if found else None)
            return values

        results["languages"][language] = {
            "trained": language in reproduce_mini.TRAINED,
            **per_side,
            "greedy_refusal": curve("refusal"),
            "greedy_over_refusal": curve("over_refusal"),
            "monitor_benign_p": curve("benign_p"),
            "monitor_auc": curve("auc"),
        }
    print(f"| language | script | median tokens (harmful / benign) | tokens seen in training | over-refusal by step "
          f"{results['steps']} | monitor benign P(refusal) |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")

    def fmt(values):
        return " ".join("–" if v is None else f"{v:.2f}" for v in values)

    for language, entry in results["languages"].items():
        print(f"| {language}{'' if not entry['trained'] else ' (trained)'} | {entry['harmful']['script']} | "
              f"{entry['harmful']['median_prompt_tokens']:.0f} / {entry['benign']['median_prompt_tokens']:.0f} | "
              f"{entry['harmful']['tokens_seen_in_training']:.2f} / {entry['benign']['tokens_seen_in_training']:.2f} | "
              f"{fmt(entry['greedy_over_refusal'])} | {fmt(entry['monitor_benign_p'])} |")  # fmt: skip
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
