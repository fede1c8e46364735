"""`DataArguments` and the `msd-trl train` parser: which data a run trains on, and the CLI's defaults.

Shared by the command line (`msd_trl.cli`) and the example scripts, which parse the same flags with TRL's
`TrlParser` (`DataArguments`, `MSDConfig`, TRL's `ModelConfig`; `--config file.yaml` sets any of them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DEFAULT_LORA_TARGETS", "TEACHER_COMPLETIONS_FILE", "DataArguments", "build_train_parser", "split_list"]

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
    trainer: str = field(
        default="on-policy",
        metadata={"help": "Trainer: 'on-policy' (student samples, teacher scores) or 'off-policy' (teacher text); "
                  "variants registered with msd_trl.register_trainer are accepted too."},
    )  # fmt: skip
    languages: str = field(
        default="jv,sw,bn", metadata={"help": "Comma-separated MultiJail target languages to train on."}
    )
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
    eval_languages: str = field(
        default="jv,sw,bn,th", metadata={"help": "--eval_after: harmful (MultiJail) and benign (MultiQ) languages."}
    )
    eval_limit: int | None = field(default=20, metadata={"help": "--eval_after: held-out queries per language."})
    selectivity_monitor: bool = field(
        default=False,
        metadata={"help": "Log the selectivity monitor (msd_trl.SelectivityCallback) while training: per "
                  "--eval_languages, P(refusal opening) on held-out harmful and benign (MultiQ) prompts and their AUC, "
                  "by teacher forcing, every --eval_steps (default: --save_steps, else a tenth of the steps). Uses "
                  "the held-out ids after the first --eval_limit, so --eval_after reports on other ids."},
    )  # fmt: skip
    monitor_limit: int = field(
        default=20, metadata={"help": "--selectivity_monitor: held-out prompts per language on each side."}
    )

    def build_dataset(self, tokenizer, split: str = "train", config=None):
        """The rows these arguments describe: the user's `dataset_name` (+ `benign_dataset_name`) when given, else
        MultiJail + MGSM / MultiQ benign rows (`corpora.build_safety_mix`). Either way split by query id (the
        `train` side; `test_size` 0 keeps every row) and filtered by rendered prompt length."""
        from .corpora import build_safety_mix

        if self.dataset_name:
            return self._user_dataset(tokenizer, split, config)
        return build_safety_mix(
            split_list(self.languages),
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
            # With the run's config, max_prompt_tokens counts the conversations as the trainer renders them.
            teacher_prompt_template=config.teacher_prompt_template if config is not None else None,
            teacher_system_prompt=config.teacher_system_prompt if config is not None else None,
            teacher_context=config.teacher_context if config is not None else None,
        )

    def _user_dataset(self, tokenizer, split: str, config):
        from .corpora import load_dataset_rows
        from .data import mix_harmful_and_benign, split_by_id

        def rows(name: str, harmful: bool):
            loaded = load_dataset_rows(
                name, config=self.dataset_config, split=self.dataset_train_split,
                languages=split_list(self.languages), harmful=harmful,
            )  # fmt: skip
            if self.test_size == 0:
                return loaded
            return split_by_id(loaded, test_size=self.test_size, seed=self.split_seed)[split]

        benign = {"benign": rows(self.benign_dataset_name, False)} if self.benign_dataset_name else {}
        return mix_harmful_and_benign(
            rows(self.dataset_name, True),
            benign,
            benign_proportion=self.benign_proportion if benign else 0.0,
            num_rows=self.max_train_rows,
            seed=self.split_seed,
            tokenizer=tokenizer,
            max_prompt_tokens=self.max_prompt_tokens,
            teacher_prompt_template=config.teacher_prompt_template if config is not None else None,
            teacher_system_prompt=config.teacher_system_prompt if config is not None else None,
            teacher_context=config.teacher_context if config is not None else None,
        )


def split_list(value: str) -> list[str]:
    """`"jv, sw,,bn"` -> `["jv", "sw", "bn"]`."""
    return [v.strip() for v in value.split(",") if v.strip()]


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
