"""Can the student tell a harmful request from a benign one at all? A linear probe on its own hidden states.

MSD's student reads only the target-language query. Whatever it learns to do differently for harmful and benign
requests must be readable from its representation of that query at the position where the answer starts. This script
measures that ceiling: per language, it takes the hidden state at the last prompt token (after the chat template's
assistant header) at a few layers, fits an L2-regularised logistic regression on the *training* ids (MultiJail train
ids = harmful, MultiQ even ids = benign; the ids a reproduction trains on) and reports the AUC on the *held-out* ids
(MultiJail test ids, MultiQ odd ids; the ids every evaluation uses). Three probes per language:

- `in_language`: fitted on that language's training rows (what the representation holds, given labels in it);
- `from_english`: fitted on the English training rows, applied to the language (does the English harmful/benign
  direction carry over; the teacher judges in English);
- `length_only`: the prompt's token count as the only feature (how much of the separation is form, not content:
  MultiJail and MultiQ differ in length and style).

An AUC near 1.0 in a language means a linear read-out of the frozen model already separates the two sides there,
so a student that refuses both alike is failing to learn, not failing to see; an AUC near `length_only` means it sees
form more than content. Prompts longer than `--max_prompt_tokens` (rendered) are dropped and counted.

Usage::

    python examples/representation_probe.py --output_json outputs/representation_probe.json
    python examples/representation_probe.py --adapters base=,seed1=outputs/reproduce_mini/on_dpsw_english/seed1

Prints a Markdown table per model (rows: language, columns: probe x layer).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm.auto import tqdm

from msd_trl.stats import auc

LANGUAGES = ["en", "jv", "sw", "bn", "th", "ko", "ar", "vi"]
REGULARISATION = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def last_token_states(model, tokenizer, rows: list[list[int]], layers: list[int], batch_size: int = 8):
    """`[len(rows), len(layers), hidden]` hidden states at each tokenised prompt's last token (the chat template's
    assistant header included). Prompts are batched by length, left-padded."""
    import torch

    from msd_trl.decoding import left_padded

    if not rows:
        return torch.zeros(0, len(layers), model.config.hidden_size)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    states = [None] * len(rows)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        ids, mask = left_padded([rows[i] for i in batch], tokenizer.pad_token_id or 0)
        with torch.no_grad():
            hidden = model(
                input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False
            ).hidden_states
        picked = torch.stack([hidden[layer][:, -1].float() for layer in layers], dim=1)  # [B, n_layers, H]
        for row, i in enumerate(batch):
            states[i] = picked[row]
    return torch.stack(states)


def fit_logistic(features, labels, l2: float, steps: int = 100):
    """Class-balanced L2 logistic regression on standardised features; returns a scoring function."""
    import torch

    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    x = (features - mean) / std
    y = labels.float()
    positives = y.sum().clamp_min(1.0)
    negatives = (len(y) - y.sum()).clamp_min(1.0)
    sample_weight = torch.where(y > 0, len(y) / (2 * positives), len(y) / (2 * negatives))
    weight = torch.zeros(x.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        logits = x @ weight + bias
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, weight=sample_weight)
        loss = loss + l2 * weight.pow(2).sum() / len(y)
        loss.backward()
        return loss

    optimizer.step(closure)
    weight, bias = weight.detach(), bias.detach()
    return lambda f: (((f - mean) / std) @ weight + bias).tolist()


def fit_probe(features, labels, folds: int = 5, seed: int = 0):
    """`fit_logistic` with its L2 strength picked by `folds`-fold cross-validated AUC on the training rows."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    best = None
    for l2 in REGULARISATION:
        scores = []
        for fold in range(folds):
            held = order[fold::folds]
            kept = torch.cat([order[f::folds] for f in range(folds) if f != fold])
            value = held_out_auc(fit_logistic(features[kept], labels[kept], l2), features[held], labels[held])
            if value is not None:
                scores.append(value)
        cv = sum(scores) / len(scores) if scores else 0.0
        if best is None or cv > best[0]:
            best = (cv, l2)
    return fit_logistic(features, labels, best[1]), best[1], best[0]


def held_out_auc(score, features, labels) -> float | None:
    """AUC of `score(features)` with `labels` (1 = harmful) as the two sides."""
    values = score(features)
    flags = labels.tolist()
    return auc([v for v, y in zip(values, flags) if y], [v for v, y in zip(values, flags) if not y])


