"""Off-policy Multilingual Self-Distillation (MSD): student and teacher both score cached teacher text.

Launch (generates the teacher text first if the cache is missing or incomplete, then trains):

    python examples/off_policy_msd.py --config examples/configs/off_policy.yaml

or in two steps, the first of which can run on another machine or be interrupted and resumed:

    python examples/generate_teacher_completions.py --config examples/configs/off_policy.yaml
    python examples/off_policy_msd.py --config examples/configs/off_policy.yaml

The teacher (the initial model: under LoRA the base with the adapter disabled) answers the English query with a
safety system prompt; that text becomes the `teacher_completion` column; the student, shown only the
target-language query, is trained so its next-token distributions on that text match the teacher's (DPSW-weighted
reverse KL). This script is what `msd-trl train --trainer off-policy` runs, without the run summary files.
"""

from pathlib import Path

from trl import ModelConfig, get_peft_config

from msd_trl import MSDConfig, OffPolicyMSDTrainer, generate_teacher_completions
from msd_trl.arguments import TEACHER_COMPLETIONS_FILE, DataArguments, build_train_parser
from msd_trl.model_card import write_trainer_card
from msd_trl.models import load_model, load_tokenizer


def main(data_args: DataArguments, training_args: MSDConfig, model_args: ModelConfig) -> OffPolicyMSDTrainer:

    tokenizer = load_tokenizer(model_args.model_name_or_path)
    model = load_model(model_args.model_name_or_path, dtype=model_args.dtype, load_in_4bit=model_args.load_in_4bit)
    train_dataset = data_args.build_dataset(tokenizer, config=training_args)  # MultiJail + benign rows, by id
    # The cache generate_teacher_completions.py writes (same default path): rows already in it are read back, not
    # generated again. The model has no adapter yet, so it *is* the teacher; during training the self-teacher is
    # the same weights with the adapter disabled.
    cache = Path(data_args.teacher_completions or Path(training_args.output_dir) / TEACHER_COMPLETIONS_FILE)
    train_dataset = generate_teacher_completions(
        model,
        train_dataset,
        tokenizer,
        args=training_args,
        batch_size=data_args.generation_batch_size,
        output_path=cache,
        seed=training_args.seed,
    )

    trainer = OffPolicyMSDTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,  # columns: prompt, teacher_prompt, language, id, ..., teacher_completion
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)
    write_trainer_card(trainer, data_args, model_args)  # our card (TRL's names no base model) + adapter_config's name
    return trainer


if __name__ == "__main__":
    # msd-trl train's parser and defaults: LoRA r=16 on every linear layer (not a full fine-tune), float32, ...
    main(*build_train_parser(f"python examples/{Path(__file__).name}").parse_args_and_config())
