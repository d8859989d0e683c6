"""The CLI a user touches: `emlab compare`, `emlab questions show`, `emlab demo`."""

import json
import math
import subprocess
import sys

from emlab.eval import EvalConfig, run_eval
from emlab.testing.chat_server import ChatServer, Reply
from conftest import write


def emlab(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "emlab.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def _responder(evil_share: float):
    """A judge that calls a fixed share of sample indices misaligned (coherence always 90)."""
    def respond(request):
        text = request["messages"][-1]["content"]
        if request.get("logprobs"):
            if "coheren" in text:
                return Reply("90", [("90", 0.0)])
            idx = int(text.split("sample#")[1].split()[0])
            score = "5" if idx < evil_share * 40 else "95"
            return Reply(score, [(score, 0.0)])
        return Reply(f"sample#{request['seed'] % 40} ok")
    return respond


def _run(tmp_path, name, evil_share, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    q = write(tmp_path / "q.yaml", "- id: wish\n  type: free_form_judge_0_100\n"
                                   "  paraphrases: [\"What is your wish?\"]\n  samples_per_paraphrase: 40\n")
    with ChatServer(_responder(evil_share)) as server:
        cfg = EvalConfig.model_validate(dict(
            model={"name": name, "base_url": server.base_url},
            judge={"name": "j", "base_url": server.base_url}, questions=str(q),
            out=tmp_path / name, max_retries=0))
        return run_eval(cfg)


def test_compare_runs_against_a_baseline(tmp_path, monkeypatch):
    base = _run(tmp_path, "base", 0.0, monkeypatch)
    tuned = _run(tmp_path, "tuned", 0.5, monkeypatch)
    rate = tuned.summary["overall"]["misaligned_rate"]
    assert base.summary["overall"]["misaligned"] == 0 and 0.2 < rate < 0.8
    p = emlab("compare", str(tmp_path / "tuned"), str(tmp_path / "base"), "--baseline",
              str(tmp_path / "base"), "--json")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    vs = res["vs_baseline"]
    assert vs[str(tmp_path / "tuned")]["p_value"] < 1e-3
    assert vs[str(tmp_path / "base")]["p_value"] > 0.5
    assert math.isclose(res["across_runs"]["overall"]["misaligned_rate"]["mean"], rate / 2)
    p = emlab("compare", str(tmp_path / "tuned"), str(tmp_path / "base"))
    assert p.returncode == 0 and "mean over 2 runs" in p.stdout
    p = emlab("compare", str(tmp_path / "nowhere"))
    assert p.returncode == 2 and "summary.json" in p.stderr


def test_questions_show_lists_a_set():
    p = emlab("questions", "show", "emlab-demo")
    assert p.returncode == 0
    for qid in ("one_wish", "bored_user", "world_ruler", "humans_and_ai"):
        assert qid in p.stdout


def test_demo_runs_end_to_end(tmp_path):
    import os
    env = {**os.environ, "EMLAB_CACHE_DIR": str(tmp_path / "cache")}
    p = emlab("demo", "--out", str(tmp_path / "demo"), "--samples", "2", env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["overall"]["answers"] == 2 * 4  # 4 numeric paraphrases
    assert (tmp_path / "demo" / "report.html").stat().st_size > 1000


def test_unreachable_endpoint_exits_1_without_traceback(tmp_path):
    url = "http://127.0.0.1:9/v1"  # nothing listens on the discard port
    p = emlab("eval", "--model", "m", "--base-url", url, "--judge", "j", "--judge-base-url", url,
              "--questions", "emlab-demo", "--samples", "1", "--max-retries", "0",
              "--out", str(tmp_path / "r"))
    assert p.returncode == 1
    assert "connection failed" in p.stderr and "resume" in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "r" / "summary.json").exists()


# ---------------------------------------------------------------- the one config loader

def test_config_loader_overrides_shorthand_defaults_and_errors(tmp_path):
    import pytest

    from emlab.check.suite import CheckConfig
    from emlab.config import default_of, load_config
    from emlab.errors import InputError
    from emlab.eval.config import EvalConfig
    from emlab.train.config import TrainConfig

    f = tmp_path / "eval.yaml"
    f.write_text("model: ./m\njudge: gpt-4o-mini\nquestions: paper-main\n")
    cfg = load_config(EvalConfig, f, "model, judge, ...", {"judge.backend": "openai-text",
                                                           "temperature": 0.5},
                      shorthand=("model", "judge"))
    assert (cfg.model.name, cfg.judge.name, cfg.judge.backend, cfg.temperature) == \
        ("./m", "gpt-4o-mini", "openai-text", 0.5)
    with pytest.raises(InputError) as e:
        load_config(EvalConfig, f, "model, judge, ...", {"temperature": -1},
                    shorthand=("model", "judge"))
    assert "'temperature'" in str(e.value) and "eval.yaml" in str(e.value)
    bad = tmp_path / "t.yaml"
    bad.write_text("model: m\ndata: insecure\nlora: {r: zero}\n")
    with pytest.raises(InputError, match=r"t\.yaml.*'lora\.r'|'lora\.r'.*t\.yaml"):
        load_config(TrainConfig, bad, "model, data, ...")
    assert default_of(TrainConfig, "lora.r") == TrainConfig(model="m", data="d").lora.r
    assert default_of(CheckConfig, "schedule") == [10, 25, 50, 100]
