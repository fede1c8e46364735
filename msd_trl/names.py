"""Names shared across the package: language names and the MSD column contract.

A leaf module: it imports nothing of ours, so data, rendering, evaluation and the CLI can all use it without
depending on each other (rendering used to import the data package for one dict).
"""

from __future__ import annotations

__all__ = [
    "LANGUAGE_NAMES",
    "MSD_COLUMNS",
    "TEACHER_CACHE_COLUMNS",
    "TEACHER_CACHE_FINGERPRINT",
    "TEACHER_CACHE_IDS",
    "TEACHER_CACHE_KEY",
    "TEACHER_CACHE_LOGPROBS",
    "TEACHER_COMPLETION_COLUMN",
]

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

# Columns every MSD row has, in this order; corpus extras follow.
MSD_COLUMNS: tuple[str, ...] = ("id", "source", "language", "prompt", "teacher_prompt", "harmful")

# The off-policy fixed completion (teacher text) column.
TEACHER_COMPLETION_COLUMN = "teacher_completion"

# The off-policy top-K teacher cache (msd_trl.teacher_cache): per row the teacher's top-K token ids and log-probs on
# each completion token, the fingerprint of the teacher setting that made them, and the row's key (digests of the
# teacher prompt ids and the completion ids it was computed on).
TEACHER_CACHE_IDS = "teacher_topk_ids"
TEACHER_CACHE_LOGPROBS = "teacher_topk_logprobs"
TEACHER_CACHE_FINGERPRINT = "teacher_topk_fingerprint"
TEACHER_CACHE_KEY = "teacher_topk_key"
TEACHER_CACHE_COLUMNS = (TEACHER_CACHE_IDS, TEACHER_CACHE_LOGPROBS, TEACHER_CACHE_FINGERPRINT, TEACHER_CACHE_KEY)
