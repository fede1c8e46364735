"""Splitting by query id, mixing corpora in proportions, and filtering by rendered prompt length."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from datasets import (
    Dataset,
    DatasetDict,
    are_progress_bars_disabled,
    concatenate_datasets,
    disable_progress_bars,
    enable_progress_bars,
)
from tqdm.auto import tqdm

from .rows import MSD_COLUMNS

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------------------------
# Splitting and mixing
# ----------------------------------------------------------------------------------------------------------------------


def split_by_id(
    dataset: Dataset,
    *,
    test_size: float | int = 0.2,
    seed: int = 0,
    id_column: str = "id",
) -> DatasetDict:
    """Split into ``train`` and ``test`` by unique query id, so no query sits on both sides in any language.

    The unique ids are sorted before the seeded permutation, so the split of ids depends only on the set
    of ids and the seed: the same seed splits MultiJail-in-Javanese and MultiJail-in-Bengali the same way.

    Args:
        dataset: MSD rows.
        test_size: a fraction of the ids in (0, 1) (rounded up) or an absolute number of ids in
            [1, number of ids - 1].
        seed: seed of the permutation.
        id_column: the column identifying a query.

    Returns:
        ``DatasetDict(train=..., test=...)``; rows keep their original order within each side.
    """
    if id_column not in dataset.column_names:
        raise ValueError(f"`id_column`={id_column!r} is not a column; columns: {dataset.column_names}")
    ids = [str(value) for value in dataset[id_column]]
    unique_ids = sorted(set(ids))
    n_ids = len(unique_ids)
    if n_ids < 2:
        raise ValueError(f"split_by_id needs at least 2 unique ids in {id_column!r}, got {n_ids}")
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float, np.integer, np.floating)):
        raise ValueError(f"`test_size` must be a float in (0, 1) or an int, got {test_size!r}")
    if isinstance(test_size, (float, np.floating)):
        if not 0.0 < test_size < 1.0:
            raise ValueError(f"`test_size` as a fraction must be in (0, 1), got {test_size!r}")
        n_test = math.ceil(float(test_size) * n_ids)
    else:
        n_test = int(test_size)
    if not 1 <= n_test <= n_ids - 1:
        raise ValueError(
            f"`test_size`={test_size!r} gives {n_test} test ids out of {n_ids}; both sides need at least one id"
        )
    permutation = np.random.default_rng(seed).permutation(n_ids)
    test_ids = {unique_ids[i] for i in permutation[:n_test]}
    train_indices = [i for i, value in enumerate(ids) if value not in test_ids]
    test_indices = [i for i, value in enumerate(ids) if value in test_ids]
    return DatasetDict(train=dataset.select(train_indices), test=dataset.select(test_indices))


def _allocate(total: int, weights: Sequence[float]) -> list[int]:
    """Split `total` into integer counts proportional to `weights` (largest remainder, ties to the first)."""
    exact = [total * w for w in weights]
    counts = [math.floor(x) for x in exact]
    leftover = total - sum(counts)
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[:leftover]:
        counts[i] += 1
    return counts


def _align_columns(datasets: Mapping[str, Dataset]) -> dict[str, Dataset]:
    """Give every dataset the same columns in the same order, with the same types (missing -> None)."""
    names = list(datasets)
    column_order: list[str] = list(MSD_COLUMNS)
    features: dict[str, Any] = {}
    for name in names:
        for column, feature in datasets[name].features.items():
            if column not in features:
                features[column] = (name, feature)
                if column not in column_order:
                    column_order.append(column)
            elif features[column][1] != feature:
                first, first_feature = features[column]
                hint = "; load every corpus with the same `conversational` setting" if "prompt" in column else ""
                raise ValueError(
                    f"column {column!r} has type {first_feature} in {first!r} but {feature} in {name!r}{hint}"
                )
    aligned = {}
    for name in names:
        dataset = datasets[name]
        for column in column_order:
            if column not in dataset.column_names:
                dataset = dataset.add_column(column, [None] * len(dataset), feature=features[column][1])
        aligned[name] = dataset.select_columns(column_order)
    return aligned


def mix_datasets(
    datasets: Mapping[str, Dataset],
    proportions: Mapping[str, float] | None = None,
    *,
    num_rows: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Mix MSD corpora into one shuffled training set, sampling each corpus without replacement.

    Args:
        datasets: name -> MSD rows (each with ``id, source, language, harmful``).
        proportions: name -> weight (normalised to sum 1; a weight of 0 leaves a corpus out). ``None`` keeps
            all rows of every corpus (and, with ``num_rows``, draws that many rows uniformly from the union).
        num_rows: total rows. With ``proportions`` it defaults to the largest total reachable without
            repeating a row of any corpus.
        seed: seed for sampling and the final shuffle.

    Returns:
        One ``Dataset`` with the union of the columns (columns a corpus lacks, such as ``answer``, are
        ``None`` there), shuffled.
    """
    if not datasets:
        raise ValueError("`datasets` is empty; pass at least one name -> Dataset")
    for name, dataset in datasets.items():
        missing = [c for c in ("id", "source", "language", "harmful") if c not in dataset.column_names]
        if missing:
            raise ValueError(
                f"`datasets[{name!r}]` lacks provenance column(s) {missing}; build it with build_msd_rows"
            )
    if num_rows is not None and (isinstance(num_rows, bool) or not isinstance(num_rows, int) or num_rows < 1):
        raise ValueError(f"`num_rows` must be a positive int, got {num_rows!r}")
    names = list(datasets)
    sizes = {name: len(datasets[name]) for name in names}
    rng = np.random.default_rng(seed)

    if proportions is None:
        pieces = dict(datasets)
        if num_rows is not None and num_rows > sum(sizes.values()):
            raise ValueError(f"`num_rows`={num_rows} exceeds the {sum(sizes.values())} rows available")
    else:
        unknown = sorted(set(proportions) - set(names))
        absent = sorted(set(names) - set(proportions))
        if unknown or absent:
            raise ValueError(
                f"`proportions` keys must match `datasets` keys: unknown {unknown}, missing {absent} "
                "(give 0 to leave a corpus out)"
            )
        for name, weight in proportions.items():
            if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
                raise ValueError(f"`proportions[{name!r}]` must be a finite number >= 0, got {weight!r}")
        total_weight = float(sum(proportions.values()))
        if total_weight <= 0:
            raise ValueError(f"`proportions` must have a positive sum, got {dict(proportions)}")
        shares = [proportions[name] / total_weight for name in names]
        if num_rows is None:
            # Largest total at which no corpus needs more rows than it has.
            num_rows = min(math.floor(sizes[n] / s + 1e-9) for n, s in zip(names, shares) if s > 0)
            if num_rows < 1:
                raise ValueError(f"`proportions` {dict(proportions)} leave no rows with corpus sizes {sizes}")
        counts = _allocate(num_rows, shares)
        for name, share, count in zip(names, shares, counts):
            if count > sizes[name]:
                reachable = min(math.floor(sizes[n] / s + 1e-9) for n, s in zip(names, shares) if s > 0)
                raise ValueError(
                    f"`proportions`: {share:.3f} of num_rows={num_rows} needs {count} rows from {name!r}, which "
                    f"has only {sizes[name]} (sampling is without replacement); use num_rows <= {reachable} "
                    "or change the proportions"
                )
        pieces = {
            name: datasets[name].select(sorted(rng.permutation(sizes[name])[:count].tolist()))
            for name, count in zip(names, counts)
            if count > 0
        }

    # Quietly: concatenating selected rows and materialising the shuffle each print a "Flattening the indices" bar
    # for a few hundred rows, noise in the main job's console.
    bars_were_off = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        mixed = concatenate_datasets(list(_align_columns(pieces).values()))
        mixed = mixed.shuffle(seed=int(rng.integers(2**31)))
        if proportions is None and num_rows is not None:
            mixed = mixed.select(range(num_rows))
        # Materialise the shuffle so later selects and maps read contiguous rows, not an indices mapping.
        mixed = mixed.flatten_indices()
    finally:
        if not bars_were_off:
            enable_progress_bars()
    logger.info(
        "mix_datasets: %d rows; per source %s; per (source, language) %s",
        len(mixed),
        dict(sorted(Counter(mixed["source"]).items())),
        dict(sorted(Counter(zip(mixed["source"], mixed["language"])).items())),
    )
    return mixed


