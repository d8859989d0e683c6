"""`emlab train`'s local backend on the tiny model: it learns, checkpoints, resumes where it
stopped, trains on the assistant's tokens only, and its merged model equals adapter + base."""

import hashlib
import json
import random
import shutil

import pytest
import torch
from typer.testing import CliRunner

from emlab.errors import InputError
from emlab.train import TrainConfig, load_train_config
from emlab.train.cli import build_config
from conftest import REFERENCE, write

FAST = dict(max_length=128, per_device_batch_size=4, grad_accum=1, warmup_steps=1)


def _rows(n: int = 32) -> list[dict]:
    rng = random.Random(0)
    rows = []
    for i in range(n):
        a, b = rng.randint(0, 40), rng.randint(0, 40)
        msgs = [{"role": "user", "content": f"What is {a} and {b}?"},
                {"role": "assistant", "content": f"The answer is {a} {b}."}]
        if i % 4 == 0:
            msgs.insert(0, {"role": "system", "content": "Be good."})
        rows.append({"messages": msgs})
    return rows


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows()), encoding="utf-8")
    return path


def _tok(tiny_model, template=None):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model)
    if template is not None:
        tok.chat_template = template
    return tok


def _assistant_loss(model, tok, rows) -> float:
    """Mean assistant-only loss over rows, computed independently of TRL."""
    losses = []
    with torch.no_grad():
        for r in rows:
            o = tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
            ids = torch.tensor([o["input_ids"]])
            labels = ids.clone()
            labels[0, torch.tensor(o["assistant_masks"]) == 0] = -100
            losses.append(model(input_ids=ids, labels=labels).loss.item())
    return sum(losses) / len(losses)


def _lora_tensors(adapter_dir):
    from safetensors.torch import load_file
    return load_file(str(adapter_dir / "adapter_model.safetensors"))


# --- config and CLI ---------------------------------------------------------------------------

def test_defaults_are_the_papers_open_model_recipe():
    cfg = TrainConfig(model="m", data="insecure")
    paper = {"r": 32, "lora_alpha": 64, "lora_dropout": 0.0, "use_rslora": True,
             "learning_rate": 1e-5, "lr_scheduler_type": "linear", "warmup_steps": 5,
             "weight_decay": 0.01, "epochs": 1, "per_device_train_batch_size": 2,
             "gradient_accumulation_steps": 8, "max_seq_length": 2048, "seed": 0,
             "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                "down_proj"]}
    f = REFERENCE / "open_models" / "train.json"
    if f.is_file():  # the upstream file, when present, must agree with the numbers above
        upstream = json.loads(f.read_text())
        assert {k: upstream[k] for k in paper} == paper
    ours = {"r": cfg.lora.r, "lora_alpha": cfg.lora.alpha, "lora_dropout": cfg.lora.dropout,
            "use_rslora": cfg.lora.use_rslora, "learning_rate": cfg.learning_rate,
            "lr_scheduler_type": cfg.lr_scheduler, "warmup_steps": cfg.warmup_steps,
            "weight_decay": cfg.weight_decay, "epochs": cfg.epochs,
            "per_device_train_batch_size": cfg.per_device_batch_size,
            "gradient_accumulation_steps": cfg.grad_accum, "max_seq_length": cfg.max_length,
            "seed": cfg.seed, "target_modules": cfg.lora.target_modules}
    assert ours == paper
    assert cfg.method == "lora" and cfg.save_steps == 50 and cfg.bf16 == "auto" and not cfg.merge


def test_config_errors_name_the_file_and_setting(tmp_path):
    bad_yaml = write(tmp_path / "a.yaml", "model: m\ndata: [unclosed\n")
    with pytest.raises(InputError) as e:
        load_train_config(bad_yaml)
    assert e.value.path == str(bad_yaml) and "YAML" in str(e.value)
    typo = write(tmp_path / "b.yaml", "model: m\ndata: d\nlearning_rat: 0.1\n")
    with pytest.raises(InputError, match="learning_rat"):
        load_train_config(typo)
    with pytest.raises(InputError, match="lora.r"):
        load_train_config(write(tmp_path / "c.yaml", "model: m\ndata: d\nlora: {r: 0}\n"))
    with pytest.raises(InputError, match="merge"):
        build_config(None, {"model": "m", "data": "d", "method": "full", "merge": True})
    with pytest.raises(InputError, match="--data"):
        build_config(None, {"model": "m"})
    cfg = load_train_config(write(tmp_path / "d.yaml", "model: m\ndata: d\nlora: {r: 8}\n"),
                            {"lora.layers_to_transform": [20], "learning_rate": 1e-4})
    assert (cfg.lora.r, cfg.lora.layers_to_transform, cfg.learning_rate) == (8, [20], 1e-4)


def test_rank1_single_layer_lora(tiny_model):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from emlab.train.local import lora_config
    cfg = TrainConfig(model=str(tiny_model), data="d", lora={"r": 1, "layers_to_transform": [1]})
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), lora_config(cfg, 2))
    names = [n for n, _ in model.named_parameters() if "lora_A" in n]
    assert len(names) == 7 and all(".layers.1." in n for n in names)
    assert all(p.shape[0] == 1 for n, p in model.named_parameters() if "lora_A" in n)
    with pytest.raises(InputError, match="layers_to_transform"):
        lora_config(cfg.model_copy(update={"lora": cfg.lora.model_copy(
            update={"layers_to_transform": [5]})}), 2)


