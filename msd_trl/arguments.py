"""`DataArguments` and the `msd-trl train` parser: which data a run trains on, and the CLI's defaults.

Shared by the command line (`msd_trl.cli`) and the example scripts, which parse the same flags with TRL's
`TrlParser` (`DataArguments`, `MSDConfig`, TRL's `ModelConfig`; `--config file.yaml` sets any of them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .names import split_list

__all__ = ["DEFAULT_LORA_TARGETS", "TEACHER_COMPLETIONS_FILE", "DataArguments", "build_train_parser"]

# --eval_after's default on MultiJail: the languages trained on by default (the corpus's) and one never trained on.
DEFAULT_EVAL_LANGUAGES = ("jv", "sw", "bn", "th")
# Where off-policy teacher text is cached by default, inside --output_dir.
TEACHER_COMPLETIONS_FILE = "teacher_completions.jsonl"
# The LoRA targets of models.default_lora_config: every linear layer but the output head (peft's "all-linear"; for a
# Llama-style model such as SmolLM2 that is q/k/v/o and gate/up/down).
DEFAULT_LORA_TARGETS = ["all-linear"]


@dataclass
class DataArguments:
    """Which queries to train on (and, for `train --trainer`, which trainer)."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Your data: a Hub name, or a CSV / JSON(L) / Parquet file or folder, or a saved datasets "
                  "folder; long shape (prompt, teacher_prompt, ...) or wide (id, en, one column per language: "
                  "--languages picks them). Default: MultiJail + MGSM + MultiQ."},
    )  # fmt: skip
    dataset_config: str | None = field(default=None, metadata={"help": "Hub config name of --dataset_name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split of --dataset_name to read."})
    benign_dataset_name: str | None = field(
        default=None,
        metadata={"help": "Benign rows to mix in with --dataset_name (same forms); --benign_proportion of the mix."},
    )
    harmful_corpus: str = field(
        default="multijail",
        metadata={"help": "Without --dataset_name: the registered corpus of harmful queries (msd_trl.corpora; "
                  "register yours with register_corpus)."},
    )  # fmt: skip
    benign_corpora: list[str] | None = field(
        default=None,
        metadata={"help": "Without --dataset_name: registered benign corpora, each NAME:LANG,LANG (replaces "
                  "--benign_languages / --multiq_languages; equal shares)."},
    )  # fmt: skip
    trainer: str = field(
        default="on-policy",
        metadata={"help": "Trainer: 'on-policy' (student samples, teacher scores) or 'off-policy' (teacher text); "
                  "variants registered with msd_trl.register_trainer are accepted too."},
    )  # fmt: skip
    languages: str | None = field(
        default=None,
        metadata={"help": "Comma-separated target languages to train on (BCP-47 codes). Default: the harmful "
                  "corpus's (MultiJail: jv,sw,bn); with --dataset_name, every language the file holds."},
    )  # fmt: skip
    benign_languages: str = field(
        default="sw,bn", metadata={"help": "Comma-separated MGSM languages of benign rows ('' for none)."}
    )
    benign_proportion: float = field(
        default=0.4, metadata={"help": "Fraction of benign (MGSM) rows in the training mix, in [0, 1)."}
    )
    data_dir: str | None = field(
        default=None,
        metadata={"help": "Folder holding multijail/ and mgsm/ (default: ../shared/data if found, else the Hub)."},
    )
    test_size: float = field(
        default=0.2,
        metadata={
            "help": "Fraction of query ids held out for evaluation (split by id); 0 trains on every row of "
            "--dataset_name."
        },  # fmt: skip
    )
    split_seed: int = field(default=0, metadata={"help": "Seed of the by-id train/test split and of the mix."})
    max_prompt_tokens: int | None = field(
        default=256,
        metadata={
            "help": "Drop training rows whose student or teacher conversation, rendered as the trainer renders "
            "it (chat template, teacher template and system prompt), is longer (logged per language)."
        },
    )
    max_train_rows: int | None = field(default=None, metadata={"help": "Cap on the number of training rows."})
    teacher_completions: str | None = field(
        default=None,
        metadata={"help": "Off-policy: JSON-lines cache of teacher text (default OUTPUT_DIR/teacher_completions"
                  ".jsonl); resumed if it exists."},
    )  # fmt: skip
    generation_batch_size: int = field(default=8, metadata={"help": "Batch size of teacher-text generation."})
    multiq_languages: str = field(
        default="jv,sw,bn",
        metadata={"help": "Comma-separated MultiQ languages of benign chat questions (even ids; '' for none). Without "
                  "them the student learns to refuse every non-English question (docs/results.md)."},
    )  # fmt: skip
    multiq_share: float = field(
        default=0.5, metadata={"help": "Share of the benign rows taken from MultiQ when MGSM rows are mixed in too."}
    )
    eval_after: bool = field(
        default=False,
        metadata={"help": "After training, evaluate the base model and the adapter on the same held-out queries, "
                  "print a before/after table and put it in the model card."},
    )  # fmt: skip
    eval_languages: str | None = field(
        default=None,
        metadata={"help": "--eval_after: harmful and benign languages. Default: jv,sw,bn,th of MultiJail; with "
                  "--dataset_name, the languages trained on."},
    )  # fmt: skip
    eval_limit: int | None = field(default=20, metadata={"help": "--eval_after: held-out queries per language."})
    selectivity_monitor: bool = field(
        default=False,
        metadata={"help": "Log the selectivity monitor (msd_trl.SelectivityCallback) while training: per "
                  "--eval_languages, P(refusal opening) on held-out harmful and benign (MultiQ) prompts and their AUC, "
                  "by teacher forcing, every --eval_steps (default: --save_steps, else a tenth of the steps). Uses "
                  "the held-out ids after the first --eval_limit, so --eval_after reports on other ids."},
    )  # fmt: skip
    monitor_limit: int = field(
        default=16, metadata={"help": "--selectivity_monitor: held-out prompts per language on each side."}
    )

    def train_languages(self) -> list[str] | None:
        """--languages as a list; None means the default: the harmful corpus's default languages (MultiJail: jv, sw,
        bn), every language of a user's file."""
        if self.languages is None:
            from .corpora import get_corpus

            return None if self.dataset_name else list(get_corpus(self.harmful_corpus).default_languages)
        return split_list(self.languages)

    def corpora(self) -> dict[str, list[str]] | None:
        """--benign_corpora as {name: languages} (a bare name: the training languages), or None."""
        from .corpora import corpus_languages

        return None if self.benign_corpora is None else corpus_languages(self.benign_corpora, self.train_languages())

    def check_files(self) -> None:
        """Read the user's files (`dataset_name`, `benign_dataset_name`) and check their columns and languages, without
        a tokenizer or a model: a missing or unreadable file, a missing column or a language the file lacks raises the
        error `build_dataset` would raise, before the CLI resolves the model (a first run builds or downloads it,
        about a minute) instead of after. Nothing to check without `dataset_name` (the corpora are checked when read).
        """
        if not self.dataset_name:
            return
        from .corpora import load_dataset_rows

        for name, harmful in ((self.dataset_name, True), (self.benign_dataset_name, False)):
            if name:
                load_dataset_rows(
                    name, config=self.dataset_config, split=self.dataset_train_split,
                    languages=self.train_languages(), harmful=harmful,
                )  # fmt: skip

    def build_dataset(self, tokenizer, split: str = "train", config=None, plan: dict | None = None):
        """The rows these arguments describe: the user's `dataset_name` (+ `benign_dataset_name`) when given, else
        MultiJail + MGSM / MultiQ benign rows (`corpora.build_safety_mix`). Either way split by query id (the
        `train` side; `test_size` 0 keeps every row) and filtered by rendered prompt length. `plan`, when given,
        collects rows per set and language at each stage (read, train side, within the prompt limit) for the
        CLI's plan block."""
        from .corpora import build_safety_mix

        if self.dataset_name:
            return self._user_dataset(tokenizer, split, config, plan)
        return build_safety_mix(
            self.train_languages(),
            split_list(self.benign_languages),
            benign_proportion=self.benign_proportion,
            split=split,
            test_size=self.test_size,
            seed=self.split_seed,
            data_dir=self.data_dir,
            tokenizer=tokenizer,
            max_prompt_tokens=self.max_prompt_tokens,
            num_rows=self.max_train_rows,
            multiq_languages=split_list(self.multiq_languages),
            multiq_share=self.multiq_share,
            harmful_corpus=self.harmful_corpus,
            benign_corpora=self.corpora(),
            # With the run's config, max_prompt_tokens counts the conversations as the trainer renders them.
            teacher_prompt_template=config.teacher_prompt_template if config is not None else None,
            teacher_system_prompt=config.teacher_system_prompt if config is not None else None,
            teacher_context=config.teacher_context if config is not None else None,
            plan=plan,
        )

    def _user_dataset(self, tokenizer, split: str, config, plan: dict | None):
        from collections import Counter
        from pathlib import Path

        from .corpora import load_dataset_rows
        from .data import mix_harmful_and_benign

        def rows(name: str, harmful: bool):
            common = dict(config=self.dataset_config, split=self.dataset_train_split, languages=self.train_languages(),
                          harmful=harmful)  # fmt: skip
            if plan is not None or self.test_size == 0:
                every = load_dataset_rows(name, **common)
                if plan is not None:
                    plan.setdefault(Path(name).stem, {})["read"] = Counter(every["language"])
                    if self.languages is not None:  # what --languages leaves out, for the plan
                        try:
                            held = Counter(load_dataset_rows(name, **{**common, "languages": None})["language"])
                        except ValueError:  # e.g. a wide file whose other columns are not languages
                            held = Counter()
                        left_out = {code: n for code, n in held.items() if code not in every["language"]}
                        if left_out:
                            plan.setdefault("_file_languages", {})[Path(name).stem] = left_out
                if self.test_size == 0:
                    return every
            # Split over the whole file's ids (before the language filter), exactly as evaluation does.
            return load_dataset_rows(name, **common, id_split=split, test_size=self.test_size, seed=self.split_seed)

        harmful = rows(self.dataset_name, True)
        benign = {}
        if self.benign_dataset_name:
            benign_rows = rows(self.benign_dataset_name, False)
            if "harmful" in benign_rows.column_names and any(benign_rows["harmful"]):
                ids = sorted({i for i, h in zip(benign_rows["id"], benign_rows["harmful"]) if h})
                raise ValueError(
                    f"benign_dataset_name={self.benign_dataset_name!r} holds rows marked harmful (ids {ids[:10]}): "
                    "a benign set must be benign; move them to --dataset_name or fix their 'harmful' value."
                )
            benign[Path(self.benign_dataset_name).stem] = benign_rows
        return mix_harmful_and_benign(
            harmful,
            benign,
            benign_proportion=self.benign_proportion if benign else 0.0,
            num_rows=self.max_train_rows,
            seed=self.split_seed,
            tokenizer=tokenizer,
            max_prompt_tokens=self.max_prompt_tokens,
            teacher_prompt_template=config.teacher_prompt_template if config is not None else None,
            teacher_system_prompt=config.teacher_system_prompt if config is not None else None,
            teacher_context=config.teacher_context if config is not None else None,
            harmful_name=Path(self.dataset_name).stem,
            plan=plan,
        )


def build_train_parser(prog: str = "msd-trl train"):
    from trl import ModelConfig, TrlParser

    from .config import MSDConfig

    parser = TrlParser((DataArguments, MSDConfig, ModelConfig), prog=prog)
    # The CLI's defaults for an MSD run; --config YAML and flags override them.
    parser.set_defaults(
        output_dir="outputs/msd",
        use_peft=True,
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        lora_target_modules=DEFAULT_LORA_TARGETS,
        learning_rate=5e-4,
        per_device_train_batch_size=4,
        max_new_tokens=32,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        dtype="float32",
    )
    return parser
