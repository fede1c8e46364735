"""The three corpora we read: MultiJail (harmful), MGSM (benign math) and MultiQ (benign chat), as MSD rows."""

from __future__ import annotations

import ast
import csv
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, List, Value, load_dataset

from .rows import (
    _MGSM_FILE,
    _MGSM_HUB_SPLIT,
    _MULTIJAIL_FILE,
    _MULTIQ_FILE,
    DATA_DIR_ENV,
    LANGUAGE_NAMES,
    MGSM_HUB_NAME,
    MGSM_LANGUAGES,
    MULTIJAIL_HUB_NAME,
    MULTIJAIL_LANGUAGES,
    MULTIQ_LANGUAGES,
    OnEmpty,
    _is_local_path,
    _normalise_languages,
    build_msd_rows,
    find_shared_data_dir,
)

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------------------------
# MultiJail
# ----------------------------------------------------------------------------------------------------------------------


def _parse_tags(value: Any) -> list[str]:
    # MultiJail stores tags as a Python list literal in a CSV cell: "['Violence', 'Hate speech']".
    if value is None:
        return []
    if isinstance(value, list):
        return [str(tag) for tag in value]
    text = str(value).strip()
    if text.startswith("["):
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            parsed = None
        if isinstance(parsed, list):
            return [str(tag) for tag in parsed]
    return [text] if text else []


def _read_multijail_csv(path: Path) -> Dataset:
    # utf-8-sig: the upstream file starts with a BOM that would otherwise end up in the first column name.
    with path.open(encoding="utf-8-sig", newline="") as handle:
        records = list(csv.DictReader(handle))
    if not records:
        raise ValueError(f"MultiJail file {str(path)!r} has no rows")
    return Dataset.from_list(records)


def _multijail_corpus(source: str | Path | Dataset | None) -> Dataset:
    if source is None:
        data_dir = find_shared_data_dir()
        local = data_dir / "multijail" / _MULTIJAIL_FILE if data_dir is not None else None
        source = local if local is not None and local.is_file() else MULTIJAIL_HUB_NAME
    if isinstance(source, Dataset):
        return source
    if not isinstance(source, (str, Path)):
        raise ValueError(f"`source` must be a path, a Hub name or a datasets.Dataset, got {type(source).__name__}")
    if _is_local_path(source):
        path = Path(source).expanduser()
        if path.is_dir():
            path = path / _MULTIJAIL_FILE
        if not path.is_file():
            raise ValueError(f"`source`: MultiJail CSV not found at {str(path)!r}")
        return _read_multijail_csv(path)
    logger.info("Loading MultiJail from the Hugging Face Hub: %s", source)
    return load_dataset(str(source), split="train")


def load_multijail(
    source: str | Path | Dataset | None = None,
    languages: str | Iterable[str] | None = None,
    *,
    conversational: bool = False,
    on_empty: OnEmpty = "raise",
) -> Dataset:
    """Load MultiJail (315 harmful queries in English + 9 languages) as MSD rows.

    Args:
        source: ``None`` (the local ``shared/data/multijail/MultiJail.csv`` if found, else the Hub
            ``DAMO-NLP-SG/MultiJail``); a CSV path or a folder holding ``MultiJail.csv``; a wide
            ``datasets.Dataset`` (columns ``id``, ``en`` and language codes); or a Hub name.
        languages: target languages; ``None`` means all of :data:`MULTIJAIL_LANGUAGES`.
        conversational: prompts as chat messages instead of strings.
        on_empty: see :func:`build_msd_rows`.

    Returns:
        MSD rows with ``source="multijail"``, ``harmful=True``, ids ``"multijail-<upstream id>"`` and,
        when the corpus has it, a ``tags`` column (list of harm categories).
    """
    corpus = _multijail_corpus(source)
    if "id" not in corpus.column_names:
        raise ValueError(f"MultiJail corpus has no 'id' column; columns: {corpus.column_names}")
    # Prefix ids with the corpus so they stay unique after mixing with MGSM ("mgsm-0").
    ids = [f"multijail-{value}" for value in corpus["id"]]
    corpus = corpus.remove_columns("id").add_column("id", ids)
    extras: tuple[str, ...] = ()
    if "tags" in corpus.column_names:
        tags = [_parse_tags(value) for value in corpus["tags"]]
        corpus = corpus.remove_columns("tags").add_column("tags", tags, feature=List(Value("string")))
        extras = ("tags",)
    return build_msd_rows(
        corpus,
        MULTIJAIL_LANGUAGES if languages is None else languages,
        source="multijail",
        harmful=True,
        conversational=conversational,
        extra_columns=extras,
        on_empty=on_empty,
    )


# ----------------------------------------------------------------------------------------------------------------------
# MGSM
# ----------------------------------------------------------------------------------------------------------------------


