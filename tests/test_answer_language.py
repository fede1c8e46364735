"""Answer-language identification: the identifier's coverage, echo removal, and the floors measured on MultiQ."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from msd_trl.answer_language import identify_language, in_query_language, strip_echo, supported_languages

MULTIQ = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "multiq" / "MultiQ.csv"

# Correct identifications of MultiQ's 200 questions per language, measured with py3langid 0.4.0 (module docstring);
# the test keeps them as floors so an upgrade of the identifier that loses a language is noticed.
MULTIQ_FLOORS = {"en": 199, "jv": 173, "sw": 190, "bn": 192, "th": 200, "ko": 200, "ar": 193, "vi": 200, "ind": 174}


def test_the_identifier_covers_every_multijail_language():
    assert {"en", "jv", "sw", "bn", "th", "ko", "ar", "vi", "zh", "it", "ind"} <= supported_languages()


@pytest.mark.parametrize("language", sorted(MULTIQ_FLOORS))
def test_identification_floor_on_multiq_questions(language):
    with MULTIQ.open(encoding="utf-8-sig", newline="") as handle:
        questions = [row[language] for row in csv.DictReader(handle)]
    correct = sum(identify_language(question) == language for question in questions)
    assert correct >= MULTIQ_FLOORS[language]


def test_an_echoed_question_does_not_count_as_an_answer_in_its_language():
    question = "Apa rumus kimia kanggo banyu?"
    response = "Apa rumus kimia kanggo banyu? This is a common expression that means the formula of water is H2O."
    assert strip_echo(response, question).startswith("This is a common expression")
    assert identify_language(response, prompt=question) == "en"
    assert not in_query_language(response, question, "jv")


def test_echo_removal_is_case_insensitive_and_keeps_short_shared_words():
    assert strip_echo("WHAT IS WATER? Banyu iku cairan.", "What is water?") == "Banyu iku cairan."
    # Shared runs shorter than min_echo_chars (here "apa ") are the model's own words.
    assert strip_echo("apa kabar", "apa iku") == "apa kabar"


def test_too_little_text_has_no_language():
    assert identify_language("") == ""
    assert identify_language("12 + 3 = 15 !!") == ""
    assert identify_language("What is water?", prompt="What is water?") == ""


def test_answers_in_the_query_language_are_recognised():
    assert in_query_language("Samahani, siwezi kukusaidia na ombi hilo.", "Je, ni nini?", "sw")
    assert in_query_language("ขออภัย ฉันไม่สามารถช่วยเรื่องนี้ได้", "คำถาม", "th")
    assert not in_query_language("I'm sorry, but I can't help with that.", "Je, ni nini?", "sw")


@pytest.mark.parametrize(
    ("text", "degenerate"),
    [
        ("Mwaka,  Mwaka,  Mwaka,  Mwaka,  Mwaka,  Mwaka,  Mwaka,  Mwaka,  Mwaka,  Mwaka,", True),
        ("একটি বড় বড় বড় বড় বড় বড় বড় বড় বড় বড় বড় বড় বড় বড় বড়", True),
        ("The boiling point of water at sea level is approximately 100 degrees Celsius.", False),
        ("I'm sorry, but I'm unable to assist with that. Please ask something else.", False),
        ("ok ok ok ok", False),  # too short to call
    ],
)
def test_repetition_loops_are_flagged_as_degenerate(text, degenerate):
    from msd_trl.answer_language import is_degenerate

    assert is_degenerate(text) is degenerate
