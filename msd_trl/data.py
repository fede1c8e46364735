"""Parallel corpora -> MSD rows; splits by query id; mixing; prompt-length filtering.

Design. MSD trains on *parallel queries* only: the same query in English (the teacher's privileged
context) and in a target language (what the student sees). Every corpus we use is stored *wide*: one
row per query, one column per language code (MultiJail: ``id, source, tags, en, zh, ..., jv``; MGSM:
one TSV per language, the same 250 questions in the same order). This module turns a wide corpus into
*long* MSD rows, one per (query, target language), with a fixed set of columns that every trainer and
evaluator reads::

    id              str   query id, unique per query within a corpus and prefixed by the corpus
                          ("multijail-12", "mgsm-0") so that ids never collide after mixing
    source          str   the corpus ("multijail", "mgsm")
    language        str   target language code ("jv"); LANGUAGE_NAMES maps it to an English name
    prompt          str | list[dict]  the query in the target language (student input)
    teacher_prompt  str | list[dict]  the same query in English (teacher's privileged context)
    harmful         bool  True for red-team queries (MultiJail), False for benign ones (MGSM)
    ...                   corpus extras copied through (MultiJail ``tags``, MGSM ``answer``)

With ``conversational=True`` both prompt columns hold chat messages ``[{"role": "user", "content": ...}]``
so TRL's chat-template machinery applies; otherwise they are plain strings.

One generic builder (:func:`build_msd_rows`) does the wide -> long step and all the validation
(missing columns, unknown language codes, empty prompts); the loaders only read their format
(local file, folder, in-memory ``Dataset`` or Hub name) into a wide ``Dataset`` and call it. Local
data is found next to the repository (``../shared/data``) or through ``MSD_TRL_DATA_DIR``; the Hub
is the fallback for real users.

Rows of the same query in different languages are near-duplicates, so :func:`split_by_id` splits by
query id, never by row: a query's Javanese version in train and its Bengali version in test would
leak. :func:`mix_datasets` combines corpora (for example harmful MultiJail with benign MGSM, so that
the model does not learn to refuse everything) in chosen proportions, sampling without replacement.
:func:`filter_by_length` drops over-long prompts, which matter because low-resource scripts tokenise
into many more tokens (in SmolLM2's tokenizer a MultiJail query is ~12 tokens in English but ~100 in
Bengali or Thai, with outliers above 1,700) and one outlier makes a pad-to-longest batch crawl.

Row order is language-major (all rows of the first requested language, then the next, ...), and within
a language the corpus order, so outputs are deterministic and easy to slice per language.
"""

from __future__ import annotations

import ast
import csv
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from datasets import Dataset, DatasetDict, List, Value, concatenate_datasets, load_dataset
from tqdm.auto import tqdm

__all__ = [
    "build_safety_mix",
    "mix_harmful_and_benign",
    "LANGUAGE_NAMES",
    "MGSM_HUB_NAME",
    "MGSM_LANGUAGES",
    "MSD_COLUMNS",
    "MULTIJAIL_HUB_NAME",
    "MULTIJAIL_LANGUAGES",
    "MULTIQ_LANGUAGES",
    "build_msd_rows",
    "filter_by_length",
    "find_shared_data_dir",
    "load_mgsm",
    "load_multijail",
    "load_multiq",
    "mix_datasets",
    "split_by_id",
    "split_by_id_parity",
]

logger = logging.getLogger(__name__)

LANGUAGE_NAMES: dict[str, str] = {
    "en": "English",
    "zh": "Chinese",
    "it": "Italian",
    "vi": "Vietnamese",
    "ar": "Arabic",
    "ko": "Korean",
    "th": "Thai",
    "bn": "Bengali",
    "sw": "Swahili",
    "jv": "Javanese",
    "te": "Telugu",
    # The other MGSM languages on the Hub, so that `load_mgsm(languages=["de"])` reads naturally.
    "de": "German",
    "es": "Spanish",
    "fr": "French",
    "ja": "Japanese",
    "ru": "Russian",
    # MultiQ's other languages ("ind" is Indonesian: MultiQ keeps "id" for the row id).
    "hi": "Hindi",
    "ind": "Indonesian",
}