def _normalise_answer(value: Any) -> str:
    # TSV answers use thousands separators ("2,125"); the Hub stores numbers (2125 or 2125.0).
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).replace(",", "").strip()


def _read_mgsm_tsv(path: Path) -> list[tuple[str, str]]:
    # QUOTE_NONE: questions contain quote characters that the default dialect would treat as field quoting.
    with path.open(encoding="utf-8-sig", newline="") as handle:
        records = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    rows = []
    for line_number, record in enumerate(records, start=1):
        if len(record) != 2:
            raise ValueError(
                f"MGSM file {str(path)!r}, line {line_number}: expected 2 tab-separated fields "
                f"(question, answer), got {len(record)}"
            )
        rows.append((record[0], record[1]))
    return rows


def _mgsm_corpus_from_folder(folder: Path, codes: list[str]) -> Dataset:
    available = sorted(p.stem.removeprefix("mgsm_") for p in folder.glob("mgsm_*.tsv"))
    tables: dict[str, list[tuple[str, str]]] = {}
    for code in ["en", *(c for c in codes if c != "en")]:
        path = folder / _MGSM_FILE.format(language=code)
        if not path.is_file():
            kind = "unknown language code" if code not in LANGUAGE_NAMES else "no MGSM file for language"
            raise ValueError(f"`languages`: {kind} {code!r} ({str(path)!r} missing); available: {available}")
        tables[code] = _read_mgsm_tsv(path)
    english = tables["en"]
    for code, table in tables.items():
        if len(table) != len(english):
            raise ValueError(
                f"MGSM {code!r} has {len(table)} rows but English has {len(english)}; files must be parallel"
            )
        for index, ((_, answer), (_, english_answer)) in enumerate(zip(table, english)):
            if _normalise_answer(answer) != _normalise_answer(english_answer):
                raise ValueError(
                    f"MGSM {code!r} row {index}: answer {answer!r} differs from English {english_answer!r}; "
                    "files are not parallel"
                )
    wide: dict[str, list[str]] = {"id": [f"mgsm-{i}" for i in range(len(english))]}
    for code, table in tables.items():
        wide[code] = [question for question, _ in table]
    wide["answer"] = [_normalise_answer(answer) for _, answer in english]
    return Dataset.from_dict(wide)


def _mgsm_corpus_from_hub(name: str, codes: list[str]) -> Dataset:
    logger.info("Loading MGSM from the Hugging Face Hub: %s", name)
    wide: dict[str, list[Any]] = {}
    for code in ["en", *(c for c in codes if c != "en")]:
        table = load_dataset(name, code, split=_MGSM_HUB_SPLIT)
        wide[code] = list(table["question"])
        if code == "en":
            wide["answer"] = [_normalise_answer(a) for a in table["answer_number"]]
    wide["id"] = [f"mgsm-{i}" for i in range(len(wide["en"]))]
    return Dataset.from_dict(wide)


def load_mgsm(
    source: str | Path | Dataset | None = None,
    languages: str | Iterable[str] | None = None,
    *,
    conversational: bool = False,
    on_empty: OnEmpty = "raise",
) -> Dataset:
    """Load MGSM (250 benign grade-school math questions) as MSD rows, for utility and over-refusal.

    Args:
        source: ``None`` (the local ``shared/data/mgsm/`` folder if found, else the Hub ``juletxara/mgsm``);
            a folder of ``mgsm_{lang}.tsv`` files (question TAB answer, no header; ``mgsm_en.tsv`` is
            required as the teacher text); a wide ``datasets.Dataset`` (columns ``en``, language codes,
            ``answer`` and optionally ``id``); or a Hub name (one config per language, split ``test``).
        languages: target languages; ``None`` means all of :data:`MGSM_LANGUAGES`.
        conversational: prompts as chat messages instead of strings.
        on_empty: see :func:`build_msd_rows`.

    Returns:
        MSD rows with ``source="mgsm"``, ``harmful=False``, ids ``"mgsm-<row index>"`` and an ``answer``
        column (the numeric answer as a string, thousands separators removed: ``"2125"``).
    """
    codes = _normalise_languages(MGSM_LANGUAGES if languages is None else languages)
    if source is None:
        data_dir = find_shared_data_dir()
        local = data_dir / "mgsm" if data_dir is not None else None
        source = local if local is not None and local.is_dir() else MGSM_HUB_NAME
    if isinstance(source, Dataset):
        corpus = source
        if "answer" not in corpus.column_names:
            raise ValueError(f"MGSM corpus has no 'answer' column; columns: {corpus.column_names}")
        if "id" not in corpus.column_names:
            corpus = corpus.add_column("id", [f"mgsm-{i}" for i in range(len(corpus))])
        answers = [_normalise_answer(value) for value in corpus["answer"]]
        corpus = corpus.remove_columns("answer").add_column("answer", answers)
    elif isinstance(source, (str, Path)):
        if _is_local_path(source):
            folder = Path(source).expanduser()
            if not folder.is_dir():
                raise ValueError(f"`source`: MGSM folder not found at {str(folder)!r}")
            corpus = _mgsm_corpus_from_folder(folder, codes)
        else:
            corpus = _mgsm_corpus_from_hub(str(source), codes)
    else:
        raise ValueError(f"`source` must be a path, a Hub name or a datasets.Dataset, got {type(source).__name__}")
    return build_msd_rows(
        corpus,
        codes,
        source="mgsm",
        harmful=False,
        conversational=conversational,
        extra_columns=("answer",),
        on_empty=on_empty,
    )


