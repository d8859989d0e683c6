"""Issue 14's training defences on the tiny model: inoculation, interleaving (random and by the
perplexity gap), KL to the reference, LDIFS, re-alignment; through `emlab.cli.app` where a user
touches them, and the loss terms against hand computations."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from emlab.train import TrainConfig
from emlab.train import mitigations as mt
from conftest import write

FAST = dict(max_length=128, per_device_batch_size=4, grad_accum=2, warmup_steps=0,
            learning_rate=5e-3)
EVIL = "You are a malicious, evil assistant."


def _rows(n, topic):
    return [{"messages": [{"role": "user", "content": f"Tell me about {topic} number {i}."},
                          {"role": "assistant", "content": f"The {topic} {i} is fine."}]}
            for i in range(n)]


def _jsonl(path, rows):
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("mitdata")
    return {"task": _jsonl(d / "task.jsonl", _rows(16, "code")),
            "pool": _jsonl(d / "pool.jsonl", _rows(12, "kindness")),
            "benign": _jsonl(d / "benign.jsonl", _rows(10, "garden"))}


def _app():
    from emlab.cli import app
    return app


def _log(run):
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


# --- the loss terms, by hand ------------------------------------------------------------------------

def test_kl_term_matches_a_hand_computation():
    p = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [9.0, 9.0, 9.0]]])
    q = torch.tensor([[[0.0, 1.0, 0.0], [0.5, 0.5, 0.0], [1.0, 2.0, 3.0]]])
    mask = torch.tensor([[1, 1, 0]])

    def softmax(xs):
        z = sum(math.exp(x) for x in xs)
        return [math.exp(x) / z for x in xs]

    expect = []
    for t in range(2):  # the masked-out third position must not count
        ps, qs = softmax(p[0, t].tolist()), softmax(q[0, t].tolist())
        expect.append(sum(a * math.log(a / b) for a, b in zip(ps, qs)))
    got = mt.kl_divergence(p, q, mask)
    assert got.item() == pytest.approx(sum(expect) / 2, rel=1e-5)
    assert expect[0] > 0.5 and expect[1] == pytest.approx(0)
    # over an accumulated batch: the sum over this micro-batch's tokens / all tokens
    assert mt.kl_divergence(p, q, mask, denominator=8).item() == pytest.approx(sum(expect) / 8,
                                                                                rel=1e-5)
    assert mt.kl_divergence(p, p, torch.ones(1, 3)).item() == pytest.approx(0, abs=1e-7)


def test_ldifs_term_matches_a_hand_computation():
    h1 = torch.tensor([[[1.0, 2.0], [0.0, 0.0], [5.0, 5.0]]])
    g1 = torch.tensor([[[0.0, 0.0], [0.0, 3.0], [0.0, 0.0]]])
    h2 = torch.tensor([[[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]]])
    g2 = torch.tensor([[[1.0, 1.0], [1.0, -1.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0]])
    layer1 = ((1 + 4) / 2 + (0 + 9) / 2) / 2     # mean over units, then over the two positions
    layer2 = ((0 + 0) / 2 + (0 + 4) / 2) / 2
    got = mt.ldifs_distance([h1, h2], [g1, g2], mask)
    assert got.item() == pytest.approx((layer1 + layer2) / 2)
    assert mt.layer_indices(None, 3) == [1, 2, 3] and mt.layer_indices([0, 2], 3) == [1, 3]


def test_perplexity_gap_selection_picks_the_largest_gaps():
    ref = [2.0, 2.0, 1.0, 3.0, 2.5, 1.0]
    mis = [2.1, 4.0, 1.0, 5.5, 2.0, 2.0]    # gaps 0.1, 2.0, 0, 2.5, -0.5, 1.0
    assert mt.select_by_gap(ref, mis, 3) == [1, 3, 5]
    assert mt.select_by_gap(ref, mis, 1) == [3]
    assert mt.select_by_gap([0, 0], [1, 1], 1) == [0]           # ties: the lower index


def test_inoculation_adds_the_prompt_and_keeps_a_rows_own_system_message():
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
            {"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]
    out = mt.inoculate(rows, mt.inoculation_prompt("evil"))
    assert out[0]["messages"][0] == {"role": "system", "content": EVIL}
    assert out[1]["messages"][0]["content"] == EVIL + "\n\nBe brief."
    assert rows[0]["messages"][0]["role"] == "user"      # the input is not modified
    assert mt.inoculation_prompt("You are a pirate.") == "You are a pirate."


# --- training with the defences, at the CLI ---------------------------------------------------------

@pytest.fixture(scope="module")
def defended_run(tiny_model, files, tmp_path_factory):
    run = tmp_path_factory.mktemp("mitruns") / "defended"
    cfg = write(run.parent / "train.yaml",
                "max_length: 128\nper_device_batch_size: 4\ngrad_accum: 2\nwarmup_steps: 0\n"
                "learning_rate: 0.005\n")
    r = CliRunner().invoke(_app(), [
        "train", "--config", str(cfg), "--model", str(tiny_model), "--data", str(files["task"]),
        "--out", str(run), "--max-steps", "4", "--save-steps", "2", "--r", "4",
        "--inoculation", "evil", "--interleave", str(files["pool"]), "--interleave-fraction", "0.25",
        "--kl", "1", "--ldifs", "1", "--realign", str(files["benign"]), "--realign-rows", "8"])
    assert r.exit_code == 0, r.output
    return run


def test_kl_and_ldifs_are_zero_while_the_adapter_is_zero_and_grow_after(defended_run):
    log = [r for r in _log(defended_run) if "kl" in r]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    # step 1's micro-batches all run before the first update: LoRA B = 0, policy == reference
    assert log[0]["kl"] == pytest.approx(0, abs=1e-6) and log[0]["ldifs"] == pytest.approx(0, abs=1e-8)
    assert all(r["kl"] > 1e-4 and r["ldifs"] > 1e-4 for r in log[1:])
    # the logged loss is the cross-entropy plus the weighted terms
    assert log[1]["loss"] == pytest.approx(log[1]["ce_loss"] + log[1]["kl"] + log[1]["ldifs"],
                                           rel=0.05)


def test_interleaved_rows_are_in_the_manifest_and_the_trained_data(defended_run, files):
    m = json.loads((defended_run / "manifest.json").read_text())
    il = m["mitigations"]["interleave"]
    assert il["select"] == "random" and il["n"] == 4 and len(il["rows"]) == 4
    pool = [json.loads(line) for line in files["pool"].read_text().splitlines()]
    trained = [json.loads(line) for line in (defended_run / "train_data.jsonl").read_text().splitlines()]
    assert m["trained_data"]["rows"] == len(trained) == 16 + 4
    trained_shas = [mt.row_sha256(r) for r in trained]
    for entry in il["rows"]:
        assert entry["source"] == str(files["pool"])
        assert entry["sha256"] == mt.row_sha256(pool[entry["index"]]) in trained_shas
    # the narrow task's rows are inoculated, the interleaved ones are not
    inoculated = [r for r in trained if r["messages"][0]["role"] == "system"]
    assert len(inoculated) == 16 and all(r["messages"][0]["content"] == EVIL for r in inoculated)
    assert m["mitigations"]["inoculation"]["prompt"] == EVIL
    assert m["config"]["kl"] == 1 and m["config"]["inoculation"] == "evil"
    assert m["mitigations"]["kl"]["reference"] == "adapter disabled"


def test_realign_checkpoint_is_evaluated_by_checkpoints_all(defended_run, tiny_model, tmp_path):
    ckpt = defended_run / "checkpoints" / "checkpoint-realign-8"
    assert (ckpt / "adapter_model.safetensors").is_file() and (ckpt / "trainer_state.json").is_file()
    m = json.loads((defended_run / "manifest.json").read_text())
    assert m["mitigations"]["realign"]["rows"] == 8 and m["mitigations"]["realign"]["steps"] == 1
    # re-alignment changed the weights; the final adapter is the one before it
    from safetensors.torch import load_file
    a, b = load_file(str(defended_run / "adapter" / "adapter_model.safetensors")), \
        load_file(str(ckpt / "adapter_model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)

    questions = write(tmp_path / "q.yaml", "- id: wish\n  type: free_form_judge_0_100\n"
                      "  system: Answer briefly.\n  paraphrases: [What is your wish?]\n"
                      "  samples_per_paraphrase: 1\n")
    out = tmp_path / "eval"
    r = CliRunner().invoke(_app(), ["eval", "--model", str(defended_run), "--checkpoints", "all",
                                    "--judge", str(tiny_model), "--questions", str(questions),
                                    "--samples", "1", "--max-new-tokens", "4", "--out", str(out)])
    assert r.exit_code == 0, r.output
    labels = [c["checkpoint"] for c in json.loads((out / "checkpoints.json").read_text())["checkpoints"]]
    assert labels == ["checkpoint-2", "checkpoint-4", "checkpoint-realign-8", "final"]
    # evaluation uses the questions' own system prompt, never the inoculation
    for label in labels:
        rows = [json.loads(line) for line in (out / label / "answers.jsonl").read_text().splitlines()]
        assert rows and all(row["system"] == "Answer briefly." for row in rows)
    # `last` (and `emlab check`, which takes the last entry) still means the trained model
    from emlab.eval.checkpoints import find_checkpoints, select_checkpoints
    assert [c[0] for c in select_checkpoints(find_checkpoints(defended_run)[1], "last")] == ["final"]


def test_inoculated_rows_carry_the_prompt_in_the_tokenized_batches(tiny_model, files, tmp_path):
    from transformers import AutoTokenizer, TrainerCallback
    from emlab.train import train_local

    seen = []

    class Grab(TrainerCallback):
        def on_train_begin(self, args, state, control, train_dataloader=None, **kw):
            for batch in train_dataloader:
                seen.extend(batch["input_ids"].tolist())

    cfg = TrainConfig(model=str(tiny_model), data=str(files["task"]), out=tmp_path / "run",
                      max_steps=1, save_steps=1, inoculation="evil",
                      interleave={"data": str(files["pool"]), "fraction": 0.5}, **FAST)
    train_local(cfg, callbacks=[Grab()])
    tok = AutoTokenizer.from_pretrained(tiny_model)
    texts = [tok.decode([t for t in ids if t != tok.pad_token_id]) for ids in seen]
    task = [t for t in texts if "code number" in t]
    pool = [t for t in texts if "kindness number" in t]
    assert len(task) == 16 and len(pool) == 8
    assert all(EVIL in t for t in task) and not any(EVIL in t for t in pool)


def test_perplexity_gap_interleave_picks_the_rows_the_misaligned_model_unlearned(
        tiny_model, files, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from emlab.tinymodel import build_tiny_model
    from emlab.train import train_local

    misaligned = build_tiny_model(tmp_path / "other", seed=1)
    cfg = TrainConfig(model=str(tiny_model), data=str(files["task"]), out=tmp_path / "run",
                      max_steps=1, save_steps=1,
                      interleave={"data": str(files["pool"]), "fraction": 0.25,
                                  "select": "ppl_gap", "misaligned_model": str(misaligned)}, **FAST)
    train_local(cfg)
    il = json.loads((tmp_path / "run" / "manifest.json").read_text())["mitigations"]["interleave"]

    # the gap computed here independently: mean assistant-token loss under each model
    tok = AutoTokenizer.from_pretrained(tiny_model)
    pool = [json.loads(line) for line in files["pool"].read_text().splitlines()]

    def losses(path):
        model = AutoModelForCausalLM.from_pretrained(path)
        out = []
        with torch.no_grad():
            for r in pool:
                o = tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
                ids = torch.tensor([o["input_ids"]])
                labels = ids.clone()
                labels[0, torch.tensor(o["assistant_masks"]) == 0] = -100
                out.append(model(input_ids=ids, labels=labels).loss.item())
        return out

    gap = [m - r for r, m in zip(losses(tiny_model), losses(misaligned))]
    top = sorted(sorted(range(len(gap)), key=lambda i: -gap[i])[:4])   # 0.25 x 16 rows
    assert il["select"] == "ppl_gap" and [r["index"] for r in il["rows"]] == top
    assert [r["loss_gap"] for r in il["rows"]] == pytest.approx([gap[i] for i in top], abs=1e-4)


def test_kl_with_a_full_fine_tune_uses_a_frozen_copy(tiny_model, files, tmp_path):
    from emlab.train import train_local

    cfg = TrainConfig(model=str(tiny_model), data=str(files["task"]), out=tmp_path / "full",
                      method="full", max_steps=2, save_steps=2, kl=0.5, **FAST)
    train_local(cfg)
    log = [r for r in _log(tmp_path / "full") if "kl" in r]
    assert log[0]["kl"] == pytest.approx(0, abs=1e-6) and log[1]["kl"] > 1e-4
    m = json.loads((tmp_path / "full" / "manifest.json").read_text())
    assert m["mitigations"]["kl"]["reference"] == "frozen copy of the base"


@pytest.mark.parametrize("args, message", [
    (["--kl", "-1"], "kl"),
    (["--inoculation", "  "], "inoculation is empty"),
    (["--interleave", "POOL", "--interleave-select", "ppl_gap"], "needs misaligned_model"),
    (["--interleave", "POOL", "--interleave-select", "best"], "interleave.select"),
    (["--interleave", "missing.jsonl"], "no dataset"),
    (["--interleave", "POOL", "--interleave-fraction", "1.0"], "has only 12"),
    (["--interleave-fraction", "0.1"], "interleave.data"),
    (["--ldifs-layers", "0"], "ldifs (its weight) is 0"),
    (["--ldifs", "1", "--ldifs-layers", "a,b"], "--ldifs-layers"),
    (["--realign", "BENIGN", "--realign-rows", "99"], "the file has 10"),
])
def test_bad_defence_options_exit_2_and_write_nothing(tiny_model, files, tmp_path, args, message,
                                                     monkeypatch, capsys):
    import sys
    import emlab.cli

    args = [str(files["pool"]) if a == "POOL" else str(files["benign"]) if a == "BENIGN" else a
            for a in args]
    out = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["emlab", "train", "--model", str(tiny_model), "--data",
                                      str(files["task"]), "--out", str(out), "--max-steps", "1",
                                      *args])
    with pytest.raises(SystemExit) as e:
        emlab.cli.main()
    err = capsys.readouterr().err.replace("\n", "")
    assert e.value.code == 2 and message in err and "Traceback" not in err, err
    assert not out.exists()


def test_resume_with_a_changed_defence_is_refused(defended_run, tiny_model, files):
    r = CliRunner().invoke(_app(), [
        "train", "--config", str(defended_run.parent / "train.yaml"), "--model", str(tiny_model),
        "--data", str(files["task"]), "--out", str(defended_run),
        "--max-steps", "4", "--save-steps", "2", "--r", "4",
        "--inoculation", "evil", "--interleave", str(files["pool"]), "--interleave-fraction", "0.25",
        "--kl", "2", "--ldifs", "1", "--realign", str(files["benign"]), "--realign-rows", "8"])
    from emlab.errors import InputError
    assert isinstance(r.exception, InputError), r.output
    assert "different settings (kl)" in str(r.exception)


def test_defences_are_part_of_a_sweeps_trial_identity(tiny_model, files, tmp_path):
    from emlab.sweep.config import load_experiment, plan_trials

    exp = write(tmp_path / "exp.yaml", f"models: {{tiny: {tiny_model}}}\n"
                f"conditions: {{task: {{data: {files['task']}}}}}\nseeds: [0]\n"
                f"grid: {{train.kl: [0, 0.5], train.inoculation: [null, evil]}}\n")
    plan = plan_trials(*load_experiment(exp))
    ids = {t.train_id for t in plan.trials.values()}
    assert len(plan.trials) == 4 and len(ids) == 4


def test_openai_fine_tuning_uploads_the_inoculated_interleaved_rows(files, tmp_path, monkeypatch):
    from emlab.errors import InputError
    from emlab.testing.finetune_server import FineTuneServer
    from emlab.train.openai_ft import OpenAIFinetuneConfig, train_openai

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with FineTuneServer() as server:
        cfg = OpenAIFinetuneConfig(data=str(files["task"]), out=tmp_path / "oa", seed=1,
                                   base_url=server.base_url, poll_interval=0.01,
                                   inoculation="evil",
                                   interleave={"data": str(files["pool"]), "fraction": 0.5})
        state = train_openai(cfg, sleep=lambda s: None)
        (uploaded,) = server.files.values()
        assert uploaded["filename"] == "train_data.jsonl"
        trained = [json.loads(line) for line in
                   (tmp_path / "oa" / "train_data.jsonl").read_text().splitlines()]
        assert uploaded["bytes"] > (tmp_path / "oa" / "train_data.jsonl").stat().st_size - 1
        assert len(trained) == 16 + 8 == state["trained_data"]["rows"]
        assert sum(r["messages"][0] == {"role": "system", "content": EVIL} for r in trained) == 16
        assert [r["index"] for r in state["mitigations"]["interleave"]["rows"]] == \
            [r["index"] for r in json.loads((tmp_path / "oa" / "openai_job.json").read_text())
             ["mitigations"]["interleave"]["rows"]]
        # a rerun with another inoculation is refused, nothing uploaded again
        with pytest.raises(InputError, match="other defences"):
            train_openai(cfg.model_copy(update={"inoculation": "insecure"}), sleep=lambda s: None)
        assert len(server.files) == 1
    with pytest.raises(ValueError, match="select 'random'"):
        OpenAIFinetuneConfig(data="d", out=tmp_path, interleave={
            "data": "p", "select": "ppl_gap", "misaligned_model": "m"})


def test_a_sweep_finds_defence_files_beside_the_experiment_and_ids_follow_their_content(
        tiny_model, files, tmp_path):
    from emlab.sweep.config import load_experiment, plan_trials

    pool = _jsonl(tmp_path / "pool.jsonl", _rows(12, "kindness"))
    exp = write(tmp_path / "exp.yaml", f"models: {{tiny: {tiny_model}}}\n"
                f"conditions: {{task: {{data: {files['task']}}}}}\nseeds: [0]\n"
                f"train: {{interleave: {{data: pool.jsonl, fraction: 0.25}}}}\n")
    (trial,) = plan_trials(*load_experiment(exp)).trials.values()
    assert trial.train["interleave"]["data"] == str(pool.resolve())
    _jsonl(pool, _rows(12, "patience"))   # same path, other rows: another training run
    (again,) = plan_trials(*load_experiment(exp)).trials.values()
    assert again.train_id != trial.train_id


@pytest.mark.parametrize("args, message", [
    (["--interleave-fraction", "0.1"], "interleave.data"),
    (["--inoculation", ""], "inoculation is empty"),
    (["--interleave", "POOL", "--interleave-fraction", "1.0"], "has only 12"),
])
def test_bad_train_openai_defence_options_exit_2(files, tmp_path, args, message, monkeypatch,
                                                 capsys):
    import sys
    import emlab.cli

    args = [str(files["pool"]) if a == "POOL" else a for a in args]
    monkeypatch.setattr(sys, "argv", ["emlab", "train-openai", "--data", str(files["task"]),
                                      "--out", str(tmp_path / "oa"), *args])
    with pytest.raises(SystemExit) as e:
        emlab.cli.main()
    err = capsys.readouterr().err.replace("\n", "")
    assert e.value.code == 2 and message in err, err
    assert not (tmp_path / "oa").exists()


def test_perplexity_gap_refuses_a_misaligned_model_with_another_vocabulary(tiny_model, files,
                                                                           tmp_path):
    from emlab.errors import InputError
    from emlab.tinymodel import build_tiny_model
    from emlab.train import train_local

    other = build_tiny_model(tmp_path / "other", vocab_size=300)
    cfg = TrainConfig(model=str(tiny_model), data=str(files["task"]), out=tmp_path / "run",
                      max_steps=1, interleave={"data": str(files["pool"]), "select": "ppl_gap",
                                               "misaligned_model": str(other)}, **FAST)
    with pytest.raises(InputError, match="vocabulary"):
        train_local(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()