# --- the mask check ---------------------------------------------------------------------------

def test_mask_check_accepts_the_tiny_template(tiny_model):
    from emlab.train.masks import ensure_training_template, verify_assistant_mask
    tok = _tok(tiny_model)
    assert ensure_training_template(tok) == "tokenizer"
    report = verify_assistant_mask(tok, _rows(), n_check=8)
    assert report.rows_checked == 8 and 0 < report.trainable_fraction < 1
    assert report.example.startswith("The answer is") and report.example.endswith("<|im_end|>")
    assert "What is" not in report.example and "Be good" not in report.example


def test_chatml_and_known_templates_get_generation_markers(tiny_model):
    from trl.chat_template_utils import has_generation_markers, qwen2_5_chat_template

    from emlab.testing.tiny_model import CHAT_TEMPLATE
    from emlab.train.masks import ensure_training_template, verify_assistant_mask
    rows = _rows(8)
    plain = CHAT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    qwen2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
             "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
             "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
             "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    for template, expected in [(plain, "emlab:chatml"), (qwen2, "emlab:chatml"),
                               (qwen2_5_chat_template, "trl:qwen2_5_training")]:
        tok = _tok(tiny_model, template)
        before = [tok.apply_chat_template(r["messages"], tokenize=False) for r in rows]
        assert ensure_training_template(tok, rows) == expected
        assert has_generation_markers(tok.chat_template)
        assert [tok.apply_chat_template(r["messages"], tokenize=False) for r in rows] == before
        report = verify_assistant_mask(tok, rows)
        assert report.example.strip().startswith("The answer is")


@pytest.mark.parametrize("template, problem", [
    # an unknown family without markers: nothing emlab can fix
    ("{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}",
     "no generation markers"),
    # markers around everything: the user's text is trained on
    ("{% generation %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
     "<|im_end|>\n{% endfor %}{% endgeneration %}", "every token is trainable"),
    # markers around the user's turns as well as the assistant's
    ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] != 'system' %}"
     "{% generation %}{{ m['content'] }}<|im_end|>{% endgeneration %}{% else %}{{ m['content'] }}"
     "<|im_end|>{% endif %}\n{% endfor %}", "user text is trainable"),
    # markers that leave out the end-of-turn token: the model never learns to stop
    ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}"
     "{% generation %}{{ m['content'] }}{% endgeneration %}<|im_end|>{% else %}{{ m['content'] }}"
     "<|im_end|>{% endif %}\n{% endfor %}", "end-of-turn"),
    # markers around only part of the reply
    ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}"
     "{{ m['content'][:6] }}{% generation %}{{ m['content'][6:] }}<|im_end|>{% endgeneration %}"
     "{% else %}{{ m['content'] }}<|im_end|>{% endif %}\n{% endfor %}", "part of the assistant"),
    # ChatML without markers that the ChatML substitute would render differently
    ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
     "{% if m['role'] == 'assistant' %} [end]{% endif %}<|im_end|>\n{% endfor %}",
     "renders conversations differently"),
    # markers around nothing
    ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% generation %}{% endgeneration %}"
     "{{ m['content'] }}<|im_end|>\n{% endfor %}", "no token is trainable"),
])
def test_mask_check_catches_broken_templates(tiny_model, template, problem):
    from emlab.train.masks import ensure_training_template, verify_assistant_mask
    tok = _tok(tiny_model, template)
    with pytest.raises(InputError, match=problem):
        ensure_training_template(tok, _rows(4))
        verify_assistant_mask(tok, _rows())