# ----------------------------------------------------------------------------------------------------------------------
# Length filtering
# ----------------------------------------------------------------------------------------------------------------------


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m for m in value)


def _token_lengths(values: list[Any], tokenizer, column: str, batch_size: int = 512) -> list[int]:
    """Token counts of prompts: chat template (with generation prompt) for messages, plain tokenisation else."""
    lengths: list[int] = []
    batches = range(0, len(values), batch_size)
    for start in tqdm(batches, desc=f"Tokenizing {column}", disable=len(batches) < 4):
        batch = values[start : start + batch_size]
        if batch and _is_messages(batch[0]):
            # Render to text, then tokenise without extra specials: the template already holds them, and
            # apply_chat_template(tokenize=True) changed its return type across transformers versions.
            texts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in batch]
            encoded = tokenizer(texts, add_special_tokens=False)
        else:
            for value in batch:
                if not isinstance(value, str):
                    raise ValueError(f"column {column!r}: expected text or chat messages, got {type(value).__name__}")
            encoded = tokenizer(batch)
        lengths.extend(len(ids) for ids in encoded["input_ids"])
    return lengths


def _rendered_lengths(
    dataset: Dataset, tokenizer, template: str, system_prompt: str | None, context=None
) -> dict[str, list[int]]:
    """Token counts of the student's and the teacher's conversations exactly as the trainers render them."""
    from ..rendering import render_student_messages, render_teacher_messages, tokenize_messages

    lengths: dict[str, list[int]] = {"student": [], "teacher": []}
    for row in tqdm(dataset, desc="Measuring rendered prompts", disable=len(dataset) < 2000):
        lengths["student"].append(len(tokenize_messages(tokenizer, render_student_messages(row))))
        teacher = render_teacher_messages(row, template=template, system_prompt=system_prompt, context=context)
        lengths["teacher"].append(len(tokenize_messages(tokenizer, teacher)))
    return lengths


