"""Names shared across the package: language names and the MSD column contract.

A leaf module: it imports nothing of ours, so data, rendering, evaluation and the CLI can all use it without
depending on each other (rendering used to import the data package for one dict).

Language names come from `langcodes` (IETF BCP-47 tags: `tl`, `fil`, `pt-BR`, `zh-Hant`), so a user's own language
reaches the teacher as "Tagalog", never as a raw code; `LANGUAGE_NAMES` only keeps the corpora's own codes, among
them MultiQ's `ind` (Indonesian, not a BCP-47 tag). A code langcodes cannot name is refused, not passed through.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

__all__ = [
    "LANGUAGE_NAMES",
    "MSD_COLUMNS",
    "TEACHER_CACHE_COLUMNS",
    "TEACHER_CACHE_FINGERPRINT",
    "TEACHER_CACHE_IDS",
    "TEACHER_CACHE_KEY",
    "TEACHER_CACHE_LOGPROBS",
    "TEACHER_COMPLETION_COLUMN",
    "check_language_codes",
    "language_name",
    "split_list",
    "unknown_language_codes",
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


@lru_cache(maxsize=1024)
def _langcodes_name(code: str) -> str | None:
    import langcodes  # light, but only needed once a language is named

    try:
        # normalize=False keeps what the user wrote: "tl" is Tagalog (normalised, langcodes would say Filipino).
        tag = langcodes.Language.get(code, normalize=False)
    except (ValueError, LookupError):
        return None
    if not tag.is_valid() or tag.language is None:
        return None
    name = tag.display_name()
    return None if "Unknown language" in name else name


def language_name(code: str) -> str:
    """The English name of a language code: the corpora's codes (`LANGUAGE_NAMES`), else any BCP-47 tag langcodes
    can name (`"tl"` -> "Tagalog", `"pt-BR"` -> "Portuguese (Brazil)").

    Raises:
        ValueError: the code names no language (a typo, a made-up or private-use code), so no teacher is ever told
            "Reply in xx".
    """
    if code in LANGUAGE_NAMES:
        return LANGUAGE_NAMES[code]
    name = _langcodes_name(code) if isinstance(code, str) and code.strip() else None
    if name is None:
        raise ValueError(
            f"language {code!r} is not a language code msd_trl can name: use a BCP-47 code such as 'tl' (Tagalog), "
            "'hr' (Croatian) or 'pt-BR'."
        )
    return name


def unknown_language_codes(codes: Iterable[str]) -> list[str]:
    """The codes of `codes` that `language_name` refuses, in order, once each."""
    unknown = []
    for code in dict.fromkeys(codes):
        try:
            language_name(code)
        except ValueError:
            unknown.append(code)
    return unknown


def check_language_codes(codes: Iterable[str], where: str) -> None:
    """Refuse, naming every one, the codes of `codes` that name no language; `where` says where they came from."""
    unknown = unknown_language_codes(codes)
    if unknown:
        raise ValueError(
            f"{where}: language code(s) {unknown} name no language msd_trl knows; use BCP-47 codes such as 'tl' "
            "(Tagalog), 'hr' (Croatian) or 'pt-BR'."
        )


def split_list(value: str) -> list[str]:
    """A comma-separated flag value as a list: `"jv, sw,,bn"` -> `["jv", "sw", "bn"]`."""
    return [v.strip() for v in value.split(",") if v.strip()]