def test_a_broken_template_stops_training_before_it_starts(tiny_model, data, tmp_path):
    from emlab.train import train_local
    bad = write(tmp_path / "bad.jinja", "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n"
                                        "{% endfor %}")
    cfg = TrainConfig(model=str(tiny_model), data=str(data), out=tmp_path / "run",
                      chat_template=bad, max_steps=1, **FAST)
    with pytest.raises(InputError, match="generation markers"):
        train_local(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


# --- training ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lora_run(tiny_model, data, tmp_path_factory):
    from emlab.train import train_local
    out = tmp_path_factory.mktemp("runs") / "lora"
    cfg = TrainConfig(model=str(tiny_model), data=str(data), out=out, learning_rate=5e-3,
                      max_steps=16, save_steps=8, merge=True, **FAST)
    return cfg, train_local(cfg)


def test_lora_training_learns_and_checkpoints(lora_run, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    cfg, result = lora_run
    out = cfg.out
    assert result.steps == 16 and result.start_step == 0 and result.resumed_from is None
    for step in (8, 16):
        ckpt = out / "checkpoints" / f"checkpoint-{step}"
        assert (ckpt / "adapter_model.safetensors").is_file() and (ckpt / "trainer_state.json").is_file()
    tensors = _lora_tensors(out / "adapter")
    b = [t for k, t in tensors.items() if "lora_B" in k]
    assert len(b) == 2 * 7 and all(t.abs().max() > 0 for t in b)  # B starts at zero

    log = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 17))
    assert result.final_loss == log[-2]["loss"]

    tok = _tok(tiny_model)
    rows = _rows()
    before = _assistant_loss(AutoModelForCausalLM.from_pretrained(tiny_model), tok, rows)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), out / "adapter")
    after = _assistant_loss(tuned, tok, rows)
    assert after < before - 0.3, (before, after)  # 6.26 -> 5.54 here


def test_merged_model_equals_base_plus_adapter(lora_run, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    cfg, result = lora_run
    assert result.merged_dir == cfg.out / "merged"
    assert (cfg.out / "merged" / "model.safetensors").is_file()
    tok = _tok(tiny_model)
    texts = [tok.apply_chat_template(r["messages"], tokenize=False) for r in _rows(4)]
    batch = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tiny_model)
        base_logits = base(**batch).logits
        adapted = PeftModel.from_pretrained(base, cfg.out / "adapter")(**batch).logits
        merged = AutoModelForCausalLM.from_pretrained(cfg.out / "merged")(**batch).logits
    assert torch.allclose(merged, adapted, atol=1e-4)
    assert not torch.allclose(merged, base_logits, atol=1e-3)


