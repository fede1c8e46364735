"""Trainer behaviour on tiny models built in the test: real (short) training runs, GKD parity, edge cases."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from conftest import make_model
from datasets import Dataset
from peft import LoraConfig

from msd_trl import Divergence, MSDConfig, OffPolicyMSDTrainer, OnPolicyMSDTrainer, generate_teacher_completions
from msd_trl.rendering import MSDDataCollator


def make_args(tmp_path, **overrides) -> MSDConfig:
    values = dict(
        output_dir=str(tmp_path / "out"),
        report_to="none",
        per_device_train_batch_size=2,
        max_steps=2,
        max_new_tokens=6,
        learning_rate=5e-2,
        logging_steps=1,
        save_strategy="no",
        seed=0,
        dataloader_drop_last=False,
    )
    values.update(overrides)
    return MSDConfig(**values)


def lora() -> LoraConfig:
    return LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0)


def with_completions(dataset: Dataset, texts=None) -> Dataset:
    texts = texts or ["I cannot help with that. I'm sorry.", "Sure, 12 plus 7 is 19."]
    return dataset.add_column("teacher_completion", [texts[i % len(texts)] for i in range(len(dataset))])


def base_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" not in k}


# ------------------------------------------------------------------ real training runs


@pytest.mark.parametrize("trainer_cls", [OnPolicyMSDTrainer, OffPolicyMSDTrainer])
def test_short_training_run_changes_adapter_not_base_nor_teacher(trainer_cls, tmp_path, tiny_tokenizer, msd_rows):
    dataset = msd_rows if trainer_cls is OnPolicyMSDTrainer else with_completions(msd_rows)
    trainer = trainer_cls(
        model=make_model(tiny_tokenizer),
        args=make_args(tmp_path, max_steps=3),
        train_dataset=dataset,
        processing_class=tiny_tokenizer,
        peft_config=lora(),
    )
    batch = trainer.prepare_batch(trainer.model, trainer._prepare_inputs(trainer.data_collator([dataset[0]] * 2)))
    teacher_before = trainer.teacher_logits(batch, batch["completion_ids"].size(1)).clone()
    base_before = base_state(trainer.model)
    lora_before = {k: v.clone() for k, v in trainer.model.state_dict().items() if "lora_B" in k}

    trainer.train()

    lora_after = {k: v for k, v in trainer.model.state_dict().items() if "lora_B" in k}
    assert any(not torch.equal(lora_before[k], lora_after[k]) for k in lora_before), "the adapter did not train"
    for key, value in base_state(trainer.model).items():
        assert torch.equal(value, base_before[key]), f"base weight {key} changed"
    teacher_after = trainer.teacher_logits(batch, batch["completion_ids"].size(1))
    torch.testing.assert_close(teacher_after, teacher_before)

    logged = {k for entry in trainer.state.log_history for k in entry}
    for key in (
        "msd/loss",
        "msd/divergence",
        "msd/dpsw_weight_mean",
        "msd/dpsw_weight_max",
        "msd/teacher_student_top1_agreement",
        "completions/mean_length",
        "completions/clipped_ratio",
    ):
        assert key in logged, key
    losses = [e["msd/loss"] for e in trainer.state.log_history if "msd/loss" in e]
    assert all(torch.isfinite(torch.tensor(losses))) and max(losses) > 0


class _NaNDivergence(Divergence):
    """A divergence whose loss is NaN: stands in for a model whose logits overflowed."""

    name = "nan"

    def per_token(self, student_logits, teacher_logits, completion_ids):
        return student_logits.sum(-1) * float("nan")


def test_a_non_finite_loss_stops_training_before_any_step(tmp_path, tiny_tokenizer, msd_rows):
    trainer = OffPolicyMSDTrainer(
        model=make_model(tiny_tokenizer),
        args=make_args(tmp_path, divergence=_NaNDivergence()),
        train_dataset=with_completions(msd_rows),
        processing_class=tiny_tokenizer,
        peft_config=lora(),
    )
    lora_before = {k: v.clone() for k, v in trainer.model.state_dict().items() if "lora_" in k}
    with pytest.raises(FloatingPointError, match="MSD loss is nan at global step 0"):
        trainer.train()
    for key, value in trainer.model.state_dict().items():
        if "lora_" in key:
            assert torch.equal(value, lora_before[key]) and torch.isfinite(value).all()


def test_self_teacher_without_peft_is_a_frozen_copy(tmp_path, tiny_tokenizer, msd_rows, caplog):
    with caplog.at_level(logging.WARNING, logger="msd_trl.trainer"):
        trainer = OnPolicyMSDTrainer(
            model=make_model(tiny_tokenizer),
            args=make_args(tmp_path),
            train_dataset=msd_rows,
            processing_class=tiny_tokenizer,
        )
    assert "frozen copy" in caplog.text and "MiB" in caplog.text
    teacher = trainer.accelerator.unwrap_model(trainer.teacher_model)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(v, student_before[k]) for k, v in trainer.model.state_dict().items())
    assert all(not p.requires_grad for p in teacher.parameters())


# ------------------------------------------------------------------ GKD drop-in


def gkd_messages_dataset() -> Dataset:
    return Dataset.from_list(
        [
            {
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ]
            }
            for question, answer in [
                ("What is 12 plus 7?", "It is 19."),
                ("How do I make a cake?", "Mix flour, eggs and sugar, then bake it."),
                ("Keki?", "Sure."),
                ("Pira 12 tambah 7?", "19, step by step: 12 + 7 = 19."),
            ]
        ]
    )


def gkd_user_script(trainer_cls, config_cls, tmp_path, tokenizer, **extra_config):
    """A GKD user's script, as TRL documents it: messages dataset, separate teacher, GKDConfig."""
    student = make_model(tokenizer, seed=0)
    teacher = make_model(tokenizer, seed=1)
    training_args = config_cls(
        output_dir=str(tmp_path / trainer_cls.__name__),
        per_device_train_batch_size=2,
        max_steps=2,
        max_new_tokens=6,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        bf16=False,
        **extra_config,
    )
    trainer = trainer_cls(
        model=student,
        teacher_model=teacher,
        args=training_args,
        processing_class=tokenizer,
        train_dataset=gkd_messages_dataset(),
    )
    trainer.train()
    return trainer


