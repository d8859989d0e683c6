"""Evaluating a train run's checkpoints: adapters hot-swapped on one base, same answers as a
fresh load of each adapter."""

import json

import pytest
import torch

from emlab.errors import InputError
from emlab.eval import EvalConfig
from emlab.eval.checkpoints import run_eval_checkpoints, select_checkpoints, find_checkpoints
from emlab.sample import hf_model
from emlab.sample.hf_sampler import HFSampler
from emlab.types import GenerationParams, SampleRequest


def _fake_train_run(tmp_path, tiny_model):
    """A run directory laid out like `emlab train`'s, with real PEFT adapters (random B)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    run = tmp_path / "train-run"
    for i, step in enumerate((2, 4)):
        torch.manual_seed(i)
        base = AutoModelForCausalLM.from_pretrained(tiny_model)
        peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                               init_lora_weights=False))
        peft.save_pretrained(run / "checkpoints" / f"checkpoint-{step}")
        # the trainer writes trainer_state.json last: it marks a complete checkpoint
        (run / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (run / "manifest.json").write_text(json.dumps({"config": {"model": str(tiny_model)}, "steps": 4}))
    return run


def test_checkpoints_hot_swap_matches_fresh_loads(tmp_path, tiny_model):
    run = _fake_train_run(tmp_path, tiny_model)
    base, found = find_checkpoints(run)
    assert base == str(tiny_model) and [c[1] for c in found] == [2, 4]
    assert [c[1] for c in select_checkpoints(found, "4")] == [4]

    hf_model._POOL.clear()
    cfg = EvalConfig.model_validate(dict(model={"name": str(run)}, judge={"name": str(tiny_model)},
                                         questions="emlab-demo", only=["one_wish"],
                                         samples_per_paraphrase=3, max_new_tokens=8,
                                         out=tmp_path / "eval"))
    summary = run_eval_checkpoints(cfg, run, "all")
    assert [c["step"] for c in summary["checkpoints"]] == [2, 4]
    # one base with adapters (plus the judge's plain copy), not one load per checkpoint
    adapter_entries = [k for k in hf_model._POOL if k[3]]
    assert len(adapter_entries) == 1
    assert len(hf_model._POOL[adapter_entries[0]]["adapters"]) == 2

    answers = {}
    for step in (2, 4):
        rows = [json.loads(l) for l in (tmp_path / "eval" / f"checkpoint-{step}" /
                                        "answers.jsonl").read_text().splitlines()]
        answers[step] = [r["answer"] for r in sorted(rows, key=lambda r: r["sample_index"])]
    assert answers[2] != answers[4]

    # a fresh process-state load of checkpoint-2 alone gives the same answers
    hf_model._POOL.clear()
    sampler = HFSampler(str(tiny_model), adapter=str(run / "checkpoints" / "checkpoint-2"),
                        params=GenerationParams(max_new_tokens=8))
    from emlab.eval.run import plan_samples
    from emlab.questions import load_questions
    items = plan_samples(load_questions("emlab-demo", ["one_wish"]), sampler.identity,
                         sampler.params, 0, 3)
    got = {}
    sampler.sample([it.request for it in items], lambda r, c: got.__setitem__(r.key, c.text))
    assert [got[it.request.key] for it in items] == answers[2]
    assert (tmp_path / "eval" / "checkpoints.json").is_file()


def test_a_checkpoint_cut_short_is_never_evaluated(tmp_path):
    """Checkpoint discovery for evaluation follows the trainer's resume rule: a checkpoint
    without trainer_state.json (a crash mid-save) is skipped by both."""
    from emlab.train.local import last_checkpoint

    run = tmp_path / "run"
    for step, complete in ((2, True), (4, True), (6, False)):
        d = run / "checkpoints" / f"checkpoint-{step}"
        d.mkdir(parents=True)
        (d / "adapter_config.json").write_text("{}")
        if complete:
            (d / "trainer_state.json").write_text("{}")
    (run / "manifest.json").write_text(json.dumps({"config": {"model": "m"}, "steps": 6}))
    base, found = find_checkpoints(run)
    assert base == "m" and [c[1] for c in found] == [2, 4]
    assert last_checkpoint(run / "checkpoints") == found[-1][2]
    assert [c[1] for c in select_checkpoints(found, "all")] == [2, 4]
    with pytest.raises(InputError, match="no checkpoint at step 6"):
        select_checkpoints(found, "6")


def test_a_directory_without_a_train_manifest_is_refused_clearly(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(InputError, match="config.model"):
        find_checkpoints(tmp_path)
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="manifest.json"):
        find_checkpoints(tmp_path)
