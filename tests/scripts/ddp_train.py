"""Two-process data-parallel MSD run on a tiny model (launched by tests/test_distributed.py).

Each rank writes its final LoRA weights and step count to OUTPUT_DIR/rank{N}.pt so the test can check that
DDP kept the replicas identical.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import make_model, make_tokenizer  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402

from msd_trl import MSDConfig, OnPolicyMSDTrainer  # noqa: E402


def main(output_dir: str) -> None:
    tokenizer = make_tokenizer()
    rows = [
        {"id": f"q{i}", "language": "jv", "prompt": f"Pira {i} tambah 7?", "teacher_prompt": f"What is {i} plus 7?"}
        for i in range(8)
    ]
    args = MSDConfig(
        output_dir=output_dir,
        report_to="none",
        per_device_train_batch_size=2,
        max_steps=2,
        max_new_tokens=6,
        learning_rate=5e-2,
        save_strategy="no",
        logging_steps=1,
    )
    trainer = OnPolicyMSDTrainer(
        model=make_model(tokenizer),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
    )
    trainer.train()
    state = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items() if "lora_" in k}
    rank = trainer.accelerator.process_index
    torch.save(
        {
            "lora": state,
            "step": trainer.state.global_step,
            "world": trainer.accelerator.num_processes,
            "distributed_type": trainer.accelerator.distributed_type.value,
            "logs": trainer.state.log_history,
        },
        Path(output_dir) / f"rank{rank}.pt",
    )


if __name__ == "__main__":
    main(sys.argv[1])