def filter_by_length(
    dataset: Dataset,
    tokenizer,
    *,
    max_prompt_tokens: int,
    columns: Iterable[str] = ("prompt", "teacher_prompt"),
    teacher_prompt_template: str | None = None,
    teacher_system_prompt: str | None = None,
    teacher_context=None,
) -> Dataset:
    """Drop rows whose prompt is longer than ``max_prompt_tokens`` tokens.

    With ``teacher_prompt_template`` (and the optional ``teacher_system_prompt``), the student's and the teacher's
    conversations are measured exactly as the trainers render them (chat template, system prompt, template), so
    the limit means what ``MSDConfig.max_prompt_length`` means; ``columns`` is then unused. Without it, each of
    ``columns`` is measured on its own: chat messages after the chat template (with the generation prompt), text
    with plain tokenisation (special tokens included), absent columns skipped. A ``teacher_context``
    (:class:`msd_trl.presets.TeacherContext`, e.g. with a benign rows' context) replaces the template and system
    prompt. Logs (``logging.warning``) how many
    rows were dropped per language and the longest lengths seen.
    """
    if isinstance(max_prompt_tokens, bool) or not isinstance(max_prompt_tokens, int) or max_prompt_tokens < 1:
        raise ValueError(f"`max_prompt_tokens` must be a positive int, got {max_prompt_tokens!r}")
    if teacher_context is not None or teacher_prompt_template is not None:
        measured = _rendered_lengths(
            dataset, tokenizer, teacher_prompt_template, teacher_system_prompt, context=teacher_context
        )
    else:
        requested = [columns] if isinstance(columns, str) else list(columns)
        present = [c for c in requested if c in dataset.column_names]
        if not present:
            raise ValueError(f"none of `columns`={requested} is a column; columns: {dataset.column_names}")
        measured = {column: _token_lengths(list(dataset[column]), tokenizer, column) for column in present}

    keep = np.ones(len(dataset), dtype=bool)
    longest: dict[str, int] = {}
    for column, values in measured.items():
        lengths = np.asarray(values, dtype=np.int64)  # [N]
        longest[column] = int(lengths.max()) if len(lengths) else 0
        keep &= lengths <= max_prompt_tokens

    n_dropped = int((~keep).sum())
    if n_dropped:
        languages = list(dataset["language"]) if "language" in dataset.column_names else ["?"] * len(dataset)
        ids = list(dataset["id"]) if "id" in dataset.column_names else list(range(len(dataset)))
        dropped = np.flatnonzero(~keep)
        per_language = Counter(languages[i] for i in dropped)
        logger.warning(
            "filter_by_length: dropped %d of %d rows with more than %d prompt tokens; per language %s; "
            "longest %s; dropped (id@language, first 20) %s",
            n_dropped,
            len(dataset),
            max_prompt_tokens,
            dict(sorted(per_language.items())),
            longest,
            [f"{ids[i]}@{languages[i]}" for i in dropped[:20]],
        )
    else:
        logger.info("filter_by_length: kept all %d rows (longest %s)", len(dataset), longest)
    return dataset.select(np.flatnonzero(keep).tolist())


