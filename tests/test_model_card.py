"""msd_trl.model_card: what a run's README.md says, from the facts the CLI gathers (no training needed)."""

from __future__ import annotations

from msd_trl.model_card import write_model_card


def test_model_card_states_the_run_and_the_evaluation_with_its_baseline(tmp_path):
    config = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "learning_rate": 5e-4, "seed": 1,
              "divergence": "dpsw", "teacher_preset": "english_refusal", "teacher_prompt_template": "{teacher_prompt}",
              "teacher_system_prompt": "", "max_new_tokens": 24, "temperature": 0.9}  # fmt: skip
    summary = {"global_step": 80, "train_wall_time_s": 1200.0, "train_rows": 3,
               "rows_by_source_language": {"multijail/jv": 2, "multiq/jv": 1}}  # fmt: skip
    data = {"languages": "jv", "benign_languages": "", "multiq_languages": "jv", "benign_proportion": 0.4,
            "split_seed": 0}  # fmt: skip
    after = {"judge": "keyword", "settings": {"limit": 20}, "languages": {"jv": {"n": 20, "refusal_rate": 0.55}},
             "benign_sets": {"multiq": {"jv": {"n": 20, "over_refusal_rate": 0.05}}}}  # fmt: skip
    before = {
        "languages": {"jv": {"refusal_rate": 0.05}},
        "benign_sets": {"multiq": {"jv": {"over_refusal_rate": 0.0}}},
    }
    path = write_model_card(tmp_path, base_model="HuggingFaceTB/SmolLM2-135M-Instruct", trainer="OnPolicyMSDTrainer",
                            config=config, data=data, summary=summary, evaluation=after, baseline=before)  # fmt: skip
    text = path.read_text()
    assert path == tmp_path / "README.md" and text.startswith("---\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\n")
    assert "80 optimizer steps of batch 4 x accumulation 1" in text and 'system prompt: "(none)"' in text
    assert "Teacher preset: `english_refusal`" in text and "{'multijail/jv': 2, 'multiq/jv': 1}" in text
    assert (
        "| refusal, harmful | jv | 20 | 55% | 5% |" in text and "| over-refusal, multiq | jv | 20 | 5% | 0% |" in text
    )
    assert "## Citation" in text and "2605.02971" in text
    assert "## Choosing a checkpoint" in text and "benign_greedy" in text  # the monitor-selected checkpoint
    assert "msd-trl select-checkpoint" in text
    (tmp_path / "b").mkdir()
    no_eval = write_model_card(tmp_path / "b", base_model="m", trainer="T", config=config, data=data, summary=summary)
    assert "## Evaluation" not in no_eval.read_text()


def test_model_card_names_the_hub_model_of_the_embedded_default():
    from msd_trl.model_card import EMBEDDED_HUB_ID, hub_id_of
    from msd_trl.models import EMBEDDED_MODEL

    assert hub_id_of(None) == hub_id_of(EMBEDDED_MODEL) == EMBEDDED_HUB_ID == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_id_of("Qwen/Qwen2.5-7B-Instruct") == "Qwen/Qwen2.5-7B-Instruct"