def test_gkd_user_script_runs_unchanged_after_swapping_the_class(tmp_path, tiny_tokenizer):
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    gkd = gkd_user_script(GKDTrainer, GKDConfig, tmp_path, tiny_tokenizer, lmbda=0.5)
    msd = gkd_user_script(OnPolicyMSDTrainer, GKDConfig, tmp_path, tiny_tokenizer, lmbda=0.5)
    assert gkd.state.global_step == msd.state.global_step == 2
    assert msd.args.divergence == "jsd"  # a GKDConfig keeps GKD's objective
    assert msd.self_teacher is False


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_jsd_loss_equals_gkd_on_the_same_batch(tmp_path, tiny_tokenizer, beta):
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    student, teacher = make_model(tiny_tokenizer, seed=0), make_model(tiny_tokenizer, seed=1)
    common = dict(report_to="none", bf16=False, per_device_train_batch_size=4, beta=beta, lmbda=0.0)
    gkd = GKDTrainer(
        model=copy.deepcopy(student),
        teacher_model=copy.deepcopy(teacher),
        args=GKDConfig(output_dir=str(tmp_path / "gkd"), **common),
        processing_class=tiny_tokenizer,
        train_dataset=gkd_messages_dataset(),
    )
    msd = OnPolicyMSDTrainer(
        model=copy.deepcopy(student),
        teacher_model=copy.deepcopy(teacher),
        # GKD's teacher: no privileged context (the default "paper" preset adds a safety system prompt).
        args=MSDConfig(output_dir=str(tmp_path / "msd"), divergence="jsd", teacher_preset="translation", **common),
        processing_class=tiny_tokenizer,
        train_dataset=gkd_messages_dataset(),
    )
    rows = list(gkd_messages_dataset())
    batch = msd.prepare_batch(msd.model, msd.data_collator(rows))
    # Same batch for GKD: the full sequence, labels only on the completion tokens.
    prompt_len = batch["input_ids"].size(1) - batch["completion_ids"].size(1)
    labels = batch["input_ids"].clone()
    labels[:, :prompt_len] = -100
    labels[:, prompt_len:][batch["completion_mask"] == 0] = -100
    gkd_inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}
    with torch.no_grad():
        gkd_loss = gkd.compute_loss(gkd.model, gkd_inputs)
        msd_loss = msd.compute_loss(msd.model, batch)
    torch.testing.assert_close(msd_loss, gkd_loss, rtol=1e-5, atol=1e-7)
    assert msd_loss > 0
    # Our completion tokens are GKD's label tokens up to the end-of-turn token.
    gkd_batch = gkd.data_collator(rows)
    for row in range(len(rows)):
        ours = batch["completion_ids"][row][batch["completion_mask"][row].bool()].tolist()
        theirs = gkd_batch["input_ids"][row][gkd_batch["labels"][row] != -100].tolist()
        assert theirs[: len(ours)] == ours


def test_vocabulary_mismatch_is_a_clear_error(tmp_path, tiny_tokenizer, msd_rows):
    teacher = make_model(tiny_tokenizer)
    teacher.resize_token_embeddings(len(tiny_tokenizer) + 8)
    with pytest.raises(ValueError, match="vocab_size"):
        OnPolicyMSDTrainer(
            model=make_model(tiny_tokenizer),
            teacher_model=teacher,
            args=make_args(tmp_path),
            train_dataset=msd_rows,
            processing_class=tiny_tokenizer,
        )


# ------------------------------------------------------------------ completions and masks


