"""Teacher text for off-policy MSD: sample the teacher once under its privileged context and cache it.

Launch:

    python examples/generate_teacher_completions.py --config examples/configs/off_policy.yaml

Writes `--teacher_completions` (default OUTPUT_DIR/teacher_completions.jsonl), one JSON line per finished row,
appended batch by batch: an interrupted run resumes where it stopped. It also writes the training rows with their
new `teacher_completion` column next to it (`*.dataset.jsonl`). `examples/off_policy_msd.py` with the same config
reads the same cache and generates nothing again. This script is what `msd-trl generate-teacher` runs.
"""

from pathlib import Path

from datasets import Dataset
from trl import ModelConfig, TrlParser

from msd_trl import MSDConfig, generate_teacher_completions
from msd_trl.arguments import TEACHER_COMPLETIONS_FILE, DataArguments
from msd_trl.models import load_model, load_tokenizer


def teacher_completions_path(data_args: DataArguments, training_args: MSDConfig) -> Path:
    return Path(data_args.teacher_completions or Path(training_args.output_dir) / TEACHER_COMPLETIONS_FILE)


def main(data_args: DataArguments, training_args: MSDConfig, model_args: ModelConfig) -> Dataset:

    tokenizer = load_tokenizer(model_args.model_name_or_path)
    model = load_model(model_args.model_name_or_path, dtype=model_args.dtype, load_in_4bit=model_args.load_in_4bit)
    # The same rows, in the same order, as off_policy_msd.py builds: the cache is keyed by row index.
    dataset = data_args.build_dataset(tokenizer, config=training_args)  # MultiJail + benign rows, split by id
    path = teacher_completions_path(data_args, training_args)
    # Template, system prompt, max_new_tokens, temperature, top_p and top_k come from the MSDConfig.
    dataset = generate_teacher_completions(
        model,
        dataset,
        tokenizer,
        args=training_args,
        batch_size=data_args.generation_batch_size,
        output_path=path,
        seed=training_args.seed,
    )
    dataset.to_json(str(path.with_suffix(".dataset.jsonl")), force_ascii=False)
    print(f"{len(dataset)} teacher completions in {path}")
    return dataset


if __name__ == "__main__":
    parser = TrlParser((DataArguments, MSDConfig, ModelConfig))
    main(*parser.parse_args_and_config())