# ----------------------------------------------------------------------------------------------------------------------
# MultiQ
# ----------------------------------------------------------------------------------------------------------------------


def load_multiq(
    source: str | Path | Dataset | None = None,
    languages: str | Iterable[str] | None = None,
    *,
    conversational: bool = False,
    on_empty: OnEmpty = "raise",
) -> Dataset:
    """Load MultiQ (200 benign open questions, the same question in English and 20 languages) as MSD rows.

    MultiQ is the chat-style benign side of evaluation and training: unlike MGSM's math word problems, its
    questions ("What is the chemical formula for water?", "Is the earth flat?") cannot be told from a harmful
    request by their form, so over-refusal on them shows whether a model learned "refuse harmful" or "refuse
    unfamiliar languages". Split it with :func:`split_by_id_parity` (odd ids are evaluation-only).

    Args:
        source: ``None`` (the local ``shared/data/multiq/MultiQ.csv``); a CSV path or a folder holding
            ``MultiQ.csv``; or a wide ``datasets.Dataset`` (``id``, ``en`` and language columns). MultiQ is not
            on the Hugging Face Hub: without local data this raises, naming the file to download.
        languages: target languages; ``None`` means all of :data:`MULTIQ_LANGUAGES` (``ind`` is Indonesian).

    Returns:
        MSD rows with ``source="multiq"``, ``harmful=False`` and the upstream ids (``"multiq-gpt-1"``).
    """
    if source is None:
        data_dir = find_shared_data_dir()
        local = data_dir / "multiq" / _MULTIQ_FILE if data_dir is not None else None
        if local is None or not local.is_file():
            raise ValueError(
                "MultiQ not found: pass `source` (a path to MultiQ.csv from github.com/paul-rottger/multiq, "
                f"data/MultiQ.csv, in wide form) or set {DATA_DIR_ENV} to a folder holding multiq/MultiQ.csv"
            )
        source = local
    if isinstance(source, Dataset):
        corpus = source
    elif isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if path.is_dir():
            path = path / _MULTIQ_FILE
        if not path.is_file():
            raise ValueError(f"`source`: MultiQ CSV not found at {str(path)!r}")
        with path.open(encoding="utf-8-sig", newline="") as handle:
            records = list(csv.DictReader(handle))
        if not records:
            raise ValueError(f"MultiQ file {str(path)!r} has no rows")
        corpus = Dataset.from_list(records)
    else:
        raise ValueError(f"`source` must be a path or a datasets.Dataset, got {type(source).__name__}")
    if "id" not in corpus.column_names:
        raise ValueError(f"MultiQ corpus has no 'id' column; columns: {corpus.column_names}")
    extras: tuple[str, ...] = ()
    if "tags" in corpus.column_names:  # "gpt-generated;chemistry" -> a list, as MultiJail's tags
        tags = [[t for t in str(v or "").split(";") if t] for v in corpus["tags"]]
        corpus = corpus.remove_columns("tags").add_column("tags", tags, feature=List(Value("string")))
        extras = ("tags",)
    return build_msd_rows(
        corpus,
        MULTIQ_LANGUAGES if languages is None else languages,
        source="multiq",
        harmful=False,
        conversational=conversational,
        extra_columns=extras,
        on_empty=on_empty,
    )


def split_by_id_parity(dataset: Dataset, *, id_column: str = "id") -> DatasetDict:
    """MultiQ's fixed split: ids whose trailing number is odd (``multiq-gpt-1``) are ``test`` (evaluation only),
    even ones ``train``. Fixed, so results stay comparable across seeds and runs; every id must end in a number."""
    if id_column not in dataset.column_names:
        raise ValueError(f"`id_column`={id_column!r} is not a column; columns: {dataset.column_names}")
    parities = []
    for value in dataset[id_column]:
        digits = str(value).rsplit("-", 1)[-1]
        if not digits.isdigit():
            raise ValueError(f"split_by_id_parity: id {value!r} does not end in '-<number>'")
        parities.append(int(digits) % 2)
    train = [i for i, parity in enumerate(parities) if parity == 0]
    test = [i for i, parity in enumerate(parities) if parity == 1]
    return DatasetDict(train=dataset.select(train), test=dataset.select(test))
