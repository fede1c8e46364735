"""Which language is an answer written in? Offline language identification that an echoed question cannot fool.

Design. MSD should teach safety *in the user's language*; a student that answers a Javanese question in English
has lost utility even when it is safe. Measuring that needs two things:

* an offline identifier that knows the low-resource languages: `py3langid` (pinned; langid.py's model, shipped in
  the wheel, 97 languages incl. jv, sw, bn, th, ko, ar, vi). On MultiQ's own questions (200 per language) it
  names the right language for en 199, jv 173, sw 190, bn 192, th 200, ko 200, ar 193, vi 200, zh 176, de 200,
  Indonesian 174 (tests/test_answer_language.py keeps these as floors): Javanese is confused with Indonesian and
  Malay about one time in eight, so jv fidelity is a lower bound. Telugu and the other scripts it covers follow
  the script; languages outside its 97 (e.g. some MultiQ codes map to none) are reported as unidentifiable.
* echo removal: small models often repeat the question in its language and then continue in English. Every run of
  at least `min_echo_chars` characters shared with the prompt is cut out of the answer before identification, so
  only what the model wrote itself counts.

An answer with fewer than `min_chars` letters left is "" (no language): it counts as not in the query's language.

A fidelity share alone rewards a model that loops in the right script ("Mwaka, Mwaka, Mwaka, ..."), which is what
SmolLM2-135M does when told to reply in Swahili or Bengali. :func:`is_degenerate` flags such loops (the answer
compresses to under 45 % of its UTF-8 size with zlib; ordinary answers of 80-120 characters measured 0.5-1.0,
loops 0.1-0.46), and evaluation reports the degenerate share beside fidelity.
"""

from __future__ import annotations

import difflib
import unicodedata
import zlib
from functools import lru_cache

__all__ = ["LANGID_CODES", "identify_language", "in_query_language", "is_degenerate", "strip_echo"]

# Our language codes -> the identifier's, where they differ (MultiQ writes Indonesian as "ind").
LANGID_CODES: dict[str, str] = {"ind": "id"}


@lru_cache(maxsize=1)
def _identifier():
    try:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier
    except ImportError as err:  # pragma: no cover - a core dependency; only a broken install lands here
        raise ImportError("answer-language identification needs py3langid: pip install 'py3langid==0.4.0'") from err
    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def supported_languages() -> set[str]:
    """Language codes (ours) the identifier can name."""
    codes = set(_identifier().nb_classes)
    return codes | {ours for ours, theirs in LANGID_CODES.items() if theirs in codes}


def _letters(text: str) -> int:
    return sum(1 for char in text if unicodedata.category(char).startswith("L"))


def strip_echo(response: str, prompt: str, *, min_echo_chars: int = 8) -> str:
    """`response` without every run of >= `min_echo_chars` characters it shares with `prompt` (case-folded)."""
    if not response or not prompt:
        return response
    folded_response, folded_prompt = response.casefold(), prompt.casefold()
    if len(folded_response) != len(response):  # casefold changed lengths (e.g. German ß): match on the original
        folded_response, folded_prompt = response, prompt
    matcher = difflib.SequenceMatcher(None, folded_response, folded_prompt, autojunk=False)
    keep = [True] * len(response)
    for block in matcher.get_matching_blocks():
        if block.size >= min_echo_chars:
            for index in range(block.a, block.a + block.size):
                keep[index] = False
    return "".join(char for char, kept in zip(response, keep) if kept).strip()


def identify_language(text: str, *, prompt: str | None = None, min_chars: int = 3) -> str:
    """The language code of `text` (our codes, e.g. "ind" for Indonesian), after removing an echo of `prompt`;
    "" when fewer than `min_chars` letters are left."""
    if prompt:
        text = strip_echo(text, prompt)
    if _letters(text) < min_chars:
        return ""
    code = _identifier().classify(text)[0]
    return {theirs: ours for ours, theirs in LANGID_CODES.items()}.get(code, code)


def in_query_language(response: str, prompt: str, language: str) -> bool:
    """Whether `response`, echo removed, is written in `language` (our code)."""
    return identify_language(response, prompt=prompt) == language


def is_degenerate(text: str, *, min_chars: int = 40, max_ratio: float = 0.45) -> bool:
    """Whether `text` is a repetition loop: at least `min_chars` characters that zlib compresses to under
    `max_ratio` of their UTF-8 size. Short answers are never flagged."""
    text = text.strip()
    if len(text) < min_chars:
        return False
    data = text.encode("utf-8")
    return len(zlib.compress(data, 9)) / len(data) < max_ratio