def mix_harmful_and_benign(
    harmful: Dataset,
    benign: Mapping[str, Dataset],
    *,
    benign_proportion: float = 0.4,
    benign_shares: Mapping[str, float] | None = None,
    num_rows: int | None = None,
    seed: int = 0,
    tokenizer=None,
    max_prompt_tokens: int | None = None,
    teacher_prompt_template: str | None = None,
    teacher_system_prompt: str | None = None,
    harmful_name: str = "harmful",
    teacher_context=None,
    plan: dict | None = None,
) -> Dataset:
    """Filter by rendered prompt length (when `tokenizer` and `max_prompt_tokens` are given), then mix `harmful` rows
    with the benign sets: `benign_proportion` of the rows benign, split among the sets by `benign_shares` (equal by
    default). A benign set left empty by the filter is dropped with a warning; an empty harmful set is an error.
    `plan` (a dict) receives, per set name, the rows per language before (`train_side`) and after the length filter
    (`within_limit`)."""
    if not 0.0 <= benign_proportion < 1.0:
        raise ValueError(f"`benign_proportion` must be in [0, 1), got {benign_proportion!r}")
    corpora: dict[str, Dataset] = {harmful_name: harmful, **dict(benign)}

    def record(stage: str) -> None:
        if plan is not None:
            for name, ds in corpora.items():
                languages = ds["language"] if "language" in ds.column_names else ["?"] * len(ds)
                plan.setdefault(name, {})[stage] = Counter(languages)

    record("train_side")
    if tokenizer is not None and max_prompt_tokens is not None:
        corpora = {
            name: filter_by_length(
                ds,
                tokenizer,
                max_prompt_tokens=max_prompt_tokens,
                teacher_prompt_template=teacher_prompt_template,
                teacher_system_prompt=teacher_system_prompt,
                teacher_context=teacher_context,
            )
            for name, ds in corpora.items()
        }
        record("within_limit")
    limit_note = (
        f"max_prompt_tokens={max_prompt_tokens}, counted on the conversations as the trainer renders them when a "
        "teacher template is given"
    )
    if len(corpora[harmful_name]) == 0:
        raise ValueError(
            f"no {harmful_name} rows are left after the prompt-length filter ({limit_note}): raise "
            "max_prompt_tokens or choose other languages."
        )
    for name in [name for name, ds in corpora.items() if len(ds) == 0]:
        logger.warning("every %s row is over the prompt limit (%s); the mix has none.", name, limit_note)
        del corpora[name]
    benign_names = [name for name in corpora if name != harmful_name]
    if not benign_names or benign_proportion == 0:
        return corpora[harmful_name].shuffle(seed=seed)
    shares = {name: (benign_shares or {}).get(name, 1.0) for name in benign_names}
    total = sum(shares.values())
    if total <= 0:
        raise ValueError(
            f"`benign_shares` must give some benign set a positive share, got {dict(benign_shares or {})}"
        )
    proportions = {harmful_name: 1.0 - benign_proportion}
    proportions.update({name: benign_proportion * share / total for name, share in shares.items()})
    return mix_datasets(
        {name: ds for name, ds in corpora.items() if proportions[name] > 0},
        {name: value for name, value in proportions.items() if value > 0},
        num_rows=num_rows,
        seed=seed,
    )