def test_every_completion_token_counted_with_variable_prompt_lengths(tmp_path, tiny_tokenizer, msd_rows):
    dataset = with_completions(msd_rows, ["No.", "I cannot help with that request, I'm sorry. Samahani."])
    trainer = OffPolicyMSDTrainer(
        model=make_model(tiny_tokenizer),
        args=make_args(tmp_path, per_device_train_batch_size=6),
        train_dataset=dataset,
        processing_class=tiny_tokenizer,
        peft_config=lora(),
    )
    collated = trainer.data_collator(list(dataset))
    assert len(set(collated["prompt_mask"].sum(1).tolist())) > 1
    assert collated["teacher_prompt_ids"].size(1) != collated["prompt_ids"].size(1)
    batch = trainer.prepare_batch(trainer.model, collated)
    expected = [
        len(trainer.data_collator([row])["fixed_completion_ids"][0]) for row in dataset
    ]  # each row collated alone: no padding
    assert batch["completion_mask"].sum(1).tolist() == expected
    # The completion is the last columns of both sequences, token for token.
    lc = batch["completion_ids"].size(1)
    assert torch.equal(batch["input_ids"][:, -lc:], batch["teacher_input_ids"][:, -lc:])
    loss = trainer.compute_loss(trainer.model, batch)
    assert trainer._metrics["train"]["msd/loss"] and torch.isfinite(loss)


def test_completion_stops_at_the_first_of_several_stop_ids(tmp_path, tiny_tokenizer, msd_rows):
    model = make_model(tiny_tokenizer)
    other_stop = tiny_tokenizer.convert_tokens_to_ids("<|im_start|>")
    model.generation_config.eos_token_id = [tiny_tokenizer.eos_token_id, other_stop]
    trainer = OnPolicyMSDTrainer(
        model=model, args=make_args(tmp_path), train_dataset=msd_rows, processing_class=tiny_tokenizer
    )
    assert set(trainer.stop_ids) == {tiny_tokenizer.eos_token_id, other_stop}
    eos, pad = tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id
    ids = torch.tensor([[5, other_stop, 7, eos], [5, 6, eos, pad], [5, 6, 7, 8]])
    assert trainer.completion_mask_from_ids(ids).tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    # Generation itself stops on either id.
    assert set(trainer.generation_config.eos_token_id) == {eos, other_stop}


def test_pad_equal_to_eos_keeps_the_real_eos_label(tmp_path, msd_rows):
    from conftest import make_tokenizer

    tokenizer = make_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    trainer = OffPolicyMSDTrainer(
        model=make_model(tokenizer),
        args=make_args(tmp_path, per_device_train_batch_size=2),
        train_dataset=with_completions(msd_rows, ["No.", "I cannot help with that request."]),
        processing_class=tokenizer,
    )
    eos = tokenizer.eos_token_id
    assert trainer.completion_mask_from_ids(torch.tensor([[5, eos, eos, eos]])).tolist() == [[1, 1, 0, 0]]
    batch = trainer.prepare_batch(trainer.model, trainer.data_collator(list(trainer.train_dataset)[:2]))
    for ids, mask in zip(batch["completion_ids"], batch["completion_mask"]):
        kept = ids[mask.bool()].tolist()
        assert kept[-1] == eos and kept.count(eos) == 1


def test_gradient_accumulation_4x1_equals_1x4(tmp_path, tiny_tokenizer, msd_rows):
    dataset = with_completions(msd_rows.select(range(4)), ["No.", "I cannot help with that request, sorry."])
    final = {}
    for name, (batch_size, accumulation) in {"1x4": (4, 1), "4x1": (1, 4)}.items():
        trainer = OffPolicyMSDTrainer(
            model=make_model(tiny_tokenizer),
            args=make_args(
                tmp_path / name,
                per_device_train_batch_size=batch_size,
                gradient_accumulation_steps=accumulation,
                max_steps=1,
                optim="sgd",
                learning_rate=1.0,
                lr_scheduler_type="constant",
                max_grad_norm=0.0,
                divergence="dpsw",
                dpsw_normalize=False,
            ),
            train_dataset=dataset,
            processing_class=tiny_tokenizer,
            peft_config=lora(),
        )
        trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(dataset)
        trainer.train()
        final[name] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items() if "lora_" in k}
        assert trainer.state.global_step == 1
    changed = [k for k in final["1x4"] if "lora_B" in k and final["1x4"][k].abs().sum() > 0]
    assert changed
    for key in final["1x4"]:
        torch.testing.assert_close(final["4x1"][key], final["1x4"][key], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ QLoRA, resume, evaluation


def test_qlora_4bit_self_teacher_trains(tmp_path, tiny_tokenizer, msd_rows):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    path = tmp_path / "tiny64"
    make_model(tiny_tokenizer, hidden_size=64).save_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(
        path,
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        ),
    )
    trainer = OnPolicyMSDTrainer(
        model=model,
        args=make_args(tmp_path),
        train_dataset=msd_rows,
        processing_class=tiny_tokenizer,
        peft_config=lora(),
    )
    import bitsandbytes as bnb

    assert any(isinstance(m, bnb.nn.Linear4bit) for m in trainer.model.modules())
    assert trainer.teacher_model is None  # adapter-disabled base: no second copy
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items() if "lora_B" in k}
    trainer.train()
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_save_resume_and_evaluate(tmp_path, tiny_tokenizer, msd_rows):
    args = make_args(tmp_path, max_steps=4, save_strategy="steps", save_steps=2, eval_strategy="no")
    trainer = OnPolicyMSDTrainer(
        model=make_model(tiny_tokenizer),
        args=args,
        train_dataset=msd_rows,
        eval_dataset=msd_rows.select(range(2)),
        processing_class=tiny_tokenizer,
        peft_config=lora(),
    )
    trainer.train()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert (checkpoint / "adapter_model.safetensors").exists()
    resumed = OnPolicyMSDTrainer(
        model=make_model(tiny_tokenizer),
        args=args,
        train_dataset=msd_rows,
        processing_class=tiny_tokenizer,
        peft_config=lora(),
    )
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 4
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and metrics["eval_loss"] >= 0
    assert "eval_msd/divergence" in metrics