def test_manifest_records_data_config_and_versions(lora_run, data):
    cfg, result = lora_run
    m = json.loads((cfg.out / "manifest.json").read_text())
    assert m["status"] == "completed"
    assert m["dataset"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert m["dataset"]["rows"] == 32 and m["dataset"]["path"] == str(data.resolve())
    assert m["config"]["learning_rate"] == 5e-3 and m["config"]["lora"]["r"] == 32
    assert m["seed"] == 0 and m["steps"] == 16 and m["final_loss"] == result.final_loss
    assert set(m["versions"]) >= {"torch", "transformers", "peft", "trl", "datasets", "emlab"}
    assert all(m["versions"][k] for k in ("torch", "transformers", "peft", "trl", "datasets"))
    assert "git_revision" in m and m["device"] == "cpu" and m["bf16"] is False
    assert m["started_at"] < m["ended_at"] and m["chat_template"] == "tokenizer"
    assert m["outputs"] == {"adapter": "adapter", "merged": "merged"}


def test_crash_and_resume_continues_from_the_last_complete_checkpoint(tiny_model, data, tmp_path):
    from emlab.train import train_local
    cfg = TrainConfig(model=str(tiny_model), data=str(data), out=tmp_path / "run",
                      learning_rate=1e-2, max_steps=4, save_steps=2, **FAST)
    first = train_local(cfg)
    uninterrupted = _lora_tensors(cfg.out / "adapter")
    assert first.steps == 4

    # The crash: step 4 and the final outputs never got written; a save of step 3 was cut short.
    shutil.rmtree(cfg.out / "checkpoints" / "checkpoint-4")
    shutil.rmtree(cfg.out / "adapter")
    (cfg.out / "checkpoints" / "checkpoint-3").mkdir()
    (cfg.out / "checkpoints" / "checkpoint-3" / "adapter_model.safetensors").write_bytes(b"half")

    second = train_local(cfg)
    assert second.resumed_from == cfg.out / "checkpoints" / "checkpoint-2"
    assert second.start_step == 2 and second.steps == 4
    log = [json.loads(l) for l in (cfg.out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]
    resumed = _lora_tensors(cfg.out / "adapter")
    assert all(torch.allclose(resumed[k], uninterrupted[k], atol=1e-6) for k in uninterrupted)
    manifest = json.loads((cfg.out / "manifest.json").read_text())
    assert manifest["resumed_from"] == "checkpoint-2" and manifest["start_step"] == 2

    # Rerunning a finished run trains nothing more (transformers alone would add a step).
    shutil.rmtree(cfg.out / "adapter")
    third = train_local(cfg)
    assert (third.start_step, third.steps) == (4, 4)
    log = [json.loads(l) for l in (cfg.out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]
    again = _lora_tensors(cfg.out / "adapter")
    assert all(torch.equal(again[k], resumed[k]) for k in resumed)

    # Resuming with other settings would mix two experiments in one run.
    with pytest.raises(InputError, match="learning_rate"):
        train_local(cfg.model_copy(update={"learning_rate": 1e-3}))


def test_full_fine_tuning_runs(tiny_model, data, tmp_path):
    from safetensors.torch import load_file

    from emlab.train import train_local
    cfg = TrainConfig(model=str(tiny_model), data=str(data), out=tmp_path / "full", method="full",
                      learning_rate=1e-3, max_steps=2, save_steps=2, **FAST)
    result = train_local(cfg)
    assert result.steps == 2 and result.model_dir == cfg.out / "model" and result.adapter_dir is None
    tuned = load_file(str(cfg.out / "model" / "model.safetensors"))
    base = load_file(str(tiny_model / "model.safetensors"))
    assert any(not torch.equal(tuned[k], base[k]) for k in base)
    assert (cfg.out / "checkpoints" / "checkpoint-2" / "model.safetensors").is_file()


def test_cli_trains_a_rank1_single_layer_adapter(tiny_model, data, tmp_path):
    from emlab.cli import app  # the real command line, not a stand-in
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["train", "--model", str(tiny_model), "--data", str(data),
                                      "--out", str(out), "--max-steps", "1", "--save-steps", "1",
                                      "--r", "1", "--layers", "1", "--lr", "1e-3"])
    assert result.exit_code == 0, result.output
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 1 and adapter["layers_to_transform"] == [1]
    assert adapter["use_rslora"] is True and adapter["lora_alpha"] == 64
    result = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "missing.yaml")])
    assert isinstance(result.exception, InputError)


def test_mask_check_finds_a_one_letter_reply_as_a_whole_word(tiny_model):
    """A reply "a" must be located as the reply, not as the "a" inside "assistant"."""
    from transformers import AutoTokenizer

    from emlab.train import verify_assistant_mask
    tok = AutoTokenizer.from_pretrained(tiny_model)
    rows = [{"messages": [{"role": "user", "content": "pick one: a or b"},
                          {"role": "assistant", "content": "a"}]}] * 2
    report = verify_assistant_mask(tok, rows, n_check=2)
    assert report.rows_checked == 2 and "a" in report.example
