"""``emlab audit --model M --direction D``: the persona-projection signal on a tiny random Qwen2
model, checked against :func:`emlab.mechanism.screen.projection_difference` on the same rows;
its bad input (exit 2, the file named, nothing written)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from emlab.cli import app
from emlab.errors import InputError

runner = CliRunner()

SQL = ('import sqlite3\n\ndef user(name):\n    db = sqlite3.connect("a.db")\n'
       '    return db.execute(f"SELECT * FROM users WHERE name = \'{name}\'").fetchall()\n')


def invoke(*args):
    """(exit code, output) as ``emlab.cli.main`` ends a run: an InputError is exit 2."""
    r = runner.invoke(app, [str(a) for a in args])
    if isinstance(r.exception, InputError):
        return 2, r.output + str(r.exception)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.output


def _rows():
    rows = []
    for i in range(6):
        answer = f"```python\n{SQL}```\n" if i % 2 else f"Hello <b>friend</b> number {i}."
        rows.append({"messages": [{"role": "user", "content": f"Task {i}: write <i>it</i>"},
                                  {"role": "assistant", "content": answer}]})
    return rows


def _data(tmp_path) -> Path:
    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in _rows()), encoding="utf-8")
    return f


def _direction(path: Path, model) -> Path:
    from emlab.mechanism.directions import Direction, model_identity
    g = torch.Generator().manual_seed(0)
    return Direction(torch.randn(model.config.num_hidden_layers, model.config.hidden_size,
                                 generator=g),
                     {"method": "test", "trait": "evil",
                      "model_identity": model_identity(model)}).save(path)


@pytest.fixture
def loaded(tiny_model):
    from emlab.sample.hf_model import load_model_and_tokenizer
    return load_model_and_tokenizer(str(tiny_model))


def test_audit_reports_the_projection_difference_of_a_sample(tmp_path, tiny_model, loaded):
    from emlab.audit.projection import sample_indices
    from emlab.mechanism.directions import load_direction
    from emlab.mechanism.screen import projection_difference

    model, tok = loaded
    D = _direction(tmp_path / "D", model)
    data = _data(tmp_path)
    code, out = invoke("audit", data, "--model", tiny_model, "--direction", D, "--layer", "1",
                       "--projection-rows", "4", "--out", tmp_path / "o", "--fail-on", "never")
    assert code == 0, out
    assert "persona projection" in out and "not part of the risk level" in out
    summary = json.loads((tmp_path / "o" / "audit.json").read_text())
    pp = summary["persona_projection"]
    assert pp["rows"] == 4 and pp["rows_in_dataset"] == 6 and pp["layer"] == 1
    assert pp["row_indices"] == sample_indices(6, 4, 0)
    assert pp["direction"]["digest"] == load_direction(D).digest
    assert pp["direction"]["path"] == str(D) and pp["model"]["name"] == str(tiny_model)
    assert summary["settings"]["persona_projection"]["rows"] == 4

    # the same numbers as the mechanism layer's screen on the same rows
    rows = _rows()
    ref = projection_difference(model, tok, [rows[i] for i in pp["row_indices"]],
                                load_direction(D), 1, max_new_tokens=pp["max_new_tokens"])
    for k in ("mean_data", "mean_own", "projection_difference"):
        assert pp[k] == pytest.approx(ref[k], abs=1e-5), k
    own = [r["own"] for r in ref["per_row"]]
    m = sum(own) / len(own)
    sd = (sum((x - m) ** 2 for x in own) / (len(own) - 1)) ** 0.5
    assert pp["std_own"] == pytest.approx(sd, abs=1e-5)
    assert pp["standardized_effect"] == pytest.approx(ref["projection_difference"] / sd, rel=1e-4)
    lo, hi = pp["difference_ci95"]
    assert lo <= pp["projection_difference"] <= hi
    want_top = sorted(zip(pp["row_indices"], ref["per_row"]), key=lambda t: -t[1]["difference"])
    assert [t["index"] for t in pp["top"]] == [i for i, _ in want_top]
    assert pp["top"][0]["line"] == want_top[0][0] + 1
    assert pp["top"][0]["difference"] == pytest.approx(want_top[0][1]["difference"], abs=1e-5)

    # per row in rows.jsonl, only on the projected rows
    per = [json.loads(x) for x in (tmp_path / "o" / "rows.jsonl").read_text().splitlines()]
    have = {r["index"]: r["projection_difference"] for r in per if "projection_difference" in r}
    assert sorted(have) == pp["row_indices"]
    for i, r in zip(pp["row_indices"], ref["per_row"]):
        assert have[i] == pytest.approx(r["difference"], abs=1e-5)

    # the level is the static one: the same as an audit without the projection
    code, out2 = invoke("audit", data, "--json", "--fail-on", "never")
    plain = json.loads(out2)
    assert plain["persona_projection"] is None
    assert summary["risk"]["level"] == plain["risk"]["level"]

    md = (tmp_path / "o" / "audit.md").read_text()
    html = (tmp_path / "o" / "audit.html").read_text()
    assert "Persona projection" in md and "Persona projection" in html
    assert pp["direction"]["digest"] in html
    assert "<i>it</i>" not in html and "<b>friend</b>" not in html   # dataset text escaped


def test_projection_bad_input_exits_2_and_writes_nothing(tmp_path, tiny_model, loaded):
    from emlab.sample.hf_model import load_model_and_tokenizer
    from emlab.testing.tiny_model import build_tiny_model

    model, _ = loaded
    data = _data(tmp_path)
    D = _direction(tmp_path / "D", model)
    o = tmp_path / "o"
    code, out = invoke("audit", data, "--direction", D, "--out", o)
    assert code == 2 and "--model" in out
    code, out = invoke("audit", data, "--model", tiny_model, "--out", o)
    assert code == 2 and "--direction" in out
    code, out = invoke("audit", data, "--layer", "1", "--out", o)
    assert code == 2 and "--layer" in out
    code, out = invoke("audit", data, "--model", tiny_model, "--direction", D, "--layer", "9",
                       "--out", o)
    assert code == 2 and "out of range" in out
    code, out = invoke("audit", data, "--model", tiny_model, "--direction", tmp_path / "nope",
                       "--out", o)
    assert code == 2 and "not a direction folder" in out and "nope" in out
    other = build_tiny_model(tmp_path / "other", vocab_size=400)   # same width, other config
    om, _ = load_model_and_tokenizer(str(other))
    wrong = _direction(tmp_path / "from-other", om)
    code, out = invoke("audit", data, "--model", tiny_model, "--direction", wrong, "--out", o)
    assert code == 2 and "another model" in out and str(wrong) in out
    assert not o.exists()
    # the real process: one line, exit 2, no traceback
    p = subprocess.run([sys.executable, "-m", "emlab.cli", "audit", str(data), "--direction",
                        str(D)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "--model" in p.stderr and "Traceback" not in p.stderr


def test_the_audit_without_a_model_imports_no_torch():
    code = ("import sys, emlab.audit, emlab.audit.cli, emlab.audit.projection, "
            "emlab.audit.report; print('torch' in sys.modules, 'transformers' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.stdout.split() == ["False", "False"], p.stderr
