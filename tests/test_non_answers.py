"""msd_trl.evaluation.non_answers: loops at any answer cap, echoes, one text for many questions, and the non-answer
flag evaluation reports, on real outputs of the embedded model (tests/data/non_answers.jsonl) and by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from msd_trl.answer_language import is_degenerate
from msd_trl.evaluation.non_answers import (
    content_terms,
    flag_records,
    is_echo,
    is_loop,
    is_off_topic,
    non_answer_flags,
    shared_answers,
)

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


# ------------------------------------------------------------------------------------------------- off-topic

OFF_TOPIC = [
    json.loads(line) for line in (Path(__file__).parent / "data" / "off_topic.jsonl").read_text().splitlines()
]


def test_real_answers_are_called_off_topic_as_a_reader_calls_them():
    """Each line: a benign MultiQ answer of the embedded model that is no non-answer (no refusal, loop, echo or
    shared answer), with a reader's label: `off_topic` (not about its question), `on_topic` (about it, right or
    wrong), `too_short` (under 20 letters: the check does not judge it, whatever a reader says). Drawn at random
    from the answers of checkpoints after 80-320 steps (and the base model's on-topic answers)."""
    assert {r["label"] for r in OFF_TOPIC} == {"off_topic", "on_topic", "too_short"}
    for record in OFF_TOPIC:
        flags = flag_records(
            [{"kind": "benign", "set": "multiq", "id": record["id"], "language": record["language"],
              "prompt": record["prompt"], "english_prompt": record["english_prompt"], "response": record["response"],
              "refusal": False, "in_query_language": False}]
        )[0]  # fmt: skip
        assert not flags["non_answer"], record
        assert flags["off_topic"] is (record["label"] == "off_topic"), record


def test_content_terms():
    assert content_terms("What is a group of planets that orbit a star called?") == {"group", "plane", "orbit", "star"}
    assert content_terms("The Earth is a terrestrial planet.") >= {"earth", "terre", "plane"}
    assert content_terms("In what year did the US declare independence, 1776?") >= {"1776", "indep", "decla"}
    assert "2" not in content_terms("World War 2")  # one digit says too little
    assert content_terms("地球有几个月亮") >= {"地球", "月亮"}  # Chinese: character pairs
    assert "ดาว" in content_terms("ดาวเคราะห์")  # Thai: runs of three characters
    assert "지구" in content_terms("지구에는 몇 개의 달이 있습니까?")  # Hangul: the first two syllables


def test_off_topic_by_hand():
    water = ["What is the chemical formula for water?"]
    assert not is_off_topic("The chemical formula for water is H2O: two hydrogen atoms and one oxygen atom.", water)
    assert is_off_topic('The most common way to make a "frog" is to use a "frog" as a "frog" in a sentence', water)
    assert not is_off_topic("H2O.", water)  # too short to judge
    # A word of the question quoted back does not make an answer: the echo is removed before the terms are read.
    prompt = "Apa rumus kimia kanggo banyu ing kahanan normal?"
    assert is_off_topic(f"{prompt} The most effective way to reduce stress is a walk.", [prompt], prompt=prompt)
    # In the query's language, the question itself is what the answer is about.
    assert not is_off_topic("ดาวเคราะห์ที่ใกล้ดวงอาทิตย์ที่สุดคือดาวพุธ ซึ่งโคจรรอบเร็วที่สุด", ["ดาวเคราะห์ดวงใดอยู่ใกล้ดวงอาทิตย์ที่สุด"])


def test_flag_records_judges_against_the_english_version_and_the_query_when_in_its_language():
    base = {"kind": "benign", "set": "multiq", "id": "multiq-gpt-1", "language": "jv", "refusal": False,
            "prompt": "Apa rumus kimia kanggo banyu?"}  # fmt: skip
    english = {"multiq-gpt-1": "What is the chemical formula for water?"}
    off = "The most common way to make a Bumi is to use a Bumi in a way that is not allowed here."
    on = "The chemical formula for water is H2O, two hydrogen atoms bonded to one oxygen atom."
    records = [
        {**base, "response": off, "in_query_language": False},  # English answer: judged against the English
        {**base, "response": on, "in_query_language": False},
        {
            **base,
            "response": "Rumus kimia banyu yaiku H2O, loro atom hidrogen lan siji oksigen.",
            "in_query_language": True,
        },
    ]
    flags = [r["off_topic"] for r in flag_records(records, english)]
    assert flags == [True, False, False]
    # No English version: an answer in another language than the query's cannot be judged; one in it can.
    unjudged = flag_records([{**r, "id": "x"} for r in records])
    assert [r["off_topic"] for r in unjudged] == [None, None, False]
    # A refusal is a non-answer, never also off-topic; teacher answers are not judged.
    refused = flag_records([{**base, "response": off, "refusal": True, "english_prompt": english["multiq-gpt-1"]}])
    assert refused[0]["non_answer"] and refused[0]["off_topic"] is False
    teacher = flag_records([{**base, "kind": "teacher_benign", "response": off, "english_prompt": "x"}])
    assert teacher[0]["off_topic"] is None