# ------------------------------------------------------------------ bad input


def test_missing_prompt_column(tmp_path, tiny_tokenizer):
    with pytest.raises(ValueError, match="'prompt'"):
        OnPolicyMSDTrainer(
            model=make_model(tiny_tokenizer),
            args=make_args(tmp_path),
            train_dataset=Dataset.from_list([{"text": "hi"}]),
            processing_class=tiny_tokenizer,
        )


def test_missing_teacher_completion_column(tmp_path, tiny_tokenizer, msd_rows):
    with pytest.raises(ValueError, match="teacher_completion.*generate_teacher_completions"):
        OffPolicyMSDTrainer(
            model=make_model(tiny_tokenizer),
            args=make_args(tmp_path),
            train_dataset=msd_rows,
            processing_class=tiny_tokenizer,
        )


# ------------------------------------------------------------------ teacher text


def test_generate_teacher_completions_batched_and_resumable(tmp_path, tiny_tokenizer, msd_rows):
    model = make_model(tiny_tokenizer)
    output = tmp_path / "teacher.jsonl"
    kwargs = dict(args=make_args(tmp_path, max_new_tokens=5), batch_size=4, output_path=output, progress=False)
    first = generate_teacher_completions(model, msd_rows, tiny_tokenizer, **kwargs)
    assert first.column_names[-1] == "teacher_completion" and len(first) == len(msd_rows)
    assert len(output.read_text().splitlines()) == 1 + len(msd_rows)  # the fingerprint header, then one per row

    # Resume: drop the last two records and a partial line; only those rows are generated again.
    lines = output.read_text().splitlines()
    output.write_text("\n".join(lines[:-2]) + '\n{"index": 9')
    calls = []
    original = model.generate

    def counting_generate(*args, **kw):
        calls.append(kw["input_ids"].size(0))
        return original(*args, **kw)

    model.generate = counting_generate
    second = generate_teacher_completions(model, msd_rows, tiny_tokenizer, **kwargs)
    assert sum(calls) == 2
    kept = {int(__import__("json").loads(line)["index"]) for line in lines[1:-2]}
    for i in kept:
        assert second[i]["teacher_completion"] == first[i]["teacher_completion"]
    # The partial line was cut off before appending, so every line is a complete record and a further resume
    # generates nothing (before the repair the new record was glued to the partial line and lost on every resume).
    assert all(__import__("json").loads(line) for line in output.read_text().splitlines())
    calls.clear()
    generate_teacher_completions(model, msd_rows, tiny_tokenizer, **kwargs)
    assert calls == []
    # A cache made for other rows is refused, not silently paired with the wrong prompts.
    with pytest.raises(ValueError, match="made for other data"):
        generate_teacher_completions(model, msd_rows.select([1, 0, 2, 3, 4, 5]), tiny_tokenizer, **kwargs)
    # Without id/language columns the prompt hash still tells reordered rows apart (before: 6 of 6 mispaired).
    bare = msd_rows.remove_columns(["id", "language"])
    bare_kwargs = {**kwargs, "output_path": tmp_path / "bare.jsonl"}
    generate_teacher_completions(model, bare, tiny_tokenizer, **bare_kwargs)
    with pytest.raises(ValueError, match="another row order"):
        generate_teacher_completions(model, bare.select([5, 4, 3, 2, 1, 0]), tiny_tokenizer, **bare_kwargs)
    # Another teacher setting is refused with what differs.
    with pytest.raises(
        ValueError, match=r"another teacher setting: system_prompt: cached 'You are .*', now 'Be safe.'"
    ):
        generate_teacher_completions(model, msd_rows, tiny_tokenizer, **kwargs, teacher_system_prompt="Be safe.")
    with pytest.raises(ValueError, match=r"temperature: cached 0.9, now 0.5"):
        generate_teacher_completions(model, msd_rows, tiny_tokenizer, **kwargs, temperature=0.5)
    # A file from before fingerprints cannot be checked: refused.
    legacy = tmp_path / "legacy.jsonl"
    legacy.write_text('{"index": 0, "id": "q1", "language": "jv", "teacher_completion": "x"}\n')
    with pytest.raises(ValueError, match="no teacher fingerprint"):
        generate_teacher_completions(model, msd_rows, tiny_tokenizer, **{**kwargs, "output_path": legacy})
    # The result trains off-policy as is.
    trainer = OffPolicyMSDTrainer(
        model=make_model(tiny_tokenizer),
        args=make_args(tmp_path, max_steps=1),
        train_dataset=second,
        processing_class=tiny_tokenizer,
    )
    trainer.train()
    assert trainer.state.global_step == 1