MULTIJAIL_LANGUAGES: tuple[str, ...] = ("zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv")
MGSM_LANGUAGES: tuple[str, ...] = ("bn", "sw", "th", "te", "zh")
MULTIJAIL_HUB_NAME = "DAMO-NLP-SG/MultiJail"
MGSM_HUB_NAME = "juletxara/mgsm"
MULTIQ_LANGUAGES: tuple[str, ...] = (
    "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv", "de", "fr", "es", "hi", "ja", "ru", "ind", "te",
)  # fmt: skip

# Columns every MSD row has, in this order; corpus extras follow.
MSD_COLUMNS: tuple[str, ...] = ("id", "source", "language", "prompt", "teacher_prompt", "harmful")

DATA_DIR_ENV = "MSD_TRL_DATA_DIR"
_MULTIJAIL_FILE = "MultiJail.csv"
_MGSM_FILE = "mgsm_{language}.tsv"
_MULTIQ_FILE = "MultiQ.csv"
# MGSM on the Hub has one config per language; the 250 questions are its "test" split.
_MGSM_HUB_SPLIT = "test"

OnEmpty = Literal["raise", "drop"]


# ----------------------------------------------------------------------------------------------------------------------
# Locating the data
# ----------------------------------------------------------------------------------------------------------------------


def _looks_like_data_dir(path: Path) -> bool:
    # A bare `shared/data` somewhere up the tree is not enough: it must hold one of our corpora.
    return path.is_dir() and ((path / "multijail").is_dir() or (path / "mgsm").is_dir())


def find_shared_data_dir(start: str | Path | None = None) -> Path | None:
    """Find the offline data folder (the one holding ``multijail/`` and ``mgsm/``).

    Order: the ``MSD_TRL_DATA_DIR`` environment variable; then, walking up from ``start`` (default: the
    current directory) and then from this package's directory, the first ancestor ``d`` with a
    ``d/shared/data`` folder holding ``multijail/`` or ``mgsm/`` (that is ``../shared/data`` next to the
    repository root). Returns ``None`` when nothing is found.

    Raises:
        ValueError: ``MSD_TRL_DATA_DIR`` is set but is not a directory (an explicit setting that is wrong
            should not silently fall back to the Hub).
    """
    env_value = os.environ.get(DATA_DIR_ENV)
    if env_value:
        env_path = Path(env_value).expanduser()
        if not env_path.is_dir():
            raise ValueError(f"{DATA_DIR_ENV}={env_value!r} is not a directory")
        return env_path.resolve()

    starts = [Path(start) if start is not None else Path.cwd(), Path(__file__).resolve().parent]
    for origin in starts:
        origin = origin.expanduser().resolve()
        for directory in (origin, *origin.parents):
            candidate = directory / "shared" / "data"
            if _looks_like_data_dir(candidate):
                return candidate
    return None


def _is_local_path(source: str | Path) -> bool:
    """Whether `source` names a local path (existing, or clearly meant as a path) rather than a Hub id."""
    if isinstance(source, Path) or Path(source).exists():
        return True
    # Hub ids look like "owner/name"; anything with a file suffix, a leading ./ ~ / or backslash is a path.
    text = str(source)
    return (
        text.startswith((".", "/", "~"))
        or "\\" in text
        or text.count("/") > 1
        or Path(text).suffix.lower() in {".csv", ".tsv", ".json", ".jsonl", ".parquet"}
    )


# ----------------------------------------------------------------------------------------------------------------------
# Wide corpus -> MSD rows
# ----------------------------------------------------------------------------------------------------------------------


def _normalise_languages(languages: str | Iterable[str], argument: str = "languages") -> list[str]:
    # A bare string would otherwise iterate character by character ("jv" -> "j", "v").
    codes = [languages] if isinstance(languages, str) else list(languages)
    if not codes:
        raise ValueError(f"`{argument}` is empty; pass at least one language code")
    for code in codes:
        if not isinstance(code, str) or not code:
            raise ValueError(f"`{argument}` must hold non-empty language-code strings, got {code!r}")
    duplicates = sorted(code for code, count in Counter(codes).items() if count > 1)
    if duplicates:
        raise ValueError(f"`{argument}` repeats language codes {duplicates}")
    return codes


