"""MSD rows: the column contract, language names, where local data lives, and the wide -> long builder."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from datasets import Dataset

from ..names import LANGUAGE_NAMES, MSD_COLUMNS  # noqa: F401  (re-exported: msd_trl.data.LANGUAGE_NAMES)

logger = logging.getLogger(__name__)


MULTIJAIL_LANGUAGES: tuple[str, ...] = ("zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv")
MGSM_LANGUAGES: tuple[str, ...] = ("bn", "sw", "th", "te", "zh")
MULTIJAIL_HUB_NAME = "DAMO-NLP-SG/MultiJail"
MGSM_HUB_NAME = "juletxara/mgsm"
MULTIQ_LANGUAGES: tuple[str, ...] = (
    "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv", "de", "fr", "es", "hi", "ja", "ru", "ind", "te",
)  # fmt: skip


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
