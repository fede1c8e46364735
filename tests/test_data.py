"""Tests for msd_trl.data: loaders on the real offline corpora, splits, mixing, length filtering.

The real data lives next to the repository (../shared/data) and is always present in CI. Hub loading is
tested with a fake `load_dataset` (no network). Length filtering uses a whitespace word-level tokenizer
built here, so every expected token count is a word count.
"""

import csv
import logging
import math
from collections import Counter
from pathlib import Path

import pytest
from datasets import Dataset
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import PreTrainedTokenizerFast

import msd_trl.data as data
from msd_trl.corpora import build_safety_mix
from msd_trl.data import (
    LANGUAGE_NAMES,
    MGSM_LANGUAGES,
    MSD_COLUMNS,
    MULTIJAIL_LANGUAGES,
    build_msd_rows,
    filter_by_length,
    find_shared_data_dir,
    load_mgsm,
    load_multijail,
    mix_datasets,
    split_by_id,
)

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
MULTIJAIL_CSV = DATA_DIR / "multijail" / "MultiJail.csv"
MGSM_DIR = DATA_DIR / "mgsm"


@pytest.fixture(scope="module")
def multijail():
    return load_multijail(MULTIJAIL_CSV)


@pytest.fixture(scope="module")
def mgsm():
    return load_mgsm(MGSM_DIR)


def wide_corpus(n_queries=3, languages=("jv", "bn")):
    """A tiny wide corpus: ids 0..n-1, English 'q{i}', target '<lang> q{i}'."""
    columns = {"id": list(range(n_queries)), "en": [f"q{i}" for i in range(n_queries)]}
    for code in languages:
        columns[code] = [f"{code} q{i}" for i in range(n_queries)]
    return Dataset.from_dict(columns)


# ---------------------------------------------------------------------------------------------------------------------
# Constants and data location
# ---------------------------------------------------------------------------------------------------------------------


def test_constants():
    for code in ("en", *MULTIJAIL_LANGUAGES, *MGSM_LANGUAGES):
        assert code in LANGUAGE_NAMES
    assert LANGUAGE_NAMES["jv"] == "Javanese"
    assert MULTIJAIL_LANGUAGES == ("zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv")
    assert MGSM_LANGUAGES == ("bn", "sw", "th", "te", "zh")
    assert set(data.__all__) >= {"load_multijail", "load_mgsm", "split_by_id", "mix_datasets", "filter_by_length"}


def test_find_shared_data_dir_from_repo(monkeypatch):
    monkeypatch.delenv("MSD_TRL_DATA_DIR", raising=False)
    assert find_shared_data_dir(Path(__file__).parent).resolve() == DATA_DIR.resolve()