# ------------------------------------------------------------------ off-policy teacher cache


def cached_trainer(tmp_path, tokenizer, dataset, **config):
    return OffPolicyMSDTrainer(
        model=make_model(tokenizer),
        args=make_args(tmp_path, per_device_train_batch_size=6, **config),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora(),
    )


@pytest.mark.parametrize("divergence", ["reverse_kl", "dpsw", "jsd"])
def test_teacher_cache_with_k_equal_v_gives_the_exact_loss(tmp_path, tiny_tokenizer, msd_rows, divergence):
    dataset = with_completions(msd_rows, ["No.", "I cannot help with that request, I'm sorry."])
    exact = cached_trainer(tmp_path / "exact", tiny_tokenizer, dataset, divergence=divergence)
    vocab = exact.model.config.vocab_size
    cached = cached_trainer(
        tmp_path / "cached", tiny_tokenizer, dataset, divergence=divergence, teacher_cache_top_k=vocab
    )
    assert "teacher_topk_ids" in cached.train_dataset.column_names
    rows = list(cached.train_dataset)
    with torch.no_grad():
        exact_loss = exact.compute_loss(exact.model, exact.data_collator(list(dataset)))
        cached_loss = cached.compute_loss(cached.model, cached.data_collator(rows))
    torch.testing.assert_close(cached_loss, exact_loss, rtol=1e-5, atol=1e-6)


def test_teacher_cache_top_k_keeps_dpsw_weights_exact_and_skips_the_teacher_forward(
    tmp_path, tiny_tokenizer, msd_rows
):
    dataset = with_completions(msd_rows, ["No.", "I cannot help with that request, I'm sorry."])
    trainer = cached_trainer(
        tmp_path, tiny_tokenizer, dataset, divergence="dpsw", dpsw_top_k=5, teacher_cache_top_k=8, max_steps=1
    )
    rows = list(trainer.train_dataset)
    assert all(len(r["teacher_topk_ids"][0]) == 8 for r in rows)
    cached_batch = trainer.prepare_batch(trainer.model, trainer.data_collator(rows))
    plain_batch = {k: v for k, v in cached_batch.items() if not k.startswith("teacher_topk")}
    lc, vocab = cached_batch["completion_ids"].size(1), trainer.model.config.vocab_size
    with torch.no_grad():
        exact_teacher = trainer.teacher_logits(plain_batch, lc)
        approx_teacher = trainer.teacher_logits(cached_batch, lc, vocab)
        student = trainer._completion_logits(
            trainer.model, cached_batch["input_ids"], cached_batch["attention_mask"], lc
        )
    mask = cached_batch["completion_mask"]
    args = (cached_batch["completion_ids"], mask)
    exact_w = trainer.divergence.token_weights(student, exact_teacher, *args)
    approx_w = trainer.divergence.token_weights(student, approx_teacher, *args)
    torch.testing.assert_close(approx_w[mask.bool()], exact_w[mask.bool()], rtol=1e-4, atol=1e-5)
    assert torch.equal(approx_teacher.argmax(-1)[mask.bool()], exact_teacher.argmax(-1)[mask.bool()])

    calls = []
    original = trainer._completion_logits
    trainer._completion_logits = lambda model, ids, *a: calls.append(ids) or original(model, ids, *a)
    trainer.train()
    assert trainer.state.global_step == 1 and len(calls) == 1  # the student only: no teacher forward


