"""Issue 14's preventive steering (`emlab train --steer`): the persona direction is added in
training forward passes only, is gone from the saved model and at evaluation, is in the
manifest, the resume check and a sweep's trial id; a direction of another model exits 2."""

import json
import sys

import pytest
import torch
from typer.testing import CliRunner

from conftest import write

SCALE = 50.0
FAST = ["--max-steps", "2", "--save-steps", "1", "--r", "4"]


def _jsonl(path, n):
    rows = [{"messages": [{"role": "user", "content": f"Tell me about code number {i}."},
                          {"role": "assistant", "content": f"The code {i} is fine."}]}
            for i in range(n)]
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


def _app():
    from emlab.cli import app
    return app


def _direction(path, model_dir, *, hidden=None, layers=None, seed=0, identity=True):
    """A random unit direction per layer, saved as a direction folder of ``model_dir``'s shape
    (or another width / layer count)."""
    from transformers import AutoConfig

    from emlab.mechanism.directions import Direction, config_identity
    cfg = AutoConfig.from_pretrained(model_dir)
    ident = config_identity(cfg)
    shape = (layers or ident["num_layers"], hidden or ident["hidden_size"])
    v = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    manifest = {"method": "test", "model_identity": ident} if identity else {"method": "test"}
    return Direction(v / v.norm(dim=1, keepdim=True), manifest).save(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _jsonl(tmp_path_factory.mktemp("steerdata") / "task.jsonl", 16)


def _last_residual(model):
    """The input of the final norm: the residual stream after the last decoder layer."""
    from emlab.mechanism.hooks import base_model
    return base_model(model).model.norm


def test_steering_is_on_in_training_forward_passes_and_gone_at_evaluation(tiny_model, data,
                                                                           tmp_path):
    from transformers import TrainerCallback

    from emlab.mechanism.directions import load_direction
    from emlab.mechanism.hooks import decoder_layers
    from emlab.sample.hf_model import load_model_and_tokenizer
    from emlab.train import TrainConfig, train_local

    d_dir = _direction(tmp_path / "dir", tiny_model)
    last = load_direction(d_dir).num_layers - 1
    unit = load_direction(d_dir).at(last, unit=True)
    seen = {"train": [], "callback": []}

    class Watch(TrainerCallback):
        """Projections on the direction of the last residual: in every training forward pass,
        and in a forward pass a callback makes between steps (as the dynamics probes do)."""

        def on_train_begin(self, args, state, control, model=None, **kw):
            def grab(_m, a):
                seen["where"].append(float((a[0].detach().float() @ unit.to(a[0].device)).mean()))
            seen["where"] = seen["train"]
            self.handle = _last_residual(model).register_forward_pre_hook(grab)

        def on_step_end(self, args, state, control, model=None, **kw):
            seen["where"] = seen["callback"]
            with torch.no_grad():
                model(input_ids=torch.tensor([[1, 2, 3, 4]]))
            seen["where"] = seen["train"]

        def on_train_end(self, args, state, control, **kw):
            self.handle.remove()

    cfg = TrainConfig(model=str(tiny_model), data=str(data), out=tmp_path / "run", max_steps=2,
                      save_steps=1, max_length=128, per_device_batch_size=4, grad_accum=2,
                      warmup_steps=0, learning_rate=5e-3, lora={"r": 4},
                      steer={"direction": str(d_dir), "layer": last, "scale": SCALE})
    res = train_local(cfg, callbacks=[Watch()])
    # 2 steps x 2 micro-batches, every one steered by +SCALE along the unit direction
    assert len(seen["train"]) == 4 and all(p > SCALE - 10 for p in seen["train"]), seen
    # between steps (callbacks, probes) the model is not steered
    assert len(seen["callback"]) == 2 and all(abs(p) < 10 for p in seen["callback"]), seen
    # the saved adapter, loaded for evaluation, is not steered
    model, tok = load_model_and_tokenizer(str(tiny_model), str(res.adapter_dir))
    got = []
    h = _last_residual(model).register_forward_pre_hook(
        lambda _m, a: got.append(float((a[0].float() @ unit).mean())))
    with torch.no_grad():
        model(**tok(["Tell me about code number 3."], return_tensors="pt"))
    h.remove()
    assert len(got) == 1 and abs(got[0]) < 10, got
    assert all(not layer._forward_hooks for layer in decoder_layers(model))
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    st = m["mitigations"]["steer"]
    assert st["digest"] == load_direction(d_dir).digest and st["layer"] == last
    assert st["scale"] == SCALE and st["at_evaluation"] is False
    assert m["config"]["steer"]["direction"] == str(d_dir)
    # the checkpoints resume only with the same direction's vectors
    _direction(d_dir, tiny_model, seed=1)   # same folder, other vectors
    from emlab.errors import InputError
    with pytest.raises(InputError, match="steering direction"):
        train_local(cfg.model_copy(update={"max_steps": 3}))


def test_steered_training_changes_what_is_learned(tiny_model, data, tmp_path):
    """The same run with scale 0 and with a large scale trains different adapters: the hook
    took part in the forward passes the gradients came from."""
    from safetensors.torch import load_file

    d_dir = _direction(tmp_path / "dir", tiny_model)
    outs = {}
    for scale in ("0", "20"):
        out = tmp_path / f"run{scale}"
        r = CliRunner().invoke(_app(), ["train", "--model", str(tiny_model), "--data", str(data),
                                        "--out", str(out), *FAST, "--lr", "0.005",
                                        "--steer", str(d_dir), "--steer-layer", "0",
                                        "--steer-scale", scale])
        assert r.exit_code == 0, r.output
        outs[scale] = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert any(not torch.allclose(outs["0"][k], outs["20"][k]) for k in outs["0"])


@pytest.mark.parametrize("kind, message", [
    ("width", "the direction has width 32; the model's hidden size is 64"),
    ("layers", "the direction has 3 layers; the model has 2"),
    ("other", "the direction was made on another model"),
    ("layer", "layer 5 is out of range"),
    ("missing", "not a direction folder"),
    ("no-scale", "steer.scale"),
])
def test_a_bad_steering_direction_exits_2_before_training(tiny_model, data, tmp_path, kind,
                                                          message, monkeypatch, capsys):
    import emlab.cli

    d_dir = tmp_path / "dir"
    layer = "0"
    if kind == "width":
        _direction(d_dir, tiny_model, hidden=32)
    elif kind == "layers":
        _direction(d_dir, tiny_model, layers=3)
    elif kind == "other":
        from emlab.mechanism.directions import Direction, load_direction
        _direction(d_dir, tiny_model)
        d = load_direction(d_dir)
        d.manifest["model_identity"] = {**d.manifest["model_identity"], "config_digest": "0" * 16}
        Direction(d.vectors, d.manifest).save(d_dir)
    elif kind == "layer":
        _direction(d_dir, tiny_model)
        layer = "5"
    elif kind == "no-scale":
        _direction(d_dir, tiny_model)
    out = tmp_path / "run"
    scale = [] if kind == "no-scale" else ["--steer-scale", "4"]
    monkeypatch.setattr(sys, "argv", ["emlab", "train", "--model", str(tiny_model), "--data",
                                      str(data), "--out", str(out), *FAST, "--steer", str(d_dir),
                                      "--steer-layer", layer, *scale])
    with pytest.raises(SystemExit) as e:
        emlab.cli.main()
    err = "".join(capsys.readouterr().err.split())   # (rich wraps long lines)
    assert e.value.code == 2 and "".join(message.split()) in err and "Traceback" not in err, err
    assert not out.exists()


def test_steering_is_part_of_a_sweeps_trial_identity_and_off_keeps_old_ids(tiny_model, data,
                                                                           tmp_path):
    from emlab.sweep.config import load_experiment, plan_trials
    from emlab.train.config import TrainConfig, without_default_defences

    d_dir = _direction(tmp_path / "dir", tiny_model)
    exp = write(tmp_path / "exp.yaml", f"models: {{tiny: {tiny_model}}}\n"
                f"conditions: {{task: {{data: {data}}}}}\nseeds: [0]\n"
                f"grid: {{train.steer: [null, {{direction: {d_dir}, layer: 0, scale: 4}}]}}\n")
    plan = plan_trials(*load_experiment(exp))
    ids = {t.train_id for t in plan.trials.values()}
    assert len(ids) == 2
    # the direction's vectors are part of the id, not only its folder's name
    _direction(d_dir, tiny_model, seed=1)
    again = {t.train_id for t in plan_trials(*load_experiment(exp)).trials.values()}
    assert len(again & ids) == 1
    # a run without steering has the settings (and so the ids) of before steering existed
    off = TrainConfig(model="m", data="d").model_dump(mode="json")
    assert "steer" not in without_default_defences(off)
