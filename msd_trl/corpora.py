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
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from .data import (
    MGSM_LANGUAGES,
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
from .names import check_language_codes, split_list, unknown_language_codes
from .registry import Registry

logger = logging.getLogger(__name__)

__all__ = [
    "CORPORA",
    "Corpus",
    "DataFileError",
    "build_safety_mix",
    "corpus_languages",
    "get_corpus",
    "load_dataset_rows",
    "register_corpus",
]


@dataclass(frozen=True)
class Corpus:
    """A data source by name, with everything training and evaluation need to use it without code of their own.

    `load(source, languages, *, conversational=False)` returns MSD rows (`source` None means the corpus's default
    location); `default_languages` are the languages a run uses when none are named; `harmful` says whether its
    queries are harmful; `split` is its split rule: `"id"` (`split_by_id` with the run's test size and seed) or
    `"parity"` (`split_by_id_parity`: odd ids test, whatever the seed); `folder` is its sub-folder of a data
    directory (`--data_dir`)."""

    name: str
    load: Callable[..., Dataset]
    default_languages: tuple[str, ...]
    harmful: bool
    split: str = "id"
    folder: str | None = None

    def __post_init__(self):
        if self.split not in ("id", "parity"):
            raise ValueError(f"Corpus.split={self.split!r} is invalid: use 'id' or 'parity'.")

    def read(self, languages: Sequence[str], *, data_dir: str | Path | None = None, conversational: bool = False):
        """Every row in `languages`, from `data_dir`'s sub-folder of this corpus (None: the loader's default)."""
        source = Path(data_dir) / self.folder if data_dir is not None and self.folder else None
        return self.load(source, list(languages), conversational=conversational)

    def split_rows(self, rows: Dataset, *, test_size: float, seed: int) -> DatasetDict:
        """`train` and `test` sides of `rows` by this corpus's rule."""
        if self.split == "parity":
            return split_by_id_parity(rows)
        return split_by_id(rows, test_size=test_size, seed=seed)


CORPORA = Registry("corpus", expects="a Corpus", check=lambda value: isinstance(value, Corpus))


def register_corpus(corpus: Corpus, *, overwrite: bool = False) -> Corpus:
    """Make `corpus` usable by name in training (`build_safety_mix`, `msd-trl train --harmful_corpus`) and evaluation
    (`EvaluationArguments.harmful_corpus` / `benign_corpora`, `msd-trl evaluate --harmful_corpus`)."""
    return CORPORA.register(corpus, overwrite=overwrite)


def get_corpus(name: str) -> Corpus:
    """The registered corpus called `name`; a ValueError lists the registered names otherwise."""
    return CORPORA.lookup(name)


def corpus_languages(specs: Sequence[str], languages: Sequence[str]) -> dict[str, list[str]]:
    """Corpora as the command line names them (`--benign_corpora`): each `NAME` (in `languages`) or
    `NAME:LANG,LANG` -> `{name: languages}`."""
    chosen = {}
    for spec in specs:
        name, _, codes = spec.partition(":")
        chosen[name] = split_list(codes) if codes else list(languages)
    return chosen


# MultiJail's default languages are its low-resource ones, where the cross-lingual gap is largest.
register_corpus(Corpus("multijail", load_multijail, ("jv", "sw", "bn"), harmful=True, folder="multijail"))
register_corpus(Corpus("mgsm", load_mgsm, MGSM_LANGUAGES, harmful=False, folder="mgsm"))
register_corpus(Corpus("multiq", load_multiq, MULTIQ_LANGUAGES, harmful=False, split="parity", folder="multiq"))


_READERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
# Wide-shape columns that are not languages: the id, the English query, and per-query extras.
_WIDE_NON_LANGUAGE = ("id", "en", "source", "tags", "harmful")
_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f", ""}


class DataFileError(ValueError):
    """A user's data file that cannot be read, with the file, the line where known, and the cause."""


def _where(path: Path, line: int | None = None) -> str:
    return f"{str(path)!r}" + (f", line {line}" if line is not None else "")


def _check_text_file(path: Path, kind: str) -> None:
    """Fail on what `datasets` reports only as "An error occurred while generating the dataset" / "corresponds to no
    data": an empty file, bytes that are not UTF-8, a JSON line that does not parse (a cut last line), a CSV with a
    header and no rows. Names the file, the line and the fix."""
    import csv
    import json

    raw = path.read_bytes()
    if not raw.strip():
        raise DataFileError(f"dataset file {_where(path)} is empty: it holds no rows.")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataFileError(
            f"dataset file {_where(path, line)}: byte 0x{raw[err.start]:02x} is not UTF-8 (the file looks saved as "
            f"Latin-1 or another legacy encoding); save it as UTF-8, e.g. `iconv -f latin1 -t utf-8 {path.name} > "
            f"utf8{path.suffix}`."
        ) from None
    if kind == "json":
        try:
            json.loads(text)  # one JSON document (an array of rows): fine
            return
        except json.JSONDecodeError:
            pass
        lines = text.splitlines()
        last = max((i for i, value in enumerate(lines) if value.strip()), default=-1)
        for number, value in enumerate(lines, start=1):
            if not value.strip():
                continue
            try:
                record = json.loads(value)
            except json.JSONDecodeError as err:
                cut = (
                    " (the last line is cut off, e.g. by a killed writer: complete or delete it)"
                    if number - 1 == last
                    else ""
                )
                raise DataFileError(
                    f"dataset file {_where(path, number)}: not valid JSON ({err.msg}, column {err.colno}){cut}."
                ) from None
            if not isinstance(record, dict):
                raise DataFileError(
                    f"dataset file {_where(path, number)}: a JSON-lines row must be an object "
                    f'({{"prompt": ..., "teacher_prompt": ...}}), got {type(record).__name__}.'
                )
    elif kind == "csv":
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        rows = csv.reader(text.splitlines(), delimiter=delimiter)
        header = next(rows, [])
        if not any(any(cell.strip() for cell in row) for row in rows):
            raise DataFileError(f"dataset file {_where(path)} has a header ({header}) but no rows below it.")


def _root_cause(err: BaseException) -> BaseException:
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    return err


def _load_files(kind: str, files: list[Path], **kwargs) -> Dataset:
    for file in files:
        if kind != "parquet":
            _check_text_file(file, kind)
    try:
        return load_dataset(kind, data_files=[str(f) for f in files], split="train", **kwargs)
    except Exception as err:  # datasets wraps every parser error in one generic message
        cause = _root_cause(err)
        names = ", ".join(repr(str(f)) for f in files)
        raise DataFileError(
            f"dataset file {names} could not be read as {kind}: {type(cause).__name__}: {cause}"
        ) from err


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
        return _load_files(kinds.pop(), files)
    if path.is_file():
        kind = _READERS.get(path.suffix.lower())
        if kind is None:
            raise ValueError(
                f"dataset_name={str(path)!r}: unknown file type {path.suffix!r}; use .csv, .tsv, .json, .jsonl or "
                ".parquet, or a folder saved with Dataset.save_to_disk"
            )
        kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
        return _load_files(kind, [path], **kwargs)
    if str(name_or_path).startswith((".", "/", "~")) or Path(str(name_or_path)).suffix.lower() in _READERS:
        raise ValueError(f"dataset_name={str(name_or_path)!r} does not exist")
    logger.info("Loading %s from the Hugging Face Hub (config %s, split %s)", name_or_path, config, split)
    return load_dataset(str(name_or_path), config, split=split)


def _as_harmful_flag(value, name: str, where: str) -> bool:
    """A `harmful` cell as a bool: True/False, 0/1, or the strings true/false/yes/no/1/0 (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if value is None:
        raise ValueError(f"dataset_name={name!r}: {where} has no 'harmful' value; use 1/true or 0/false.")
    raise ValueError(f"dataset_name={name!r}: {where} has harmful={value!r}; use 1/true or 0/false.")


def _languages_of(table: Dataset) -> dict[str, int]:
    return dict(sorted(Counter(table["language"]).items())) if "language" in table.column_names else {}


def _check_unique_queries(table: Dataset, name: str) -> None:
    """A long-shape id names one query: once per language, with one English text. A repeated (id, language) pair
    would be trained twice and, in evaluation, get one teacher answer for two queries."""
    from .rendering import message_text

    ids = [str(v) for v in table["id"]]
    languages = list(table["language"]) if "language" in table.column_names else [None] * len(ids)
    pairs = Counter(zip(ids, languages))
    repeated = [f"{i}@{lang}" if lang is not None else i for (i, lang), count in pairs.items() if count > 1]
    if repeated:
        raise ValueError(
            f"dataset_name={name!r}: ids repeated within one language: {repeated[:10]}"
            + (f" and {len(repeated) - 10} more" if len(repeated) > 10 else "")
            + ". An id names one query (one row per language); give each query its own id."
        )
    if "teacher_prompt" in table.column_names:
        english: dict[str, set[str]] = {}
        for query_id, value in zip(ids, table["teacher_prompt"]):
            if value is not None:
                english.setdefault(query_id, set()).add(message_text(value))
        mixed = sorted(query_id for query_id, texts in english.items() if len(texts) > 1)
        if mixed:
            raise ValueError(
                f"dataset_name={name!r}: ids with more than one English teacher_prompt: {mixed[:10]}. An id names "
                "one query, the same English text in every language; give different queries different ids."
            )


def _check_languages_held(table: Dataset, languages: Sequence[str], name: str) -> None:
    """The --languages filter on a long file: every requested language must be there; say which ones are."""
    held = _languages_of(table)
    missing = [code for code in languages if code not in held]
    if missing:
        kept = {code: n for code, n in held.items() if code in languages}
        raise ValueError(
            f"dataset_name={name!r}: the --languages filter {list(languages)} "
            + ("leaves no rows" if not kept else f"names languages the file does not hold: {missing}")
            + f"; the file holds {held or 'no language column'} (rows per language). Pass --languages with those "
            "codes, or leave it out to use every language the file holds."
        )


def load_dataset_rows(
    name_or_path: str | Path,
    *,
    config: str | None = None,
    split: str = "train",
    languages: Sequence[str] | None = None,
    harmful: bool | None = None,
    source: str | None = None,
    id_split: str | None = None,
    test_size: float | int = 0.2,
    seed: int = 0,
    required: Mapping[str, str] | None = None,
) -> Dataset:
    """A user's data set (a Hub name, or a CSV / JSON(L) / Parquet file or folder, or a saved `datasets` folder) as
    MSD rows, in either shape (module docstring).

    Args:
        languages: wide shape: the language columns to use (default: every column but `id`, `en`, `source`, `tags`,
            `harmful`); long shape: keep only rows in these languages (default: every language the file holds). A
            requested language the file lacks is an error listing the languages it has.
        harmful: the `harmful` value of rows that do not carry one (None leaves the column out when absent). A
            `harmful` column (bool, 0/1, true/false) is honoured row by row, in either shape.
        source: the `source` value of rows that do not carry one (default: the file or data set name).
        id_split: "train" or "test": split by query id over *every* row of the file (`data.split_by_id` with
            `test_size` and `seed`) before the language filter, so training and evaluation hold out the same ids
            whatever languages each uses. None keeps every row.
        required: column -> why it is needed; a long-shape file without it is refused with that reason, before
            anything else is checked.

    Every language code must be one `names.language_name` can name (BCP-47); a repeated (id, language) pair, or an
    id with two English texts, is refused naming the ids. Unreadable files raise `DataFileError` naming the file,
    the line and the cause.
    """
    if id_split not in (None, "train", "test"):
        raise ValueError(f"id_split must be None, 'train' or 'test', got {id_split!r}")
    table = _read(name_or_path, config, split)
    name = str(name_or_path)
    columns = set(table.column_names)
    label = source or Path(name).stem
    if "prompt" in columns:  # long
        for column, why in (required or {}).items():
            if column not in columns:
                raise ValueError(f"dataset_name={name!r} has no {column!r} column: {why}")
        if len(table) == 0:
            raise ValueError(f"dataset_name={name!r} has no rows.")
        if languages is not None and "language" not in columns:
            raise ValueError(
                f"dataset_name={name!r} has no 'language' column to select languages {list(languages)}: add one, "
                "or leave --languages out"
            )
        if "id" not in columns:
            table = table.add_column("id", [f"{label}-{i}" for i in range(len(table))])
        _check_unique_queries(table, name)
        if "source" not in columns:
            table = table.add_column("source", [label] * len(table))
        if "harmful" in columns:
            flags = [_as_harmful_flag(v, name, f"row {i} (id {q!r})") for i, (v, q) in
                     enumerate(zip(table["harmful"], table["id"]))]  # fmt: skip
            table = table.remove_columns("harmful").add_column("harmful", flags)
        elif harmful is not None:
            table = table.add_column("harmful", [harmful] * len(table))
    elif "id" in columns and "en" in columns:  # wide
        candidates = [c for c in table.column_names if c not in _WIDE_NON_LANGUAGE]
        if languages is not None:
            absent = [code for code in languages if code not in columns]
            if absent:
                raise ValueError(
                    f"dataset_name={name!r} (wide shape) has no column for language(s) {absent}; its language "
                    f"columns are {candidates}. Pass --languages with some of them (the English column 'en' is the "
                    "teacher's)."
                )
        chosen = list(languages) if languages is not None else candidates
        if not chosen:
            raise ValueError(f"dataset_name={name!r} (wide) has no language columns besides 'en'")
        unknown = unknown_language_codes(chosen)
        if unknown:
            raise ValueError(
                f"dataset_name={name!r} (wide shape): columns {unknown} are not language codes msd_trl can name; "
                f"pass --languages with the language columns to use (BCP-47 codes such as 'tl'), from {candidates}."
            )
        rows = build_msd_rows(table, chosen, source=label, harmful=bool(harmful))
        if "harmful" in columns:
            by_id = {
                str(query_id): _as_harmful_flag(value, name, f"id {str(query_id)!r}")
                for query_id, value in zip(table["id"], table["harmful"])
            }
            rows = rows.remove_columns("harmful").add_column("harmful", [by_id[i] for i in rows["id"]])
        table = rows
    else:
        raise ValueError(
            f"dataset_name={name!r} has columns {sorted(columns)}: expected the long shape (a 'prompt' column, "
            "usually 'teacher_prompt') or the wide shape ('id', 'en' and one column per language code)."
        )
    if "language" in table.column_names:
        check_language_codes(_languages_of(table), f"dataset_name={name!r}")
    if languages is not None and "prompt" in columns:
        _check_languages_held(table, languages, name)
    if id_split is not None:
        table = split_by_id(table, test_size=test_size, seed=seed)[id_split]
    if languages is not None and "prompt" in columns:
        wanted = set(languages)
        table = table.filter(lambda row: row["language"] in wanted)
    return table


def build_safety_mix(
    harmful_languages: Sequence[str] | None = None,
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
    plan: dict | None = None,
) -> Dataset:
    """The MSD training (or held-out) set: harmful queries (MultiJail) mixed with benign ones (MGSM, MultiQ).

    Each corpus comes from the registry (:func:`get_corpus`) and is split its own way (by query id with
    ``test_size`` and ``seed``, the split evaluation holds out; MultiQ by id parity), ``split`` ("train" or "test")
    is kept, rows are optionally filtered by prompt length, and mixed with ``benign_proportion`` of benign rows.
    Benign rows matter, chat questions most: distilling on harmful queries with only math as benign rows teaches
    "non-English prompt -> refuse" (docs/results.md).

    Args:
        harmful_languages / benign_languages: languages of the harmful corpus (default: its default languages,
            MultiJail's jv, sw, bn) and of MGSM; an empty benign list means no MGSM rows.
        multiq_languages / multiq_share: MultiQ languages of benign chat questions, and their share of the benign
            rows when MGSM rows are mixed in too.
        harmful_corpus / benign_corpora: registered corpus names, to use other data sources
            (``benign_corpora={name: languages}`` replaces MGSM and MultiQ; shares are then equal).
        data_dir: the folder holding each corpus's sub-folder; default :func:`find_shared_data_dir`, else the Hub.
        tokenizer / max_prompt_tokens / teacher_prompt_template / teacher_system_prompt: see
            :func:`data.filter_by_length` (with a template, conversations are measured as the trainers render them);
            ``teacher_context`` (a :class:`msd_trl.presets.TeacherContext`) replaces the template and system prompt.
        num_rows: size of the mix (default: the largest that needs no repeated row).
        plan: a dict that receives rows per corpus and language at each stage (read, train side, within the prompt
            limit), for the CLI's plan block.
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
        loaded = corpus.read(languages, data_dir=base, conversational=conversational)
        if plan is not None:
            plan.setdefault(name, {})["read"] = Counter(loaded["language"])
        return corpus.split_rows(loaded, test_size=test_size, seed=seed)[split]

    if harmful_languages is None:
        harmful_languages = get_corpus(harmful_corpus).default_languages
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
        plan=plan,
    )
