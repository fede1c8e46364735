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
into many more tokens (docs/data.md has the lengths) and one outlier makes a pad-to-longest batch crawl.

Row order is language-major (all rows of the first requested language, then the next, ...), and within
a language the corpus order, so outputs are deterministic and easy to slice per language.

The package is split by concern: ``rows`` (the column contract, language names, locating data, the wide -> long
builder), ``loaders`` (MultiJail, MGSM, MultiQ) and ``mixing`` (splits, mixing, length filtering); every public name
is importable from ``msd_trl.data``. Corpora by name (a registry) live in ``msd_trl.corpora``.
"""

from __future__ import annotations

from .loaders import _normalise_answer, _parse_tags, load_mgsm, load_multijail, load_multiq, split_by_id_parity  # noqa: F401
from .mixing import (  # noqa: F401
    _token_lengths,
    filter_by_length,
    mix_datasets,
    mix_harmful_and_benign,
    split_by_id,
)
from .rows import (  # noqa: F401
    LANGUAGE_NAMES,
    MGSM_HUB_NAME,
    MGSM_LANGUAGES,
    MSD_COLUMNS,
    MULTIJAIL_HUB_NAME,
    MULTIJAIL_LANGUAGES,
    MULTIQ_LANGUAGES,
    _is_local_path,
    build_msd_rows,
    find_shared_data_dir,
)

__all__ = [
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