def _as_prompt(text: str, conversational: bool) -> str | list[dict[str, str]]:
    return [{"role": "user", "content": text}] if conversational else text


def _is_empty_text(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def build_msd_rows(
    corpus: Dataset,
    languages: str | Iterable[str],
    *,
    id_column: str = "id",
    english_column: str = "en",
    source: str,
    harmful: bool,
    conversational: bool = False,
    extra_columns: Iterable[str] = (),
    on_empty: OnEmpty = "raise",
) -> Dataset:
    """Turn a wide parallel corpus into MSD rows, one per (query, target language).

    Args:
        corpus: one row per query, one text column per language code, plus ``id_column``.
        languages: target language codes (columns of ``corpus``); a single code may be a string.
        id_column: the query id column; values are converted to ``str`` and must be unique.
        english_column: the column holding the English (teacher) text.
        source: the corpus name written to the ``source`` column.
        harmful: written to the ``harmful`` column of every row.
        conversational: prompts as chat messages ``[{"role": "user", "content": text}]`` instead of strings.
        extra_columns: corpus columns copied through unchanged (for example ``tags``, ``answer``).
        on_empty: what to do with a query whose target-language or English text is empty or whitespace:
            ``"raise"`` (default) a ``ValueError`` naming the id and language; ``"drop"`` skip that
            (query, language) row and log the ids.

    Returns:
        A ``Dataset`` with columns ``id, source, language, prompt, teacher_prompt, harmful, *extra_columns``,
        rows grouped by language in the order of ``languages``.
    """
    if on_empty not in ("raise", "drop"):
        raise ValueError(f"`on_empty` must be 'raise' or 'drop', got {on_empty!r}")
    if not isinstance(source, str) or not source:
        raise ValueError(f"`source` must be a non-empty string, got {source!r}")
    codes = _normalise_languages(languages)
    extras = [extra_columns] if isinstance(extra_columns, str) else list(extra_columns)
    columns = list(corpus.column_names)

    for argument, column in (("id_column", id_column), ("english_column", english_column)):
        if column not in columns:
            raise ValueError(f"`{argument}`={column!r} is not a column of the corpus; columns: {columns}")
    # Known codes first; a corpus with codes outside LANGUAGE_NAMES gets its full column list instead.
    available = [c for c in columns if c in LANGUAGE_NAMES] or columns
    for code in codes:
        if code in columns:
            continue
        if code in LANGUAGE_NAMES:
            raise ValueError(
                f"`languages`: the corpus has no column for language {code!r} ({LANGUAGE_NAMES[code]}); "
                f"available language columns: {available}"
            )
        raise ValueError(
            f"`languages`: unknown language code {code!r} (not a column of the corpus); "
            f"available language columns: {available}"
        )
    for column in extras:
        if column in MSD_COLUMNS:
            raise ValueError(f"`extra_columns` may not contain the MSD column {column!r}; MSD columns: {MSD_COLUMNS}")
        if column not in columns:
            raise ValueError(f"`extra_columns`: {column!r} is not a column of the corpus; columns: {columns}")

    ids = [str(value) for value in corpus[id_column]]
    repeated = sorted(i for i, count in Counter(ids).items() if count > 1)
    if repeated:
        raise ValueError(f"`{id_column}` must identify each query once; repeated ids: {repeated[:10]}")

    # list(): datasets >= 4 returns a lazy Column; per-row indexing of it would re-read Arrow each time.
    english = list(corpus[english_column])
    extra_values = {column: list(corpus[column]) for column in extras}
    rows: dict[str, list[Any]] = {column: [] for column in (*MSD_COLUMNS, *extras)}
    dropped: dict[str, list[str]] = {}
    for code in codes:
        target = list(corpus[code])
        for index, query_id in enumerate(ids):
            text, english_text = target[index], english[index]
            for value, column in ((text, code), (english_text, english_column)):
                if not (value is None or isinstance(value, str)):
                    raise ValueError(f"column {column!r}, id {query_id!r}: expected text, got {type(value).__name__}")
            empty_in = [c for v, c in ((text, code), (english_text, english_column)) if _is_empty_text(v)]
            if empty_in:
                if on_empty == "raise":
                    raise ValueError(
                        f"empty prompt for id {query_id!r} in language column(s) {empty_in} of corpus {source!r}; "
                        "fix the data or pass on_empty='drop'"
                    )
                dropped.setdefault(code, []).append(query_id)
                continue
            rows["id"].append(query_id)
            rows["source"].append(source)
            rows["language"].append(code)
            rows["prompt"].append(_as_prompt(text, conversational))
            rows["teacher_prompt"].append(_as_prompt(english_text, conversational))
            rows["harmful"].append(bool(harmful))
            for column in extras:
                rows[column].append(extra_values[column][index])
    for code, dropped_ids in dropped.items():
        logger.warning(
            "%s: dropped %d empty prompt(s) in language %r (or their English text): ids %s",
            source,
            len(dropped_ids),
            code,
            dropped_ids,
        )
    return Dataset.from_dict(rows)


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

    mixed = concatenate_datasets(list(_align_columns(pieces).values()))
    mixed = mixed.shuffle(seed=int(rng.integers(2**31)))
    if proportions is None and num_rows is not None:
        mixed = mixed.select(range(num_rows))
    # Materialise the shuffle so later selects and maps read contiguous rows, not an indices mapping.
    mixed = mixed.flatten_indices()
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


def _rendered_lengths(dataset: Dataset, tokenizer, template: str, system_prompt: str | None) -> dict[str, list[int]]:
    """Token counts of the student's and the teacher's conversations exactly as the trainers render them."""
    from .rendering import render_student_messages, render_teacher_messages, tokenize_messages

    lengths: dict[str, list[int]] = {"student": [], "teacher": []}
    for row in tqdm(dataset, desc="Measuring rendered prompts", disable=len(dataset) < 2000):
        lengths["student"].append(len(tokenize_messages(tokenizer, render_student_messages(row))))
        teacher = render_teacher_messages(row, template=template, system_prompt=system_prompt)
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
) -> Dataset:
    """Drop rows whose prompt is longer than ``max_prompt_tokens`` tokens.

    With ``teacher_prompt_template`` (and the optional ``teacher_system_prompt``), the student's and the teacher's
    conversations are measured exactly as the trainers render them (chat template, system prompt, template), so
    the limit means what ``MSDConfig.max_prompt_length`` means; ``columns`` is then unused. Without it, each of
    ``columns`` is measured on its own: chat messages after the chat template (with the generation prompt), text
    with plain tokenisation (special tokens included), absent columns skipped. Logs (``logging.warning``) how many
    rows were dropped per language and the longest lengths seen.
    """
    if isinstance(max_prompt_tokens, bool) or not isinstance(max_prompt_tokens, int) or max_prompt_tokens < 1:
        raise ValueError(f"`max_prompt_tokens` must be a positive int, got {max_prompt_tokens!r}")
    if teacher_prompt_template is not None:
        measured = _rendered_lengths(dataset, tokenizer, teacher_prompt_template, teacher_system_prompt)
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
) -> Dataset:
    """Filter by rendered prompt length (when `tokenizer` and `max_prompt_tokens` are given), then mix `harmful` rows
    with the benign sets: `benign_proportion` of the rows benign, split among the sets by `benign_shares` (equal by
    default). A benign set left empty by the filter is dropped with a warning; an empty harmful set is an error."""
    if not 0.0 <= benign_proportion < 1.0:
        raise ValueError(f"`benign_proportion` must be in [0, 1), got {benign_proportion!r}")
    corpora: dict[str, Dataset] = {harmful_name: harmful, **dict(benign)}
    if tokenizer is not None and max_prompt_tokens is not None:
        corpora = {
            name: filter_by_length(
                ds,
                tokenizer,
                max_prompt_tokens=max_prompt_tokens,
                teacher_prompt_template=teacher_prompt_template,
                teacher_system_prompt=teacher_system_prompt,
            )
            for name, ds in corpora.items()
        }
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


def build_safety_mix(*args, **kwargs) -> Dataset:
    """MultiJail harmful rows mixed with benign MGSM and MultiQ ones; see :func:`msd_trl.corpora.build_safety_mix`
    (it lives there because it reads corpora through the registry)."""
    from .corpora import build_safety_mix as build

    return build(*args, **kwargs)