def collect(model, tokenizer, splits: dict, language: str, layers: list[int], max_prompt_tokens: int, limit=None):
    """Features, lengths and labels (1 = harmful) of one language's train and test rows (at most `limit` a side);
    counts the rows dropped for length."""
    import torch

    from msd_trl.rendering import tokenize_messages

    out, dropped = {}, {}
    for side in ("train", "test"):
        harmful = [r["prompt"] for r in splits["harmful"][side] if r["language"] == language][:limit]
        benign = [r["prompt"] for r in splits["benign"][side] if r["language"] == language][:limit]
        prompts, labels = harmful + benign, [1] * len(harmful) + [0] * len(benign)
        rows = [tokenize_messages(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
        keep = [i for i, row in enumerate(rows) if len(row) <= max_prompt_tokens]
        dropped[side] = len(prompts) - len(keep)
        out[side] = (
            last_token_states(model, tokenizer, [rows[i] for i in keep], layers),
            torch.tensor([[float(len(rows[i]))] for i in keep]).reshape(-1, 1),
            torch.tensor([labels[i] for i in keep], dtype=torch.long),
        )
    return out, dropped


def _both_sides(labels, least: int) -> bool:
    return int(labels.sum()) >= least and int(len(labels) - labels.sum()) >= least


def probe_model(model, tokenizer, splits, layers, max_prompt_tokens, limit=None) -> dict:
    """Per language: the three probes' held-out AUC (None where a side has too few rows left to fit or score)."""
    data, dropped = {}, {}
    for language in tqdm(LANGUAGES, desc="hidden states", unit="language"):
        data[language], dropped[language] = collect(
            model, tokenizer, splits, language, layers, max_prompt_tokens, limit
        )
    english_states, _, english_labels = data["en"]["train"]
    english = [fit_probe(english_states[:, i], english_labels)[0] if _both_sides(english_labels, 5) else None
               for i in range(len(layers))]  # fmt: skip
    per_language = {}
    for language in LANGUAGES:
        train_states, train_lengths, train_labels = data[language]["train"]
        test_states, test_lengths, test_labels = data[language]["test"]
        can_fit, can_score = _both_sides(train_labels, 5), _both_sides(test_labels, 1)
        entry = {
            "n_train": [int(train_labels.sum()), int(len(train_labels) - train_labels.sum())],
            "n_test": [int(test_labels.sum()), int(len(test_labels) - test_labels.sum())],
            "dropped_over_max_prompt_tokens": dropped[language],
            "length_only": None,
            "in_language": {},
            "from_english": {},
        }
        if can_fit and can_score:
            entry["length_only"] = held_out_auc(fit_probe(train_lengths, train_labels)[0], test_lengths, test_labels)
        for index, layer in enumerate(layers):
            in_language = fit_probe(train_states[:, index], train_labels)[0] if can_fit and can_score else None
            entry["in_language"][str(layer)] = in_language and held_out_auc(
                in_language, test_states[:, index], test_labels
            )
            from_english = english[index] if can_score else None
            entry["from_english"][str(layer)] = from_english and held_out_auc(
                from_english, test_states[:, index], test_labels
            )
        per_language[language] = entry
    return per_language


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def markdown(name: str, per_language: dict, layers: list[int]) -> str:
    head = ["language", "n test (harmful/benign)", "length only"]
    head += [f"in-language L{layer}" for layer in layers] + [f"from English L{layer}" for layer in layers]
    lines = [f"\n{name}: held-out AUC, harmful vs benign", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for language, entry in per_language.items():
        cells = [language, "{}/{}".format(*entry["n_test"]), _cell(entry["length_only"])]
        cells += [_cell(entry["in_language"][str(layer)]) for layer in layers]
        cells += [_cell(entry["from_english"][str(layer)]) for layer in layers]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapters", default="base=", help="comma-separated name=path (empty path: no adapter)")
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--split_seed", type=int, default=0, help="MultiJail's by-id split (as reproduce_mini)")
    parser.add_argument("--layers", default=None, help="hidden-state layers (0 = embeddings); default: quartiles")
    parser.add_argument("--max_prompt_tokens", type=int, default=256)
    parser.add_argument("--limit", type=int, default=None, help="rows per side, split and language (default: all)")
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args(argv)
    if args.max_prompt_tokens < 1:
        parser.error(f"--max_prompt_tokens must be >= 1, got {args.max_prompt_tokens}")

    from msd_trl.data import load_multijail, load_multiq, split_by_id, split_by_id_parity
    from msd_trl.models import load_model, load_tokenizer

    splits = {
        "harmful": split_by_id(load_multijail(languages=LANGUAGES), test_size=0.2, seed=args.split_seed),
        "benign": split_by_id_parity(load_multiq(languages=LANGUAGES)),
    }
    tokenizer = load_tokenizer(args.model)
    results = {"split_seed": args.split_seed, "max_prompt_tokens": args.max_prompt_tokens, "models": {}}
    for name, path in (item.partition("=")[::2] for item in args.adapters.split(",")):
        model = load_model(args.model)
        depth = model.config.num_hidden_layers
        layers = (
            [int(x) for x in args.layers.split(",")]
            if args.layers
            else [depth // 4, depth // 2, 3 * depth // 4, depth]
        )
        bad = [layer for layer in layers if not 0 <= layer <= depth]
        if bad:
            parser.error(f"--layers {bad} outside 0..{depth} (the model has {depth} layers)")
        if path:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, path)
        model.eval()
        per_language = probe_model(model, tokenizer, splits, layers, args.max_prompt_tokens, args.limit)
        results["models"][name] = {"path": path or None, "layers": layers, "languages": per_language}
        print(markdown(name, per_language, layers))
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