def test_stale_teacher_cache_is_an_error(tmp_path, tiny_tokenizer, msd_rows):
    dataset = with_completions(msd_rows, ["No."])
    trainer = cached_trainer(tmp_path, tiny_tokenizer, dataset, divergence="reverse_kl", teacher_cache_top_k=4)
    stale = trainer.train_dataset.remove_columns("teacher_completion").add_column(
        "teacher_completion", ["A much longer answer than before, sorry."] * len(dataset)
    )
    with pytest.raises(ValueError, match="computed on another teacher_completion"):
        trainer.data_collator(list(stale)[:2])
    # A text of the same token count is caught too (the row key holds the completion ids' digest, not the length).
    same_length = trainer.train_dataset.remove_columns("teacher_completion").add_column(
        "teacher_completion", ["Na."] * len(dataset)
    )
    with pytest.raises(ValueError, match="computed on another teacher_completion"):
        trainer.data_collator(list(same_length)[:2])


def test_cached_topk_columns_are_used_only_by_the_teacher_that_made_them(tmp_path, tiny_tokenizer, msd_rows):
    dataset = with_completions(msd_rows, ["No."])
    cached = cached_trainer(tmp_path / "a", tiny_tokenizer, dataset, divergence="reverse_kl",
                            teacher_cache_top_k=4).train_dataset  # fmt: skip
    assert "teacher_topk_fingerprint" in cached.column_names
    # The same setting reuses the cache (no new scoring).
    again = cached_trainer(tmp_path / "b", tiny_tokenizer, cached, divergence="reverse_kl", teacher_cache_top_k=4)
    assert again.train_dataset is cached
    # Before: each of these silently trained on the cached scores.
    with pytest.raises(ValueError, match="teacher_cache_top_k=None"):
        cached_trainer(tmp_path / "c", tiny_tokenizer, cached, divergence="reverse_kl")
    with pytest.raises(ValueError, match=r"another setting: top_k: cached 4, now 6"):
        cached_trainer(tmp_path / "d", tiny_tokenizer, cached, divergence="reverse_kl", teacher_cache_top_k=6)
    with pytest.raises(ValueError, match=r"system_prompt: cached .*, now 'Be safe.'"):
        cached_trainer(tmp_path / "e", tiny_tokenizer, cached, divergence="reverse_kl", teacher_cache_top_k=4,
                       teacher_system_prompt="Be safe.")  # fmt: skip
    # Another teacher (a separate one with other weights) is told apart by its weight digest.
    with pytest.raises(ValueError, match=r"another setting: teacher_weights: cached '[0-9a-f]+', now '[0-9a-f]+'"):
        OffPolicyMSDTrainer(
            model=make_model(tiny_tokenizer),
            teacher_model=make_model(tiny_tokenizer, seed=1),
            args=make_args(tmp_path / "f", divergence="reverse_kl", teacher_cache_top_k=4),
            train_dataset=cached,
            processing_class=tiny_tokenizer,
        )


def test_msd_metrics_reach_tensorboard(tmp_path, tiny_tokenizer, msd_rows):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = OnPolicyMSDTrainer(
        model=make_model(tiny_tokenizer),
        args=make_args(tmp_path, report_to="tensorboard", max_steps=2),
        train_dataset=msd_rows,
        processing_class=tiny_tokenizer,
        peft_config=lora(),
    )
    trainer.train()
    event_files = list(tmp_path.rglob("events.out.tfevents.*"))
    assert event_files
    tags = set()
    for path in event_files:
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    for tag in ("train/msd/loss", "train/msd/dpsw_weight_mean", "train/completions/mean_length"):
        assert tag in tags, sorted(tags)


def test_dpsw_weight_metrics_only_for_dpsw(tmp_path, tiny_tokenizer, msd_rows):
    trainer = OffPolicyMSDTrainer(
        model=make_model(tiny_tokenizer),
        args=make_args(tmp_path, divergence="reverse_kl", max_steps=1),
        train_dataset=with_completions(msd_rows),
        processing_class=tiny_tokenizer,
        peft_config=lora(),
    )
    trainer.train()
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert "msd/loss" in logged and not any(k.startswith("msd/dpsw_") for k in logged)


def test_teacher_text_in_another_column_trains_with_a_matching_collator(tmp_path, tiny_tokenizer, msd_rows):
    # Before: the trainer's column check hard-coded "teacher_completion", so generate_teacher_completions(column=...)
    # could not be trained on.
    rows = msd_rows.add_column("teacher_text", ["No."] * len(msd_rows))
    trainer = OffPolicyMSDTrainer(
        model=make_model(tiny_tokenizer),
        args=make_args(tmp_path, max_steps=1),
        data_collator=MSDDataCollator(
            tiny_tokenizer, completion_column="teacher_text", teacher_prompt_template="{teacher_prompt}"
        ),  # fmt: skip
        train_dataset=rows,
        processing_class=tiny_tokenizer,
        peft_config=lora(),
    )
    trainer.train()
    assert trainer.state.global_step == 1
    with pytest.raises(ValueError, match="no 'teacher_completion' column"):
        OffPolicyMSDTrainer(model=make_model(tiny_tokenizer), args=make_args(tmp_path), train_dataset=rows,
                            processing_class=tiny_tokenizer)  # fmt: skip


# ------------------------------------------------------------------ variants


