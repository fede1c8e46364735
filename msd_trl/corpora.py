"""Corpora as small registered objects, and a user's own data set in either shape.

Design. A corpus is a loader plus what the rest of the library needs to know about it: its default languages,
whether its queries are harmful, and how it is split (by query id with a seed, or by a fixed rule). Registering
one (`register_corpus`) is all it takes for `build_safety_mix`, `msd-trl train` and evaluation to use a new data
source by name. `load_dataset_rows` reads a user's file or Hub data set the way TRL's scripts do (`--dataset_name`,
`--dataset_config`, `--dataset_train_split`) and accepts both shapes:

* **long**: one row per (query, language) with `prompt` (and usually `teacher_prompt`, the English query), optional
  `language`, `id`, `harmful`, `teacher_completion`; used as is;
* **wide** (parallel, like MultiJail): an `id` column, an English column (`en`) and one column per language code;
  turned into long rows for the requested languages with `data.build_msd_rows`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from .data import (
    MGSM_LANGUAGES,
    MULTIJAIL_LANGUAGES,
    MULTIQ_LANGUAGES,
    build_msd_rows,
    find_shared_data_dir,
    load_mgsm,
    load_multijail,
    load_multiq,
    mix_harmful_and_benign,
    split_by_id,
    split_by_id_parity,
)

logger = logging.getLogger(__name__)

__all__ = ["CORPORA", "Corpus", "build_safety_mix", "get_corpus", "load_dataset_rows", "register_corpus"]


@dataclass(frozen=True)
class Corpus:
    """A data source by name.

    `load(source, languages)` returns MSD rows (`source` None means the corpus's default location); `split` is
    `"id"` (`split_by_id` with the run's test size and seed) or `"parity"` (`split_by_id_parity`: odd ids test).
    `folder` is its sub-folder of a data directory (`--data_dir`)."""

    name: str
    load: Callable[..., Dataset]  # (source, languages, *, conversational=False) -> MSD rows
    default_languages: tuple[str, ...]
    harmful: bool
    split: str = "id"
    folder: str | None = None

    def split_rows(self, rows: Dataset, *, test_size: float, seed: int) -> DatasetDict:
        if self.split == "parity":
            return split_by_id_parity(rows)
        return split_by_id(rows, test_size=test_size, seed=seed)

    def load_from(self, data_dir: str | Path | None, languages: Sequence[str]) -> Dataset:
        source = Path(data_dir) / self.folder if data_dir is not None and self.folder else None
        return self.load(source, list(languages))


CORPORA: dict[str, Corpus] = {}


def register_corpus(corpus: Corpus, *, overwrite: bool = False) -> Corpus:
    if not isinstance(corpus, Corpus):
        raise ValueError(f"expected a Corpus, got {type(corpus).__name__}: {corpus!r}")
    if corpus.split not in ("id", "parity"):
        raise ValueError(f"Corpus.split={corpus.split!r} is invalid: use 'id' or 'parity'.")
    if corpus.name in CORPORA and not overwrite:
        raise ValueError(f"corpus {corpus.name!r} is already registered; pass overwrite=True to replace it.")
    CORPORA[corpus.name] = corpus
    return corpus


def get_corpus(name: str) -> Corpus:
    if name not in CORPORA:
        raise ValueError(f"corpus={name!r} is unknown; registered: {sorted(CORPORA)}.")
    return CORPORA[name]


register_corpus(Corpus("multijail", load_multijail, MULTIJAIL_LANGUAGES, harmful=True, folder="multijail"))
register_corpus(Corpus("mgsm", load_mgsm, MGSM_LANGUAGES, harmful=False, folder="mgsm"))
register_corpus(Corpus("multiq", load_multiq, MULTIQ_LANGUAGES, harmful=False, split="parity", folder="multiq"))


_READERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def _read(name_or_path: str | Path, config: str | None, split: str) -> Dataset:
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "state.json").exists():  # a saved `datasets` folder
            loaded = load_from_disk(str(path))
            return loaded[split] if isinstance(loaded, DatasetDict) else loaded
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in _READERS)
        if not files:
            raise ValueError(f"dataset_name={str(path)!r} is a folder with no CSV, JSON(L), Parquet or saved dataset")
        kinds = {_READERS[p.suffix.lower()] for p in files}
        if len(kinds) > 1:
            raise ValueError(f"dataset_name={str(path)!r} mixes file types {sorted(kinds)}; keep one")
        return load_dataset(kinds.pop(), data_files=[str(p) for p in files], split="train")
    if path.is_file():
        kind = _READERS.get(path.suffix.lower())
        if kind is None:
            raise ValueError(
                f"dataset_name={str(path)!r}: unknown file type {path.suffix!r}; use .csv, .tsv, .json, .jsonl or "
                ".parquet, or a folder saved with Dataset.save_to_disk"
            )
        kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
        return load_dataset(kind, data_files=str(path), split="train", **kwargs)
    if str(name_or_path).startswith((".", "/", "~")) or Path(str(name_or_path)).suffix.lower() in _READERS:
        raise ValueError(f"dataset_name={str(name_or_path)!r} does not exist")
    logger.info("Loading %s from the Hugging Face Hub (config %s, split %s)", name_or_path, config, split)
    return load_dataset(str(name_or_path), config, split=split)


def load_dataset_rows(
    name_or_path: str | Path,
    *,
    config: str | None = None,
    split: str = "train",
    languages: Sequence[str] | None = None,
    harmful: bool | None = None,
    source: str | None = None,
) -> Dataset:
    """A user's data set (a Hub name, or a CSV / JSON(L) / Parquet file or folder, or a saved `datasets` folder) as
    MSD rows, in either shape (module docstring).

    Args:
        languages: wide shape: the language columns to use (required unless every non-`id`/`en` column is one);
            long shape: keep only rows in these languages (`language` column).
        harmful: the `harmful` value of rows that do not carry one (None leaves the column out when absent).
        source: the `source` value of rows that do not carry one (default: the file or data set name).
    """
    table = _read(name_or_path, config, split)
    columns = set(table.column_names)
    label = source or Path(str(name_or_path)).stem
    if "prompt" in columns:  # long
        if languages is not None:
            if "language" not in columns:
                raise ValueError(
                    f"dataset_name={str(name_or_path)!r} has no 'language' column to select languages {list(languages)}"
                )
            wanted = set(languages)
            table = table.filter(lambda row: row["language"] in wanted)
        if "id" not in columns:
            table = table.add_column("id", [f"{label}-{i}" for i in range(len(table))])
        if "source" not in columns:
            table = table.add_column("source", [label] * len(table))
        if harmful is not None and "harmful" not in columns:
            table = table.add_column("harmful", [harmful] * len(table))
        return table
    if "id" in columns and "en" in columns:  # wide
        candidates = [c for c in table.column_names if c not in ("id", "en", "source", "tags")]
        chosen = list(languages) if languages is not None else candidates
        if not chosen:
            raise ValueError(f"dataset_name={str(name_or_path)!r} (wide) has no language columns besides 'en'")
        rows = build_msd_rows(table, chosen, source=label, harmful=bool(harmful))
        return rows
    raise ValueError(
        f"dataset_name={str(name_or_path)!r} has columns {sorted(columns)}: expected the long shape (a 'prompt' "
        "column, usually 'teacher_prompt') or the wide shape ('id', 'en' and one column per language code)."
    )


def build_safety_mix(
    harmful_languages: Sequence[str] = ("jv", "sw", "bn"),
    benign_languages: Sequence[str] = ("sw", "bn"),
    *,
    benign_proportion: float = 0.4,
    split: str = "train",
    test_size: float | int = 0.2,
    seed: int = 0,
    data_dir: str | Path | None = None,
    tokenizer=None,
    max_prompt_tokens: int | None = None,
    num_rows: int | None = None,
    conversational: bool = False,
    multiq_languages: Sequence[str] = (),
    multiq_share: float = 0.5,
    teacher_prompt_template: str | None = None,
    teacher_system_prompt: str | None = None,
    harmful_corpus: str = "multijail",
    benign_corpora: dict[str, Sequence[str]] | None = None,
    teacher_context=None,
) -> Dataset:
    """The MSD training (or held-out) set: harmful queries (MultiJail) mixed with benign ones (MGSM, MultiQ).

    Each corpus comes from the registry (:func:`get_corpus`) and is split its own way (by query id with
    ``test_size`` and ``seed``, the split evaluation holds out; MultiQ by id parity), ``split`` ("train" or "test")
    is kept, rows are optionally filtered by prompt length, and mixed with ``benign_proportion`` of benign rows.
    Benign rows matter, chat questions most: distilling on harmful queries with only math as benign rows teaches
    "non-English prompt -> refuse" (docs/results.md).

    Args:
        harmful_languages / benign_languages: languages of the harmful corpus and of MGSM; an empty benign list
            means no MGSM rows.
        multiq_languages / multiq_share: MultiQ languages of benign chat questions, and their share of the benign
            rows when MGSM rows are mixed in too.
        harmful_corpus / benign_corpora: registered corpus names, to use other data sources
            (``benign_corpora={name: languages}`` replaces MGSM and MultiQ; shares are then equal).
        data_dir: the folder holding each corpus's sub-folder; default :func:`find_shared_data_dir`, else the Hub.
        tokenizer / max_prompt_tokens / teacher_prompt_template / teacher_system_prompt: see
            :func:`data.filter_by_length` (with a template, conversations are measured as the trainers render them);
            ``teacher_context`` (a :class:`msd_trl.presets.TeacherContext`) replaces the template and system prompt.
        num_rows: size of the mix (default: the largest that needs no repeated row).
    """
    if split not in ("train", "test"):
        raise ValueError(f"`split` must be 'train' or 'test', got {split!r}")
    if not 0.0 < multiq_share <= 1.0:
        raise ValueError(f"`multiq_share` must be in (0, 1], got {multiq_share!r}")
    base = Path(data_dir) if data_dir is not None else find_shared_data_dir()
    shares: dict[str, float] = {}
    if benign_corpora is None:
        benign_corpora = {}
        if benign_languages:
            benign_corpora["mgsm"] = benign_languages
        if multiq_languages:
            benign_corpora["multiq"] = multiq_languages
        if len(benign_corpora) == 2:
            shares = {"mgsm": 1.0 - multiq_share, "multiq": multiq_share}

    def rows_of(name: str, languages: Sequence[str]) -> Dataset:
        corpus = get_corpus(name)
        source = base / corpus.folder if base is not None and corpus.folder else None
        loaded = corpus.load(source, list(languages), conversational=conversational)
        return corpus.split_rows(loaded, test_size=test_size, seed=seed)[split]

    harmful = rows_of(harmful_corpus, harmful_languages)
    benign = {name: rows_of(name, langs) for name, langs in benign_corpora.items() if langs and benign_proportion > 0}
    return mix_harmful_and_benign(
        harmful,
        benign,
        benign_proportion=benign_proportion,
        benign_shares=shares,
        num_rows=num_rows,
        seed=seed,
        tokenizer=tokenizer,
        max_prompt_tokens=max_prompt_tokens,
        teacher_prompt_template=teacher_prompt_template,
        teacher_system_prompt=teacher_system_prompt,
        harmful_name=harmful_corpus,
        teacher_context=teacher_context,
    )
