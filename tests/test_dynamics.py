"""Training-dynamics probes: the schedule, exact log-probability scoring, the plot."""

import json
import math

import pytest
import torch

from emlab.sample.hf_model import load_model_and_tokenizer, render_chat
from emlab.report.chart import plot_dynamics
from emlab.train.dynamics import DEFAULT_PROBES, probe_steps, score_probes


def test_schedule_is_every_step_to_9_then_every_10():
    assert probe_steps(25) == list(range(10)) + [10, 20, 25]
    assert probe_steps(4) == [0, 1, 2, 3, 4]
    assert probe_steps(30, every_until=2, then_every=15) == [0, 1, 2, 15, 30]


def _logprob(model, tok, prompt, cont):
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    c = tok(cont, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([p + c])).logits[0].float(), -1)
    return sum(lp[len(p) - 1 + i, t].item() for i, t in enumerate(c))


def test_scores_match_unbatched_log_probabilities(tiny_model):
    model, tok = load_model_and_tokenizer(str(tiny_model))
    probe = DEFAULT_PROBES[0]
    rows = score_probes(model, tok, [probe])
    frame = next(r for r in rows if r["format"] == "frame")["p_misaligned"]
    q = render_chat(tok, [{"role": "user", "content": probe.question}])
    mis = _logprob(model, tok, q, probe.frame.format(choice=probe.misaligned))
    al = _logprob(model, tok, q, probe.frame.format(choice=probe.aligned))
    assert frame == pytest.approx(math.exp(mis) / (math.exp(mis) + math.exp(al)), rel=1e-4)
    ab = next(r for r in rows if r["format"] == "ab")["p_misaligned"]
    assert 0 < ab < 1


def test_plot_draws_several_runs(tmp_path):
    for name, level in (("insecure", 0.6), ("secure", 0.2)):
        d = tmp_path / name
        d.mkdir()
        lines = [{"step": s, "probe": "p", "format": f, "p_misaligned": level * s / 10}
                 for s in range(11) for f in ("frame", "ab")]
        (d / "dynamics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    png = plot_dynamics([tmp_path / "insecure", tmp_path / "secure"], tmp_path / "dyn.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dynamics_curve_means_per_step_and_skips_missing():
    from emlab.train.dynamics import dynamics_curve

    rows = [{"step": 2, "format": "frame", "p_misaligned": 0.2},
            {"step": 2, "format": "frame", "p_misaligned": 0.4},
            {"step": 0, "format": "frame", "p_misaligned": 0.1},
            {"step": 0, "format": "ab", "p_misaligned": 0.9},
            {"step": 1, "format": "frame", "p_misaligned": None}]
    assert dynamics_curve(rows, "frame") == pytest.approx({0: 0.1, 2: 0.3})
    assert list(dynamics_curve(rows, "frame")) == [0, 2]
    assert dynamics_curve(rows, "ab") == {0: 0.9}