def test_find_shared_data_dir_env_and_layouts(monkeypatch, tmp_path):
    monkeypatch.delenv("MSD_TRL_DATA_DIR", raising=False)
    # Hide the real data from the package-directory walk.
    monkeypatch.setattr(data.rows, "__file__", str(tmp_path / "pkg" / "data" / "rows.py"))
    # The machine may hold a data folder above the temporary directory (CI has /tmp/shared/data): whatever is
    # found from tmp_path before we create anything must lie outside it, and stays the answer until we do.
    outside = find_shared_data_dir(tmp_path)
    assert outside is None or tmp_path.resolve() not in outside.parents
    (tmp_path / "shared" / "data").mkdir(parents=True)
    assert find_shared_data_dir(tmp_path) == outside  # a folder without corpora does not count
    (tmp_path / "shared" / "data" / "mgsm").mkdir()
    (tmp_path / "repo" / "tests").mkdir(parents=True)
    assert find_shared_data_dir(tmp_path / "repo" / "tests") == (tmp_path / "shared" / "data").resolve()

    monkeypatch.setenv("MSD_TRL_DATA_DIR", str(DATA_DIR))
    assert find_shared_data_dir(tmp_path) == DATA_DIR.resolve()
    monkeypatch.setenv("MSD_TRL_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="MSD_TRL_DATA_DIR"):
        find_shared_data_dir()


# ---------------------------------------------------------------------------------------------------------------------
# MultiJail
# ---------------------------------------------------------------------------------------------------------------------


def test_load_multijail_real(multijail):
    assert multijail.column_names == [*MSD_COLUMNS, "tags"]
    assert len(multijail) == 315 * 9
    for code in MULTIJAIL_LANGUAGES:
        assert multijail["language"].count(code) == 315
    assert len(set(multijail["id"])) == 315
    assert set(multijail["source"]) == {"multijail"}
    assert set(multijail["harmful"]) == {True}
    # Language-major order: the first 315 rows are Chinese, ids in file order.
    assert multijail["language"][:315] == ["zh"] * 315
    assert multijail["id"][:3] == ["multijail-0", "multijail-1", "multijail-2"]

    with MULTIJAIL_CSV.open(encoding="utf-8-sig", newline="") as handle:
        first = next(csv.DictReader(handle))
    row = multijail[0]
    assert row["prompt"] == first["zh"]
    assert row["teacher_prompt"] == first["en"]
    assert row["tags"] == ["Sexual exploitation & human trafficking"]
    javanese = multijail[8 * 315]
    assert (javanese["language"], javanese["id"], javanese["prompt"]) == ("jv", "multijail-0", first["jv"])


def test_load_multijail_default_folder_and_languages(multijail, monkeypatch):
    # source=None finds ../shared/data from the package directory; a folder and a single-language string work.
    monkeypatch.delenv("MSD_TRL_DATA_DIR", raising=False)
    two = load_multijail(languages=["jv", "bn"])
    assert two["language"] == ["jv"] * 315 + ["bn"] * 315
    assert two["prompt"][315:] == multijail["prompt"][6 * 315 : 7 * 315]
    javanese = load_multijail(DATA_DIR / "multijail", "jv")
    assert javanese["prompt"] == two["prompt"][:315]


def test_load_multijail_from_dataset_and_fake_hub(monkeypatch):
    wide = Dataset.from_dict(
        {"id": [7, 8], "tags": ["['a', 'b']", "c"], "en": ["hello", "bye"], "jv": ["halo", "dadah"]}
    )
    rows = load_multijail(wide, ["jv"])
    assert rows["id"] == ["multijail-7", "multijail-8"]
    assert rows["tags"] == [["a", "b"], ["c"]]

    calls = []

    def fake_load_dataset(name, *args, **kwargs):
        calls.append((name, args, kwargs))
        return wide

    monkeypatch.setattr(data.loaders, "load_dataset", fake_load_dataset)
    rows = load_multijail("DAMO-NLP-SG/MultiJail", "jv", conversational=True)
    assert calls == [("DAMO-NLP-SG/MultiJail", (), {"split": "train"})]
    assert rows["prompt"] == [[{"role": "user", "content": "halo"}], [{"role": "user", "content": "dadah"}]]


def test_load_multijail_missing_file(tmp_path):
    with pytest.raises(ValueError, match="MultiJail CSV not found"):
        load_multijail(tmp_path)


def test_conversational_format():
    rows = load_multijail(MULTIJAIL_CSV, ["sw"], conversational=True)
    row = rows[0]
    assert row["prompt"] == [{"role": "user", "content": row["prompt"][0]["content"]}]
    assert row["teacher_prompt"][0]["role"] == "user"
    assert row["teacher_prompt"][0]["content"].startswith("How much money should I sell")
    plain = load_multijail(MULTIJAIL_CSV, ["sw"])
    assert [m[0]["content"] for m in rows["prompt"]] == plain["prompt"]


# ---------------------------------------------------------------------------------------------------------------------
# MGSM
# ---------------------------------------------------------------------------------------------------------------------


def test_load_mgsm_real(mgsm):
    assert mgsm.column_names == [*MSD_COLUMNS, "answer"]
    assert len(mgsm) == 250 * len(MGSM_LANGUAGES)
    for code in MGSM_LANGUAGES:
        assert mgsm["language"].count(code) == 250
    assert set(mgsm["source"]) == {"mgsm"} and set(mgsm["harmful"]) == {False}
    assert mgsm["id"][:2] == ["mgsm-0", "mgsm-1"] and mgsm["id"][249] == "mgsm-249"
    first = mgsm[0]
    assert first["teacher_prompt"].startswith("Janet’s ducks lay 16 eggs per day.")
    assert first["answer"] == "18"
    # Thousands separators are removed ("2,125" in the TSV).
    assert "2125" in mgsm["answer"] and not any("," in a for a in mgsm["answer"])


def test_load_mgsm_every_file_has_250_rows():
    for code in ("en", *MGSM_LANGUAGES):
        rows = load_mgsm(MGSM_DIR, [code])
        assert len(rows) == 250, code
        assert all(p.strip() for p in rows["prompt"])


def test_load_mgsm_quotes_and_bad_lines(tmp_path):
    # A stray double quote must not swallow the tab and the next lines (QUOTE_NONE).
    (tmp_path / "mgsm_en.tsv").write_text('He said "six eggs\t6\nTwo "quoted" words\t2\n', encoding="utf-8")
    (tmp_path / "mgsm_sw.tsv").write_text('Alisema "mayai sita\t6\nManeno "mawili"\t2\n', encoding="utf-8")
    rows = load_mgsm(tmp_path, ["sw"])
    assert rows["prompt"] == ['Alisema "mayai sita', 'Maneno "mawili"']
    assert rows["teacher_prompt"] == ['He said "six eggs', 'Two "quoted" words']
    assert rows["answer"] == ["6", "2"]

    with pytest.raises(ValueError, match="unknown language code 'xx'"):
        load_mgsm(tmp_path, ["xx"])
    with pytest.raises(ValueError, match="no MGSM file for language 'te'"):
        load_mgsm(tmp_path, ["te"])
    (tmp_path / "mgsm_th.tsv").write_text("one\ttwo\tthree\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 1: expected 2 tab-separated fields"):
        load_mgsm(tmp_path, ["th"])


def test_load_mgsm_fake_hub(monkeypatch):
    tables = {
        "en": Dataset.from_dict({"question": ["one plus one", "two times three"], "answer_number": [2, 6.0]}),
        "sw": Dataset.from_dict({"question": ["moja jumlisha moja", "mbili mara tatu"], "answer_number": [2, 6.0]}),
    }
    calls = []

    def fake_load_dataset(name, config, split):
        calls.append((name, config, split))
        return tables[config]

    monkeypatch.setattr(data.loaders, "load_dataset", fake_load_dataset)
    rows = load_mgsm("juletxara/mgsm", "sw")
    assert calls == [("juletxara/mgsm", "en", "test"), ("juletxara/mgsm", "sw", "test")]
    assert rows["id"] == ["mgsm-0", "mgsm-1"]
    assert rows["answer"] == ["2", "6"]
    assert rows["prompt"] == ["moja jumlisha moja", "mbili mara tatu"]


# ---------------------------------------------------------------------------------------------------------------------
# build_msd_rows errors
# ---------------------------------------------------------------------------------------------------------------------


def test_build_msd_rows_basic():
    rows = build_msd_rows(wide_corpus(2), ["bn", "jv"], source="toy", harmful=True)
    assert rows.column_names == list(MSD_COLUMNS)
    assert rows["id"] == ["0", "1", "0", "1"]
    assert rows["language"] == ["bn", "bn", "jv", "jv"]
    assert rows["prompt"] == ["bn q0", "bn q1", "jv q0", "jv q1"]
    assert rows["teacher_prompt"] == ["q0", "q1", "q0", "q1"]


def test_error_missing_language_column():
    with pytest.raises(ValueError, match=r"no column for language 'te' \(Telugu\).*\['en', 'jv', 'bn'\]"):
        build_msd_rows(wide_corpus(), ["te"], source="toy", harmful=True)
    with pytest.raises(ValueError, match="`english_column`='english'"):
        build_msd_rows(wide_corpus(), ["jv"], english_column="english", source="toy", harmful=True)
    with pytest.raises(ValueError, match="`extra_columns`: 'answer'"):
        build_msd_rows(wide_corpus(), ["jv"], source="toy", harmful=True, extra_columns=["answer"])


def test_error_unknown_language_code():
    with pytest.raises(ValueError, match="unknown language code 'xx'"):
        build_msd_rows(wide_corpus(), ["jv", "xx"], source="toy", harmful=True)
    with pytest.raises(ValueError, match="unknown language code 'klingon'"):
        load_multijail(MULTIJAIL_CSV, ["klingon"])
    with pytest.raises(ValueError, match="repeats language codes"):
        load_multijail(MULTIJAIL_CSV, ["jv", "jv"])
    with pytest.raises(ValueError, match="`languages` is empty"):
        load_multijail(MULTIJAIL_CSV, [])


def test_error_empty_prompt_and_drop(caplog):
    corpus = Dataset.from_dict({"id": ["a", "b", "c"], "en": ["x", "y", "z"], "jv": ["xj", "   ", "zj"]})
    with pytest.raises(ValueError, match=r"empty prompt for id 'b' in language column\(s\) \['jv'\]"):
        build_msd_rows(corpus, ["jv"], source="toy", harmful=True)
    with caplog.at_level(logging.WARNING, logger="msd_trl.data"):
        rows = build_msd_rows(corpus, ["jv"], source="toy", harmful=True, on_empty="drop")
    assert rows["id"] == ["a", "c"]
    assert "dropped 1 empty prompt(s) in language 'jv'" in caplog.text and "['b']" in caplog.text
    with pytest.raises(ValueError, match="`on_empty`"):
        build_msd_rows(corpus, ["jv"], source="toy", harmful=True, on_empty="skip")


def test_error_empty_english_and_duplicate_ids():
    corpus = Dataset.from_dict({"id": ["a", "b"], "en": ["x", ""], "jv": ["xj", "yj"]})
    with pytest.raises(ValueError, match=r"id 'b' in language column\(s\) \['en'\]"):
        build_msd_rows(corpus, ["jv"], source="toy", harmful=True)
    corpus = Dataset.from_dict({"id": [1, 1], "en": ["x", "y"], "jv": ["xj", "yj"]})
    with pytest.raises(ValueError, match=r"repeated ids: \['1'\]"):
        build_msd_rows(corpus, ["jv"], source="toy", harmful=True)


# ---------------------------------------------------------------------------------------------------------------------
# split_by_id
# ---------------------------------------------------------------------------------------------------------------------


def test_split_real_multijail_no_leak(multijail):
    splits = split_by_id(multijail, test_size=0.2, seed=0)
    train_ids, test_ids = set(splits["train"]["id"]), set(splits["test"]["id"])
    assert not train_ids & test_ids
    assert len(test_ids) == math.ceil(0.2 * 315) == 63 and len(train_ids) == 252
    assert len(splits["test"]) == 63 * 9 and len(splits["train"]) == 252 * 9


def test_split_deterministic_and_language_independent(multijail):
    first = split_by_id(multijail, test_size=50, seed=3)
    again = split_by_id(multijail, test_size=50, seed=3)
    assert first["test"]["id"] == again["test"]["id"] and first["train"]["id"] == again["train"]["id"]
    other = split_by_id(multijail, test_size=50, seed=4)
    assert set(other["test"]["id"]) != set(first["test"]["id"])
    javanese = split_by_id(multijail.filter(lambda r: r["language"] == "jv"), test_size=50, seed=3)
    assert set(javanese["test"]["id"]) == set(first["test"]["id"])


@pytest.mark.parametrize("test_size", [0, 0.0, 1.0, 1.5, -0.1, -1, 4, 10, True, "0.2", None])
def test_split_bad_test_size(test_size):
    with pytest.raises(ValueError, match="test_size"):
        split_by_id(build_msd_rows(wide_corpus(4), ["jv"], source="toy", harmful=True), test_size=test_size)


def test_split_bad_inputs():
    one = build_msd_rows(wide_corpus(1), ["jv", "bn"], source="toy", harmful=True)
    with pytest.raises(ValueError, match="at least 2 unique ids"):
        split_by_id(one)
    with pytest.raises(ValueError, match="`id_column`='query'"):
        split_by_id(one, id_column="query")


@settings(max_examples=40, deadline=None)
@given(
    n_queries=st.integers(min_value=2, max_value=25),
    n_languages=st.integers(min_value=1, max_value=3),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    fraction=st.floats(min_value=0.01, max_value=0.99),
    absolute=st.integers(min_value=1, max_value=24),
    use_fraction=st.booleans(),
)
def test_split_property_no_leak(n_queries, n_languages, seed, fraction, absolute, use_fraction):
    languages = ("jv", "bn", "sw")[:n_languages]
    rows = build_msd_rows(wide_corpus(n_queries, languages), languages, source="toy", harmful=True)
    test_size = fraction if use_fraction else min(absolute, n_queries - 1)
    expected_test = math.ceil(fraction * n_queries) if use_fraction else test_size
    if expected_test > n_queries - 1:
        with pytest.raises(ValueError, match="test_size"):
            split_by_id(rows, test_size=test_size, seed=seed)
        return
    splits = split_by_id(rows, test_size=test_size, seed=seed)
    train_ids, test_ids = set(splits["train"]["id"]), set(splits["test"]["id"])
    assert not train_ids & test_ids
    assert train_ids | test_ids == {str(i) for i in range(n_queries)}
    assert len(test_ids) == expected_test
    assert len(splits["train"]) + len(splits["test"]) == len(rows)
    # Every id keeps all its languages on its side.
    assert len(splits["test"]) == expected_test * n_languages
    assert split_by_id(rows, test_size=test_size, seed=seed)["test"]["id"] == splits["test"]["id"]


# ---------------------------------------------------------------------------------------------------------------------
# mix_datasets
# ---------------------------------------------------------------------------------------------------------------------


def toy_harmful(n=10):
    rows = build_msd_rows(wide_corpus(n, ["jv"]), ["jv"], source="harm", harmful=True)
    return rows.add_column("tags", [["t"]] * len(rows))


def toy_benign(n=4):
    corpus = wide_corpus(n, ["sw"]).add_column("answer", [str(i) for i in range(n)])
    return build_msd_rows(corpus, ["sw"], source="math", harmful=False, extra_columns=["answer"])


def test_mix_default_num_rows_and_provenance(caplog):
    harmful, benign = toy_harmful(10), toy_benign(4)
    with caplog.at_level(logging.INFO, logger="msd_trl.data"):
        mixed = mix_datasets({"harm": harmful, "math": benign}, {"harm": 1, "math": 1}, seed=0)
    # 50/50 with 4 benign rows: at most 8 rows without repeating any.
    assert len(mixed) == 8
    assert mixed["source"].count("harm") == 4 and mixed["source"].count("math") == 4
    assert mixed.column_names == [*MSD_COLUMNS, "tags", "answer"]
    for row in mixed:
        if row["source"] == "harm":
            assert row["harmful"] is True and row["language"] == "jv" and row["answer"] is None
            assert row["prompt"] == f"jv q{row['id']}" and row["tags"] == ["t"]
        else:
            assert row["harmful"] is False and row["language"] == "sw" and row["answer"] == row["id"]
            assert row["tags"] is None
    assert len({(r["source"], r["id"]) for r in mixed}) == 8  # no row repeated
    assert "mix_datasets: 8 rows" in caplog.text


def test_mix_proportions_num_rows_and_determinism():
    harmful, benign = toy_harmful(10), toy_benign(4)
    mixed = mix_datasets({"harm": harmful, "math": benign}, {"harm": 3, "math": 1}, num_rows=12, seed=1)
    assert mixed["source"].count("harm") == 9 and mixed["source"].count("math") == 3
    again = mix_datasets({"harm": harmful, "math": benign}, {"harm": 3, "math": 1}, num_rows=12, seed=1)
    assert mixed["id"] == again["id"] and mixed["source"] == again["source"]
    other = mix_datasets({"harm": harmful, "math": benign}, {"harm": 3, "math": 1}, num_rows=12, seed=2)
    assert list(zip(other["source"], other["id"])) != list(zip(mixed["source"], mixed["id"]))
    # A zero weight leaves a corpus out.
    only = mix_datasets({"harm": harmful, "math": benign}, {"harm": 1, "math": 0})
    assert len(only) == 10 and set(only["source"]) == {"harm"}


def test_mix_keep_all(multijail, mgsm):
    mixed = mix_datasets({"multijail": multijail, "mgsm": mgsm}, seed=0)
    assert len(mixed) == 2835 + 1250
    assert mixed["source"].count("mgsm") == 1250
    assert mixed["source"] != ["multijail"] * 2835 + ["mgsm"] * 1250  # shuffled
    assert sorted(zip(mixed["source"], mixed["language"], mixed["id"])) == sorted(
        [
            *zip(multijail["source"], multijail["language"], multijail["id"]),
            *zip(mgsm["source"], mgsm["language"], mgsm["id"]),
        ]
    )
    assert len(mix_datasets({"multijail": multijail, "mgsm": mgsm}, num_rows=100)) == 100


def test_mix_errors():
    harmful, benign = toy_harmful(10), toy_benign(4)
    with pytest.raises(ValueError, match=r"needs 6 rows from 'math', which has only 4.*num_rows <= 8"):
        mix_datasets({"harm": harmful, "math": benign}, {"harm": 1, "math": 1}, num_rows=12)
    with pytest.raises(ValueError, match=r"unknown \['other'\], missing \['math'\]"):
        mix_datasets({"harm": harmful, "math": benign}, {"harm": 1, "other": 1})
    with pytest.raises(ValueError, match=r"`proportions\['harm'\]`"):
        mix_datasets({"harm": harmful, "math": benign}, {"harm": -1, "math": 1})
    with pytest.raises(ValueError, match="positive sum"):
        mix_datasets({"harm": harmful, "math": benign}, {"harm": 0, "math": 0})
    with pytest.raises(ValueError, match="`num_rows`"):
        mix_datasets({"harm": harmful}, num_rows=0)
    with pytest.raises(ValueError, match="`num_rows`=11 exceeds"):
        mix_datasets({"harm": harmful}, num_rows=11)
    with pytest.raises(ValueError, match="`datasets` is empty"):
        mix_datasets({})
    with pytest.raises(ValueError, match=r"lacks provenance column\(s\) \['source', 'language', 'harmful'\]"):
        mix_datasets({"bare": Dataset.from_dict({"id": ["1"]})})
    chat = build_msd_rows(wide_corpus(3, ["jv"]), ["jv"], source="c", harmful=True, conversational=True)
    with pytest.raises(ValueError, match="column 'prompt' has type .*conversational"):
        mix_datasets({"harm": harmful, "chat": chat})


# ---------------------------------------------------------------------------------------------------------------------
# filter_by_length
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def word_tokenizer():
    """One token per whitespace-separated word; chat template '<user> {content} <assistant>'."""
    vocab = {"[UNK]": 0, "[PAD]": 1, "<user>": 2, "<assistant>": 3}
    backend = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")
    tokenizer.chat_template = (
        "{% for m in messages %}<user> {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    return tokenizer


def length_corpus(conversational=False):
    # jv prompts of 1, 3, 5 words; bn of 2, 6, 2 words; English 1, 1, 4 words.
    corpus = Dataset.from_dict(
        {
            "id": ["a", "b", "c"],
            "en": ["one", "two", "three four five six"],
            "jv": ["w", "w w w", "w w w w w"],
            "bn": ["w w", "w w w w w w", "w w"],
        }
    )
    return build_msd_rows(corpus, ["jv", "bn"], source="toy", harmful=True, conversational=conversational)


def test_filter_by_length_plain(word_tokenizer, caplog):
    rows = length_corpus()
    with caplog.at_level(logging.WARNING, logger="msd_trl.data"):
        kept = filter_by_length(rows, word_tokenizer, max_prompt_tokens=3)
    # Dropped: jv/c (5 words), bn/b (6 words), bn/c (teacher has 4 words).
    assert list(zip(kept["language"], kept["id"])) == [("jv", "a"), ("jv", "b"), ("bn", "a")]
    assert "dropped 3 of 6 rows with more than 3 prompt tokens" in caplog.text
    assert "{'bn': 2, 'jv': 1}" in caplog.text
    assert "['c@jv', 'b@bn', 'c@bn']" in caplog.text
    assert "'prompt': 6" in caplog.text and "'teacher_prompt': 4" in caplog.text

    # Only the student prompt checked: the English 4-word query no longer matters.
    assert filter_by_length(rows, word_tokenizer, max_prompt_tokens=5, columns=["prompt", "missing"])["id"] == [
        "a",
        "b",
        "c",
        "a",
        "c",
    ]


def test_filter_by_length_conversational(word_tokenizer):
    # Template adds '<user>' and '<assistant>': 2 tokens on top of the words.
    rows = length_corpus(conversational=True)
    kept = filter_by_length(rows, word_tokenizer, max_prompt_tokens=5)
    assert list(zip(kept["language"], kept["id"])) == [("jv", "a"), ("jv", "b"), ("bn", "a")]
    assert len(filter_by_length(rows, word_tokenizer, max_prompt_tokens=8)) == 6


def test_filter_by_length_keeps_all_and_errors(word_tokenizer, caplog):
    rows = length_corpus()
    with caplog.at_level(logging.WARNING, logger="msd_trl.data"):
        assert len(filter_by_length(rows, word_tokenizer, max_prompt_tokens=6)) == 6
    assert "dropped" not in caplog.text
    for bad in (0, -1, 2.5, True, None):
        with pytest.raises(ValueError, match="`max_prompt_tokens`"):
            filter_by_length(rows, word_tokenizer, max_prompt_tokens=bad)
    with pytest.raises(ValueError, match="none of `columns`"):
        filter_by_length(rows, word_tokenizer, max_prompt_tokens=4, columns=["text"])


# ------------------------------------------------------------------------------------------------------- MultiQ


def test_load_multiq_builds_parallel_benign_rows():
    from msd_trl.data import load_multiq

    rows = load_multiq(DATA_DIR / "multiq", ["jv", "ind"])
    assert len(rows) == 400 and set(rows["language"]) == {"jv", "ind"}
    first = rows[0]
    assert first["id"] == "multiq-gpt-1" and first["source"] == "multiq" and first["harmful"] is False
    assert first["teacher_prompt"] == "What is the chemical formula for water?"
    assert first["prompt"] == "Apa rumus kimia kanggo banyu?" and first["tags"] == ["gpt-generated", "chemistry"]


def test_split_by_id_parity_is_fixed_and_disjoint():
    from msd_trl.data import load_multiq, split_by_id_parity

    split = split_by_id_parity(load_multiq(DATA_DIR / "multiq", ["sw", "th"]))
    train_ids, test_ids = set(split["train"]["id"]), set(split["test"]["id"])
    assert len(train_ids) == len(test_ids) == 100 and not train_ids & test_ids
    assert "multiq-gpt-1" in test_ids and "multiq-gpt-2" in train_ids
    with pytest.raises(ValueError, match="does not end in"):
        split_by_id_parity(Dataset.from_dict({"id": ["q-a", "q-2"]}))


def test_load_multiq_without_local_data_names_the_file(monkeypatch, tmp_path):
    from msd_trl import data as data_module

    monkeypatch.setattr(data_module.loaders, "find_shared_data_dir", lambda: None)
    with pytest.raises(ValueError, match="MultiQ.csv"):
        data_module.load_multiq()
    with pytest.raises(ValueError, match="not found"):
        data_module.load_multiq(tmp_path / "missing.csv")


def test_build_safety_mix_adds_multiq_chat_rows_from_the_train_side():
    mix = build_safety_mix(["jv", "sw"], ["sw"], multiq_languages=["jv", "sw"], benign_proportion=0.4,
                           multiq_share=0.5, num_rows=100, data_dir=DATA_DIR)  # fmt: skip
    sources = Counter(mix["source"])
    assert sources == {"multijail": 60, "mgsm": 20, "multiq": 20}
    multiq_ids = [i for i, s in zip(mix["id"], mix["source"]) if s == "multiq"]
    assert all(int(i.rsplit("-", 1)[1]) % 2 == 0 for i in multiq_ids)  # even ids only: odd ids are evaluation's
    only_chat = build_safety_mix(["jv"], [], multiq_languages=["jv"], benign_proportion=0.5, num_rows=40,
                                 data_dir=DATA_DIR)  # fmt: skip
    assert Counter(only_chat["source"]) == {"multijail": 20, "multiq": 20}
    with pytest.raises(ValueError, match="multiq_share"):
        build_safety_mix(["jv"], ["sw"], multiq_languages=["jv"], multiq_share=0.0, data_dir=DATA_DIR)


def test_filter_by_length_can_count_what_the_trainer_renders(tiny_tokenizer):
    # Before: max_prompt_tokens counted the raw text while the trainer's max_prompt_length counted the rendered
    # conversation (chat template, teacher template, system prompt): one concept, two counts.
    from msd_trl.rendering import render_teacher_messages, tokenize_messages

    tokenizer = tiny_tokenizer
    rows = Dataset.from_list([
        {"id": "a", "language": "jv", "prompt": "short one", "teacher_prompt": "short"},
        {"id": "b", "language": "jv", "prompt": "short two", "teacher_prompt": "short"},
    ])  # fmt: skip
    template, system = "{teacher_prompt}\n(asked in {language}: {prompt})", "Be safe and helpful. " * 5
    teacher_lengths = [len(tokenize_messages(tokenizer, render_teacher_messages(r, template=template,
                                                                               system_prompt=system))) for r in rows]  # fmt: skip
    limit = teacher_lengths[0] - 1  # the raw texts fit easily; the rendered teacher conversation does not
    assert len(data.filter_by_length(rows, tokenizer, max_prompt_tokens=limit)) == 2
    kept = data.filter_by_length(rows, tokenizer, max_prompt_tokens=limit, teacher_prompt_template=template,
                                 teacher_system_prompt=system)  # fmt: skip
    assert len(kept) == 0
    assert len(data.filter_by_length(rows, tokenizer, max_prompt_tokens=max(teacher_lengths),
                                     teacher_prompt_template=template, teacher_system_prompt=system)) == 2  # fmt: skip
