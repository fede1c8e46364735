"""On-policy Multilingual Self-Distillation (MSD) on MultiJail, written against msd_trl's public API.

Launch (CPU, the embedded SmolLM2-135M-Instruct, ../shared/data or the Hub):

    python examples/on_policy_msd.py --config examples/configs/on_policy.yaml

Any `MSDConfig` / `TrainingArguments` flag, TRL `ModelConfig` flag or `msd_trl.arguments.DataArguments` field can be
given on the command line or in the YAML; flags win over the YAML, which wins over `msd-trl train`'s defaults (LoRA
r=16 on every linear layer: without `--config` this trains an adapter, not the full model). A Hub model with QLoRA, for users with network:

    python examples/on_policy_msd.py --config examples/configs/on_policy.yaml \
        --model_name_or_path Qwen/Qwen2.5-7B-Instruct --load_in_4bit --lora_target_modules all-linear

Several processes (data parallel through accelerate; DDP over gloo on a CPU-only machine):

    accelerate launch --multi_gpu --num_processes 2 examples/on_policy_msd.py --config examples/configs/on_policy.yaml

The student samples a response to the target-language query (Javanese, Swahili, Bengali); the teacher, the same
model with the LoRA adapter disabled, scores those tokens while seeing the English query and a safety system
prompt; the loss is DPSW-weighted reverse KL. This script is what `msd-trl train --trainer on-policy` runs,
without the run summary files.
"""

from pathlib import Path

from trl import ModelConfig, get_peft_config

from msd_trl import MSDConfig, OnPolicyMSDTrainer
from msd_trl.arguments import DataArguments, build_train_parser
from msd_trl.model_card import write_trainer_card
from msd_trl.models import load_model, load_tokenizer


def main(data_args: DataArguments, training_args: MSDConfig, model_args: ModelConfig) -> OnPolicyMSDTrainer:
    # The teacher's privileged context: the English query (template "{teacher_prompt}") + a safety system prompt.

    # model_name_or_path=None is the embedded SmolLM2-135M-Instruct (no Hub access needed).
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    model = load_model(model_args.model_name_or_path, dtype=model_args.dtype, load_in_4bit=model_args.load_in_4bit)

    # MultiJail harmful queries + MGSM benign questions, split by query id (the held-out ids are the evaluation's).
    # data_dir=None: ../shared/data when it exists, else the Hub (DAMO-NLP-SG/MultiJail, juletxara/mgsm).
    train_dataset = data_args.build_dataset(tokenizer, config=training_args)  # MultiJail + benign rows, by id

    trainer = OnPolicyMSDTrainer(
        model=model,
        teacher_model=None,  # self-teacher: the initial weights (adapter disabled under PEFT)
        args=training_args,
        train_dataset=train_dataset,
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