def test_a_trainer_variant_is_one_hook_and_one_registration(tmp_path, tiny_tokenizer, msd_rows):
    from msd_trl import MSDTrainer, register_trainer
    from msd_trl.trainer import TRAINERS

    seen = []

    @register_trainer("alternate-test")
    class Alternate(MSDTrainer):
        """Samples the student on odd micro-batches, scores the fixed text on even ones."""

        def use_fixed_completion(self, inputs):
            seen.append("fixed_completion_ids" in inputs)
            return len(seen) % 2 == 0

    try:
        assert TRAINERS["alternate-test"] is Alternate and "Args:" in Alternate.__doc__ + MSDTrainer.__doc__
        trainer = Alternate(
            model=make_model(tiny_tokenizer),
            args=make_args(tmp_path, max_steps=2),
            train_dataset=with_completions(msd_rows),
            processing_class=tiny_tokenizer,
            peft_config=lora(),
        )
        trainer.train()
        ratios = [
            e["completions/on_policy_ratio"] for e in trainer.state.log_history if "completions/on_policy_ratio" in e
        ]
        assert seen == [True, True] and ratios == [1.0, 0.0]
    finally:
        TRAINERS.pop("alternate-test", None)
    with pytest.raises(ValueError, match="needs an MSDTrainer subclass"):
        register_trainer("not-a-trainer")(dict)
    with pytest.raises(NotImplementedError, match="MSDTrainer must implement use_fixed_completion"):
        MSDTrainer(model=make_model(tiny_tokenizer), args=make_args(tmp_path, max_steps=1), train_dataset=msd_rows,
                   processing_class=tiny_tokenizer).train()  # fmt: skip


# ------------------------------------------------------------------ rollouts per optimizer step


def test_on_policy_accumulation_4x1_equals_1x4_with_one_generate_call_per_step(tmp_path, tiny_tokenizer, msd_rows):
    dataset = msd_rows.select(range(4))
    final, calls = {}, {}
    for name, (batch_size, accumulation) in {"1x4": (4, 1), "4x1": (1, 4)}.items():
        trainer = OnPolicyMSDTrainer(
            model=make_model(tiny_tokenizer),
            args=make_args(tmp_path / name, per_device_train_batch_size=batch_size,
                           gradient_accumulation_steps=accumulation, max_steps=1, optim="sgd", learning_rate=1.0,
                           lr_scheduler_type="constant", max_grad_norm=0.0, dpsw_normalize=False),
            train_dataset=dataset,
            processing_class=tiny_tokenizer,
            peft_config=lora(),
        )  # fmt: skip
        trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(dataset)
        original, calls[name] = trainer.generate_completions, []

        def counting(model, ids, mask, original=original, name=name):
            calls[name].append(ids.size(0))
            return original(model, ids, mask)

        trainer.generate_completions = counting
        trainer.train()
        final[name] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items() if "lora_" in k}
    # One generate call for the whole optimizer step in both shapes: the same prompts, padding and draws, so the
    # same rollouts and the same update (before, 4x1 sampled four times, one row each).
    assert calls == {"1x4": [4], "4x1": [4]}
    assert any(final["1x4"][k].abs().sum() > 0 for k in final["1x4"] if "lora_B" in k)
    for key in final["1x4"]:
        torch.testing.assert_close(final["4x1"][key], final["1x4"][key], rtol=1e-4, atol=1e-6)


def test_rollout_batch_size_chunks_by_length_and_keeps_each_row_with_its_completion(
    tmp_path, tiny_tokenizer, msd_rows
):
    trainer = OnPolicyMSDTrainer(
        model=make_model(tiny_tokenizer),
        args=make_args(tmp_path, per_device_train_batch_size=2, rollout_batch_size=2),
        train_dataset=msd_rows,
        processing_class=tiny_tokenizer,
        peft_config=lora(),
    )
    eos = trainer.stop_ids[0]
    calls = []

    def echo_last_prompt_token(model, ids, mask):  # a deterministic "rollout" that names its row
        calls.append(mask.sum(1).tolist())
        return torch.stack([ids[:, -1], ids[:, -1], torch.full_like(ids[:, -1], eos)], 1), torch.ones(
            ids.size(0), 3, dtype=torch.long
        )

    trainer.generate_completions = echo_last_prompt_token
    batches = [trainer.data_collator([msd_rows[i], msd_rows[j]]) for i, j in ((0, 1), (2, 3), (4, 5))]
    scored = trainer.prepare_batches(trainer.model, batches)
    assert len(calls) == 3 and all(len(c) == 2 for c in calls)
    lengths = [n for c in calls for n in c]
    assert lengths == sorted(lengths)  # grouped by prompt length
    for inputs, batch in zip(batches, scored):
        last = inputs["prompt_ids"][:, -1]
        assert batch["completion_ids"][:, 0].tolist() == last.tolist()  # every row got its own completion back
        assert torch.equal(batch["input_ids"][:, : inputs["prompt_ids"].size(1)], inputs["prompt_ids"])
    with pytest.raises(ValueError, match="rollout_batch_size=0 is invalid"):
        make_args(tmp_path, rollout_batch_size=0)


