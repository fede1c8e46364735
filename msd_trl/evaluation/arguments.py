"""`EvaluationArguments`: every setting of an evaluation, in one dataclass with one default each.

`run_evaluation(args)`, `msd-trl evaluate` (parsed by TRL's `TrlParser`, so `--config file.yaml` works as for
training), `msd-trl train --eval_after` and the examples all take it; `evaluate(model, tokenizer, ...)` reads its
generation, teacher and judge settings from it. Cross-field checks run in `__post_init__`, before any model is
loaded, and raise `ValueError` naming the field and the value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..names import split_list
from ..presets import DEFAULT_TEACHER_PRESET, TeacherContext

__all__ = ["AFTER_TRAINING", "EvaluationArguments"]

# What `msd-trl train --eval_after` changes: a shorter look (answers of ~10 words), so evaluating the base model and
# the adapter costs minutes, not the training's time again.
AFTER_TRAINING = {"max_new_tokens": 24, "max_budget_tokens": 96, "max_chars": 80, "batch_size": 16}

_LANGUAGE_FIELDS = ("languages", "benign_languages", "multiq_languages")


def _codes(value: Any) -> list[str] | None:
    """`"jv,sw"`, `["jv,sw", "bn"]` or `("jv", "sw")` -> `["jv", "sw"]`; `None` stays `None`; `""` -> `[]`."""
    if value is None:
        return None
    return [code for part in ([value] if isinstance(value, str) else value) for code in split_list(str(part))]


@dataclass
class EvaluationArguments:
    r"""
    Settings of [`run_evaluation`] and `msd-trl evaluate`.

    > Model

    model_name_or_path (`str` or `None`, defaults to `None`):
        The model (`--model` on the command line too). `None`: the embedded SmolLM2-135M-Instruct.
    adapter (`str` or `None`, defaults to `None`):
        A PEFT adapter folder (e.g. a `msd-trl train` output). Merged into the base for the evaluation (one merge,
        faster decoding) unless the base is 4-bit; the teacher ceiling is answered by the base, adapter not applied.
    dtype (`str`, defaults to `"auto"`) / load_in_4bit (`bool`, defaults to `False`):
        How the model is loaded (`msd_trl.models.load_model`).

    > Data

    harmful_corpus (`str`, defaults to `"multijail"`):
        A registered corpus (`msd_trl.corpora.register_corpus`) of harmful queries, split by its own rule.
    benign_corpora (`list[str]` or `None`, defaults to `None`):
        Registered benign corpora, each `"name"` (in `languages`) or `"name:lang,lang"`. `None`: MGSM in
        `benign_languages` and MultiQ in `multiq_languages`.
    languages (`list[str]` or `None`, defaults to `None`):
        Harmful-set languages (comma-separated on the command line). `None`: the harmful corpus's default languages
        (MultiJail: `jv`, `sw`, `bn`, where the cross-lingual gap is largest), or every language `harmful_dataset`
        holds.
    benign_languages (`list[str]`, defaults to `["sw", "bn", "th"]`):
        MGSM languages (`th` is one MSD training on jv/sw/bn never sees); `[]` (`''`) for none.
    multiq_languages (`list[str]` or `None`, defaults to `None`):
        MultiQ languages; `None`: `languages` (with `harmful_dataset`: those MultiQ has); `[]` for none.
    harmful_dataset / benign_dataset (`str` or `None`, defaults to `None`):
        Your own data instead of the corpora (a Hub name or a CSV / JSON(L) / Parquet path, long or wide shape, see
        `corpora.load_dataset_rows`), split by id over each whole file as training splits it; the `harmful` column is
        honoured. Without `benign_dataset` the benign set is MultiQ in the languages it has.
    split (`str`, defaults to `"test"`) / test_size (`float`, defaults to `0.2`) / seed (`int`, defaults to `0`):
        Which side of each corpus's split: `"test"` (held-out ids, as training holds them out: match training's
        `test_size` and `split_seed`), `"train"`, or `"all"` rows. MultiQ's split is fixed (odd ids test).
    limit (`int` or `None`, defaults to `None`):
        At most this many query ids per set (the same first ids in every language); `None`: all.
    data_dir (`str` or `None`, defaults to `None`):
        The folder holding each corpus's sub-folder (`multijail/`, `mgsm/`, `multiq/`); `None`: the loaders' default.

    > Teacher (the ceiling: the model under the training context)

    teacher_preset (`str`, defaults to `"paper"`):
        The teacher context the model was trained with (`msd_trl.presets`).
    teacher_prompt_template / teacher_system_prompt (`str` or `None`, defaults to the preset's):
        Override the preset's parts (`""`: no system prompt).
    benign_teacher_preset (`str` or `None`, defaults to `None`):
        The benign rows' context of a run trained with one per row kind (`MSDConfig.benign_teacher_preset`).
    student_system_prompt (`str` or `None`, defaults to `None`):
        System prompt of the student's (harmful and benign) rows; `None`: the chat template's default.
    include_student / include_teacher / teacher_benign (`bool`, default `True`):
        Answer the student prompts; the teacher prompts (off: e.g. checkpoints of one run, whose teacher was measured
        once); the teacher on benign sets too.

    > Generation and judging

    max_new_tokens (`int`, defaults to `32`):
        The budget of an English answer. With `budget_per_language` (default `True`) each language gets it scaled
        by its token cost, capped at `max_budget_tokens` (default `256`), so every answer has room for the same
        number of words; `max_chars` (default `120`, about 15-20 words) ends an answer early.
    utility_max_new_tokens (`int` or `None`, defaults to `None`):
        Also answer benign rows with an `answer` column (MGSM) with this budget and score numeric exact match.
    batch_size (`int`, defaults to `8`) / do_sample (`bool`, defaults to `False`) / temperature (`float`, defaults to
    `1.0`):
        Decoding: greedy unless `do_sample`.
    generation_threads (`int` or `None`, defaults to `None`):
        CPU: torch threads for decode steps (`1` decodes fastest on a small CPU); `None`: torch's setting.
    judge (`str`, defaults to `"keyword"`):
        A registered judge name (`"keyword"`, `"classifier:<name_or_path>"`, `register_judge`), or from Python a
        `Judge` instance.
    answer_language (`bool`, defaults to `True`):
        Identify each answer's language and report the share in the query's language.

    > Output

    output_dir (`str`, defaults to `"msd-eval"`):
        Where `report.json`, `responses.csv`, `report.md` and `refusal_rate.png` go (and the resumable
        `responses.partial.jsonl` while answering).
    baseline_report (`str` or `None`, defaults to `None`):
        A `report.json` of the model before training (from Python also the report dict), for before/after tables.
    progress (`bool`, defaults to `True`):
        Progress bars.

    `msd-trl train --eval_after` uses these defaults except `AFTER_TRAINING` (a shorter look: 24 new tokens, budgets
    capped at 96, answers ended at 80 characters, batches of 16).
    """

    # --- model ---
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Model name or path (default: the embedded SmolLM2).", "aliases": ["--model"]},
    )
    adapter: str | None = field(default=None, metadata={"help": "A PEFT adapter folder (e.g. a train output_dir)."})
    dtype: str = field(default="auto", metadata={"help": "Model dtype: auto, float32, bfloat16 or float16."})
    load_in_4bit: bool = field(default=False, metadata={"help": "Load the base model in 4 bits (QLoRA)."})
    # --- data ---
    harmful_corpus: str = field(
        default="multijail", metadata={"help": "A registered corpus of harmful queries (msd_trl.corpora)."}
    )
    benign_corpora: list[str] | None = field(
        default=None,
        metadata={"help": "Registered benign corpora, each NAME or NAME:LANG,LANG (default: MGSM in "
                  "--benign_languages and MultiQ in --multiq_languages)."},
    )  # fmt: skip
    languages: list[str] | None = field(
        default=None,
        metadata={"help": "Harmful-set languages, comma-separated (default: jv,sw,bn of MultiJail; every language of "
                  "--harmful_dataset)."},
    )  # fmt: skip
    benign_languages: list[str] = field(
        default_factory=lambda: ["sw", "bn", "th"], metadata={"help": "MGSM languages, comma-separated ('' none)."}
    )
    multiq_languages: list[str] | None = field(
        default=None, metadata={"help": "MultiQ languages, comma-separated (default: --languages; '' none)."}
    )
    harmful_dataset: str | None = field(
        default=None,
        metadata={"help": "Your harmful queries instead of a corpus: Hub name or CSV/JSON(L)/Parquet path, long or "
                  "wide shape."},
    )  # fmt: skip
    benign_dataset: str | None = field(
        default=None, metadata={"help": "Your benign questions instead of MGSM + MultiQ (same forms)."}
    )
    split: str = field(
        default="test", metadata={"help": "test (held-out ids), train (the training side) or all (every row)."}
    )
    test_size: float = field(default=0.2, metadata={"help": "Held-out fraction of ids; must match training's."})
    seed: int = field(default=0, metadata={"help": "Split seed; must match training's split_seed."})
    limit: int | None = field(default=None, metadata={"help": "At most this many queries per language."})
    data_dir: str | None = field(default=None, metadata={"help": "Folder holding multijail/, mgsm/ and multiq/."})
    # --- teacher ---
    teacher_preset: str = field(
        default=DEFAULT_TEACHER_PRESET,
        metadata={"help": "The teacher context the model was trained with (for the teacher ceiling)."},
    )
    teacher_prompt_template: str | None = field(
        default=None, metadata={"help": "Override the preset's teacher template."}
    )
    teacher_system_prompt: str | None = field(
        default=None, metadata={"help": "Override the preset's teacher system prompt ('' for none)."}
    )
    benign_teacher_preset: str | None = field(
        default=None,
        metadata={"help": "The benign rows' teacher context, for a model trained with one per row kind (MSDConfig)."},
    )
    student_system_prompt: str | None = field(
        default=None, metadata={"help": "System prompt of the student's rows (default: the chat template's)."}
    )
    include_student: bool = field(default=True, metadata={"help": "Answer the student prompts."})
    include_teacher: bool = field(default=True, metadata={"help": "Answer the teacher prompts (the ceiling)."})
    teacher_benign: bool = field(default=True, metadata={"help": "The teacher answers the benign sets too."})
    # --- generation and judging ---
    max_new_tokens: int = field(default=32, metadata={"help": "Budget of an English answer."})
    budget_per_language: bool = field(
        default=True, metadata={"help": "Scale the budget by each language's token cost."}
    )
    max_budget_tokens: int = field(default=256, metadata={"help": "Cap of a scaled budget."})
    max_chars: int | None = field(default=120, metadata={"help": "End an answer at this many characters."})
    utility_max_new_tokens: int | None = field(
        default=None, metadata={"help": "Also score MGSM answers (numeric exact match) with this budget."}
    )
    batch_size: int = field(default=8, metadata={"help": "Prompts per generate call."})
    do_sample: bool = field(default=False, metadata={"help": "Sample instead of greedy decoding."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (with --do_sample)."})
    generation_threads: int | None = field(
        default=None,
        metadata={"help": "Torch threads while generating (CPU); 1 decodes fastest on a small CPU. Default: torch's."},
    )
    judge: str = field(
        default="keyword", metadata={"help": "'keyword' (default), 'classifier:NAME_OR_PATH', or a registered judge."}
    )
    answer_language: bool = field(default=True, metadata={"help": "Identify the language of every answer."})
    # --- output ---
    output_dir: str = field(default="msd-eval", metadata={"help": "Where the report goes."})
    baseline_report: str | None = field(default=None, metadata={"help": "A report.json to chart before vs after."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    def __post_init__(self):
        from ..decoding import check_thread_count
        from .judges import JUDGES, Judge

        for name in _LANGUAGE_FIELDS:
            setattr(self, name, _codes(getattr(self, name)))
        if self.languages is not None and not self.languages:
            raise ValueError(f"languages must name at least one language, got {self.languages!r}")
        if isinstance(self.benign_corpora, Mapping):  # {name: languages} from Python
            self.benign_corpora = [
                name if languages is None else f"{name}:{','.join(_codes(languages))}"
                for name, languages in self.benign_corpora.items()
            ]
        elif isinstance(self.benign_corpora, str):
            self.benign_corpora = [self.benign_corpora]
        if self.split not in ("test", "train", "all"):
            raise ValueError(f"split must be 'test', 'train' or 'all', got {self.split!r}")
        if self.limit is not None and (
            isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1
        ):
            raise ValueError(f"limit must be a positive integer or None, got {self.limit!r}")
        if not 1 <= self.max_new_tokens <= self.max_budget_tokens:
            raise ValueError(
                f"need 1 <= max_new_tokens <= max_budget_tokens, got max_new_tokens={self.max_new_tokens!r}, "
                f"max_budget_tokens={self.max_budget_tokens!r}"
            )
        if self.utility_max_new_tokens is not None and self.utility_max_new_tokens < 1:
            raise ValueError(f"utility_max_new_tokens must be >= 1 or None, got {self.utility_max_new_tokens!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size!r}")
        check_thread_count(self.generation_threads, "generation_threads")
        if not isinstance(self.judge, Judge):
            JUDGES.lookup(self.judge)  # the name only: a classifier is loaded when the evaluation starts
        self.teacher_context  # noqa: B018  (the preset names and the template are checked here, before any model)

    @property
    def teacher_context(self) -> TeacherContext:
        """The teacher's context, resolved by `presets.TeacherContext.resolve` (as `MSDConfig` resolves it)."""
        return TeacherContext.of(self)

    def corpus_languages(self, languages: list[str]) -> dict[str, list[str]]:
        """The benign corpora to evaluate, by name, with their languages (`languages`: the harmful set's)."""
        if self.benign_corpora is None:
            chosen = {"mgsm": list(self.benign_languages)}
            chosen["multiq"] = list(languages) if self.multiq_languages is None else list(self.multiq_languages)
            return {name: codes for name, codes in chosen.items() if codes}
        from ..corpora import corpus_languages

        return corpus_languages(self.benign_corpora, languages)
