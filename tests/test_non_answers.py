"""msd_trl.evaluation.non_answers: loops at any answer cap, echoes, one text for many questions, and the non-answer
flag evaluation reports, on real outputs of the embedded model (tests/data/non_answers.jsonl) and by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from msd_trl.answer_language import is_degenerate
from msd_trl.evaluation.non_answers import is_echo, is_loop, non_answer_flags, shared_answers

REAL = [json.loads(line) for line in (Path(__file__).parent / "data" / "non_answers.jsonl").read_text().splitlines()]
# The loop issue 22 quotes, from a Javanese MultiQ question after 80 steps of MSD (the embedded 135M model).
LOOP = 'The answer to this question is "The answer to this question is "The answer to this question is "The answer'


@pytest.mark.parametrize("cap", [80, 100, 120, 200])
def test_the_quoted_loop_is_caught_at_any_cap_where_it_repeats(cap):
    text = (LOOP * 3)[:cap]
    assert is_loop(text)
    if cap == 80:
        assert not is_degenerate(text)  # the zlib test alone missed it: 0.51 of its size at 80 characters


@pytest.mark.parametrize("cap", [40, 60])
def test_a_loop_cut_before_it_repeats_is_caught_as_one_answer_to_many_questions(cap):
    text = LOOP[:cap]
    assert not is_loop(text)  # one copy of the unit: nothing repeats inside the answer
    flags = non_answer_flags([text] * 3 + ["Paris."], ["Q1?", "Q2?", "Q3?", "Q4?"], [False] * 4)
    assert [f["shared_answer"] for f in flags] == [True, True, True, False]
    assert [f["non_answer"] for f in flags] == [True, True, True, False]


def test_real_outputs_are_labelled_as_a_reader_labels_them():
    """Each line: a real answer of the embedded model (base, its teacher, or an MSD checkpoint) with the label a
    reader gave it: `loop`, `echo`, or `neither` (answers, including ones that reuse the question's words)."""
    assert {r["label"] for r in REAL} == {"loop", "echo", "neither"}
    for record in REAL:
        loop, echo = is_loop(record["response"]), is_echo(record["response"], record["prompt"])
        if record["label"] == "loop":
            assert loop, record
        elif record["label"] == "echo":
            assert echo and not loop, record
        else:
            assert not loop and not echo, record


def test_loops_by_hand():
    assert is_loop("Mwaka, Mwaka, Mwaka, Mwaka, Mwaka")
    assert is_loop("1. Eat well. 2. Eat well. 3. Eat well. 4. Eat")  # digits folded: a numbered list of one line
    assert not is_loop("The capital of France is Paris, a large city on the Seine with many museums.")
    assert not is_loop("hahaha")  # too short to call
    assert not is_loop("")


def test_echoes_by_hand():
    question = "Apa ibukota Prancis?"
    assert is_echo("Apa ibukota Prancis? Apa ibukota Prancis?", question)  # said twice
    assert is_echo("apa ibukota prancis?", question)
    assert not is_echo("Apa ibukota Prancis? Paris iku ibukota.", question)  # an echo, then an answer
    assert not is_echo("The chemical formula for water is H2O.", "What is the chemical formula for water?")
    assert not is_echo("Ibukota Prancis yaiku Paris, kutha gedhe.", question)
    assert not is_echo("", question) and not is_echo("12345", question)


def test_shared_answers_count_questions_not_repeats():
    canned = "The most common and most effective way to improve is practice."
    responses = [canned, canned, canned + " More.", "Paris.", "Water boils at 100 C at sea level, less higher up."]
    assert shared_answers(responses) == [True, True, True, False, False]
    # The same question answered three times is one question, not three.
    assert shared_answers(responses[:3], ["q1", "q1", "q1"]) == [False, False, False]
    with pytest.raises(ValueError, match="3 responses but 2 questions"):
        shared_answers(responses[:3], ["q1", "q2"])


def test_a_shared_refusal_is_a_refusal_not_a_degenerate_answer():
    refusal = "I'm sorry, but I can't help with that request at all."
    flags = non_answer_flags([refusal] * 3, ["A?", "B?", "C?"], [True] * 3)
    assert all(f["shared_answer"] and not f["degenerate"] and f["non_answer"] for f in flags)