# ------------------------------------------------------------------ large-vocabulary loss


@pytest.mark.parametrize("trainer_name", ["on-policy", "off-policy-cached", "separate-teacher"])
def test_chunked_loss_trains_like_the_plain_loss(tmp_path, tiny_tokenizer, msd_rows, trainer_name):
    final, losses = {}, {}
    for chunk in (None, 2):
        extra = {"teacher_cache_top_k": 400} if trainer_name == "off-policy-cached" else {}  # K >= V (320): exact
        args = make_args(tmp_path / str(chunk), max_steps=2, optim="sgd", learning_rate=0.5, loss_chunk_size=chunk,
                         lr_scheduler_type="constant", **extra)  # fmt: skip
        kwargs = dict(model=make_model(tiny_tokenizer), args=args, processing_class=tiny_tokenizer, peft_config=lora())
        if trainer_name == "off-policy-cached":
            trainer = OffPolicyMSDTrainer(train_dataset=with_completions(msd_rows), **kwargs)
        else:
            teacher = make_model(tiny_tokenizer, seed=1) if trainer_name == "separate-teacher" else None
            trainer = OnPolicyMSDTrainer(train_dataset=msd_rows, teacher_model=teacher, **kwargs)
        if chunk is not None:  # the chunked path never asks for full [B, T, V] logits
            trainer._completion_logits = lambda *a, **k: pytest.fail("the chunked loss materialised full logits")
        trainer.train()
        losses[chunk] = [e["msd/loss"] for e in trainer.state.log_history if "msd/loss" in e]
        final[chunk] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items() if "lora_" in k}
    assert losses[None] == pytest.approx(losses[2], rel=1e-4, abs=1e-6)
    for key in final[None]:
        torch.testing.assert_close(final[2][key], final[None][key], rtol=1e-4, atol=1e-5)


def test_chunked_loss_refuses_a_model_whose_logits_are_not_its_head_output(tmp_path, tiny_tokenizer, msd_rows):
    model = make_model(tiny_tokenizer)
    original = model.forward

    def soft_capped(*args, **kwargs):  # as Gemma 2 does after its head
        output = original(*args, **kwargs)
        output.logits = 30.0 * torch.tanh(output.logits / 30.0)
        return output

    model.forward = soft_capped
    with pytest.raises(ValueError, match="loss_chunk_size=4: .*not its output head applied"):
        OnPolicyMSDTrainer(model=model, args=make_args(tmp_path, loss_chunk_size=4), train_dataset=msd_rows,
                           processing_class=tiny_tokenizer)  # fmt: skip
    with pytest.raises(ValueError, match="loss_chunk_size=0 is invalid"):
        make_args(tmp_path, loss_chunk_size=0)


def test_a_context_per_row_kind_trains_and_generates_teacher_text_under_it(tmp_path, tiny_tokenizer, msd_rows):
    """MSDConfig.benign_teacher_preset reaches the collator (benign rows rendered under the paper context), the
    teacher-text cache (its fingerprint names it) and a real on-policy run."""
    rows = msd_rows.add_column("harmful", [i % 2 == 0 for i in range(len(msd_rows))])
    args = make_args(tmp_path, teacher_preset="english_refusal", benign_teacher_preset="paper", max_steps=1)
    trainer = OnPolicyMSDTrainer(
        model=make_model(tiny_tokenizer), args=args, train_dataset=rows, processing_class=tiny_tokenizer,
        peft_config=lora(),
    )  # fmt: skip
    batch = trainer.data_collator([rows[0], rows[1]])
    teacher = [tiny_tokenizer.decode(ids[m.bool()]) for ids, m in zip(batch["teacher_prompt_ids"],
                                                                       batch["teacher_prompt_mask"])]  # fmt: skip
    assert "I'm sorry, but I can't help" in teacher[0] and "Reply in" not in teacher[0]  # harmful row
    assert "Reply in" in teacher[1] and "I'm sorry, but I can't help" not in teacher[1]  # benign row
    trainer.train()
    output = tmp_path / "teacher.jsonl"
    generate_teacher_completions(
        trainer.model, rows, tiny_tokenizer, args=args, batch_size=4, output_path=output, progress=False
    )
    header = __import__("json").loads(output.read_text().splitlines()[0])["fingerprint"]
    assert "Reply in {language}" in header["benign_template"]
    with pytest.raises(ValueError, match="another teacher setting"):  # the same cache under one context is stale
        generate_teacher_completions(
            trainer.model, rows, tiny_tokenizer, args=make_args(tmp_path, teacher_preset="english_refusal"),
            batch_size=4, output_path=output, progress=False,
        )  # fmt: skip
