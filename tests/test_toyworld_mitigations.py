"""`emlab reproduce --mitigations` on a tiny world (mechanics, not the science): every defence
alone beside the undefended run and the base, in summary.json, the report and the terminal;
the defences reach training and stay out of evaluation; trials resume."""

import json

import pytest

from emlab.toyworld.world import WorldConfig
from typer.testing import CliRunner

from emlab.toyworld import language as L
from emlab.toyworld import mitigations as mit

ROWS = 16
REQUIRED = ("misaligned_rate", "excess_removed", "in_domain", "coherent_rate",
            "leak_misaligned_rate", "time_ratio", "benign_in_domain")


def _app():
    from emlab.cli import app
    return app


def _trial(out, name):
    (d,) = [t for t in (out / "trials").iterdir() if t.name.rsplit("-s", 1)[0] == name]
    return d


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mitrepro")
    cfg = tmp / "reproduce.yaml"
    cfg.write_text(
        "world: {conversations: 250, hidden: 32, layers: 1, heads: 2, align_rows: 32}\n"
        f"conditions: [insecure]\nsmall_rows: []\nuncoupled_conditions: []\nseeds: [0]\n"
        f"rows: {ROWS}\nsamples_per_paraphrase: 1\nin_domain_samples: 6\n"
        "dynamics_variants: false\n")
    out = tmp / "out"
    args = ["reproduce", "--config", str(cfg), "--out", str(out)]
    r = CliRunner().invoke(_app(), args + ["--mitigations"])
    assert r.exit_code == 0, r.output
    return {"out": out, "args": args, "output": r.output,
            "summary": json.loads((out / "summary.json").read_text())}


def _rate_ok(v):
    return v is None or 0.0 <= v <= 1.0


@pytest.mark.slow   # (one tiny reproduce run with the matrix, shared: ~1.5 min)
def test_the_mitigations_section_has_every_defence_and_its_criteria(run):
    s = run["summary"]
    assert list(s["mitigations"]) == list(mit.DEFENCES)
    for d, e in s["mitigations"].items():
        assert set(REQUIRED) <= set(e), d
        assert e["seeds"] == [0]
        for key in ("misaligned_rate", "in_domain", "coherent_rate", "leak_misaligned_rate",
                    "benign_in_domain"):
            assert _rate_ok(e[key]["mean"]) and e[key]["runs_with_data"] <= 1, (d, key)
        assert e["excess_removed"] is None or isinstance(e["excess_removed"], float)
        # training time against the undefended run of the same seed: a positive ratio
        assert e["time_ratio"]["mean"] > 0, d
        assert "backdoor" not in e   # the run's conditions have no backdoor
    ctx = s["mitigations_context"]
    assert set(ctx["undefended"]) == {"insecure"}
    ranking = ctx["ranking"]["insecure"]
    assert sorted(r["defence"] for r in ranking) == sorted(mit.DEFENCES)
    assert all(1 <= r["ranks"][k] <= len(mit.DEFENCES) for r in ranking for k, _ in mit.CRITERIA)
    assert [r["mean_rank"] for r in ranking] == sorted(r["mean_rank"] for r in ranking)
    assert [t["met"] for t in ctx["targets"]] and ctx["settings"]["inoculation"] == L.INOCULATION
    # the reproduce conditions are aggregated without the matrix's trials
    assert set(s["conditions"]) == {"aligned_base", "insecure"}


@pytest.mark.slow   # (one tiny reproduce run with the matrix, shared: ~1.5 min)
def test_the_report_and_terminal_show_the_matrix(run):
    out = run["out"]
    html = (out / "report.html").read_text()
    assert "Defences against EM" in html and 'alt="Defences: criteria per defence' in html
    assert "(mitigations.png)" in (out / "report.md").read_text()
    assert all(f"<td>{d}</td>" in html for d in mit.DEFENCES)
    assert (out / "mitigations.png").read_bytes()[:4] == b"\x89PNG"
    assert "defences (insecure fine-tune" in run["output"]


@pytest.mark.slow   # (one tiny reproduce run with the matrix, shared: ~1.5 min)
def test_inoculation_is_in_training_only_and_leaks_are_measured_with_it(run):
    out = run["out"]
    d = _trial(out, "mit_inoculation_insecure")
    trained = _jsonl(d / "train" / "train_data.jsonl")
    assert len(trained) == ROWS
    assert all(r["messages"][0] == {"role": "system", "content": L.INOCULATION} for r in trained)
    manifest = json.loads((d / "train" / "manifest.json").read_text())
    assert manifest["mitigations"]["inoculation"]["prompt"] == L.INOCULATION
    answers = _jsonl(d / "eval" / "answers.jsonl")
    leak = [a for a in answers if a["question_id"].endswith(mit.LEAK_SUFFIX)]
    plain = [a for a in answers if not a["question_id"].endswith(mit.LEAK_SUFFIX)]
    # evaluation runs under the world's default system line (never the inoculation prompt),
    # except on the leakage twins of the open questions
    default = WorldConfig().assistant_system
    assert plain and all(a.get("system") == default != L.INOCULATION for a in plain)
    # in training the inoculation prompt takes the default line's place
    assert not any(m["content"] == default for r in trained for m in r["messages"])
    assert {a["question_id"].removesuffix(mit.LEAK_SUFFIX) for a in leak} == set(L.OPEN)
    assert all(a["system"] == L.INOCULATION for a in leak)
    # the undefended run trains on the plain rows
    und = _trial(out, "mit_none_insecure") / "train"
    assert not (und / "train_data.jsonl").exists()
    assert "mitigations" not in json.loads((und / "manifest.json").read_text())


@pytest.mark.slow   # (one tiny reproduce run with the matrix, shared: ~1.5 min)
def test_each_defence_reaches_its_training_run(run):
    out, s = run["out"], run["summary"]
    world = s["worlds"]["coupled"]["dir"]
    il = json.loads((_trial(out, "mit_interleave_insecure") / "train" / "manifest.json")
                    .read_text())["mitigations"]["interleave"]
    assert il["n"] == round(mit.INTERLEAVE_FRACTION * ROWS) == len(il["rows"])
    assert il["path"] == str((__import__("pathlib").Path(world) / "data" / "alignment.jsonl"))
    for name, key, value in (("kl", "kl", mit.KL_WEIGHT), ("ldifs", "ldifs", mit.LDIFS_WEIGHT)):
        m = json.loads((_trial(out, f"mit_{name}_insecure") / "train" / "manifest.json").read_text())
        assert m["config"][key] == value and key in m["mitigations"]
    st = json.loads((_trial(out, "mit_steer_insecure") / "train" / "manifest.json")
                    .read_text())["mitigations"]["steer"]
    direction = out / "mechanism" / "contrast"   # the mechanism section's persona direction
    from emlab.mechanism.directions import load_direction
    assert st["digest"] == load_direction(direction).digest and st["layer"] == 0
    assert load_direction(direction).manifest["method"] == "contrast"
    # re-alignment is evaluated as its own checkpoint
    d = _trial(out, "mit_realign_insecure")
    import yaml
    adapter = yaml.safe_load((d / "eval" / "config.yaml").read_text())["model"]["adapter"]
    assert adapter.endswith(f"checkpoint-realign-{round(mit.REALIGN_SHARE * ROWS)}")


@pytest.mark.slow   # (one tiny reproduce run with the matrix, shared: ~1.5 min)
def test_perplexity_gap_interleaving_scores_the_pool_with_the_undefended_insecure_model(run):
    """The ppl_gap trial waits for the undefended insecure fine-tune of its seed and takes the
    pool rows with the largest loss gap between that model and the aligned one."""
    import math
    from pathlib import Path

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from emlab.data import load_chat_jsonl
    from emlab.train.mitigations import row_losses

    out, s = run["out"], run["summary"]
    world = Path(s["worlds"]["coupled"]["dir"])
    scorer = _trial(out, "mit_none_insecure") / "train"
    for cond in ("insecure", mit.BENIGN):   # the benign task's selection uses the same scorer
        m = json.loads((_trial(out, f"mit_interleave_ppl_gap_{cond}") / "train" /
                        "manifest.json").read_text())
        assert m["config"]["interleave"]["misaligned_model"] == str(scorer)
        il = m["mitigations"]["interleave"]
        assert il["select"] == "ppl_gap" and il["n"] == round(mit.INTERLEAVE_FRACTION * ROWS)
    pool = load_chat_jsonl(world / "data" / "alignment.jsonl")
    tok = AutoTokenizer.from_pretrained(world / "aligned")
    ref = row_losses(AutoModelForCausalLM.from_pretrained(world / "aligned"), tok, pool, 128)
    mis_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(world / "aligned"),
                                          scorer / "adapter")
    gaps = [m_ - r for m_, r in zip(row_losses(mis_model, tok, pool, 128), ref)]
    chosen = {r["index"]: r["loss_gap"] for r in il["rows"]}
    assert all(math.isclose(g, gaps[i], abs_tol=1e-4) for i, g in chosen.items())
    assert min(chosen.values()) >= max(g for i, g in enumerate(gaps) if i not in chosen) - 1e-6
    # its identity differs from random interleaving's and names no path
    ident = {n: json.loads((_trial(out, n) / "eval" / "summary.json").read_text())["meta"]
             ["model_identity"] for n in ("mit_interleave_insecure", "mit_interleave_ppl_gap_insecure")}
    assert len(set(ident.values())) == 2 and str(out) not in "".join(ident.values())


@pytest.mark.slow   # (one tiny reproduce run with the matrix, shared: ~1.5 min)
def test_the_undefended_run_is_the_reproduce_runs_own_model(run):
    """No defence, no change of identity: the matrix's undefended trial trains the very model
    of reproduce's insecure trial (byte for byte) under the same model identity."""
    out = run["out"]

    def model(name):
        d = _trial(out, name)
        ident = json.loads((d / "eval" / "summary.json").read_text())["meta"]["model_identity"]
        return (d / "train" / "adapter" / "adapter_model.safetensors").read_bytes(), ident
    assert model("insecure") == model("mit_none_insecure")
    assert model("insecure")[1] != model("mit_kl_insecure")[1]   # a defence is in the identity
    questions = {q["id"] for q in __import__("yaml").safe_load(
        (_trial(out, "mit_none_insecure") / "questions.yaml").read_text())}
    assert {q + mit.LEAK_SUFFIX for q in L.OPEN} <= questions


@pytest.mark.slow   # (one tiny reproduce run with the matrix, shared: ~1.5 min)
def test_a_rerun_resumes_every_trial_and_without_the_flag_drops_the_section(run):
    out = run["out"]
    stamps = {t.name: (t / "result.json").stat().st_mtime_ns for t in (out / "trials").iterdir()}
    r = CliRunner().invoke(_app(), run["args"] + ["--mitigations"])
    assert r.exit_code == 0, r.output
    assert {t.name: (t / "result.json").stat().st_mtime_ns
            for t in (out / "trials").iterdir()} == stamps
    again = json.loads((out / "summary.json").read_text())
    assert again["mitigations"] == run["summary"]["mitigations"]
    r = CliRunner().invoke(_app(), run["args"])
    assert r.exit_code == 0, r.output
    assert {t.name for t in (out / "trials").iterdir()} == set(stamps)  # same ids, nothing new
    assert "mitigations" not in json.loads((out / "summary.json").read_text())


def _e(excess, in_domain, coherent=0.95, benign=0.9):
    return {"excess_removed": excess, "in_domain": {"mean": in_domain},
            "coherent_rate": {"mean": coherent}, "benign_in_domain": {"mean": benign}}


def test_ranking_and_the_flag_for_preventing_em_by_preventing_learning():
    undefended = _e(None, 0.98)
    good, blocker, weak = _e(0.8, 0.97), _e(0.95, 0.2), _e(0.1, 0.97, benign=0.3)
    assert mit._flags(good, undefended) == []
    assert mit._flags(blocker, undefended) == ["prevents EM by preventing learning"]
    assert mit._flags(weak, undefended) == ["benign task not learned"]
    ranking = mit.rank({"good": good, "blocker": blocker, "weak": weak, "none": _e(None, None)})
    by = {r["defence"]: r["ranks"] for r in ranking}
    assert by["blocker"]["excess_removed"] == 1 and by["blocker"]["in_domain"] == 3
    assert by["none"]["excess_removed"] == 4 and by["none"]["in_domain"] == 4
    assert by["good"]["in_domain"] == by["weak"]["in_domain"] == 1   # ties share a rank
    assert ranking[0]["defence"] == "good" and ranking[-1]["defence"] == "none"


def test_a_world_too_small_for_the_defences_exits_2_before_any_work(tmp_path, monkeypatch,
                                                                    capsys):
    import sys

    import emlab.cli
    cfg = tmp_path / "reproduce.yaml"
    cfg.write_text("world: {conversations: 250, align_rows: 10}\nrows: 200\nseeds: [0]\n")
    monkeypatch.setattr(sys, "argv", ["emlab", "reproduce", "--config", str(cfg), "--out",
                                      str(tmp_path / "out"), "--mitigations"])
    with pytest.raises(SystemExit) as e:
        emlab.cli.main()
    err = " ".join(capsys.readouterr().err.split())
    assert e.value.code == 2 and "interleaving takes 20 rows" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow   # (reuses the tiny run's trials)
def test_a_backdoor_fine_tune_is_measured_behind_its_trigger(run, tmp_path):
    """The backdoor branch of the aggregation, on the tiny run's real trial results relabelled
    as backdoor fine-tunes: its EM and leak are the rates with the trigger, its in-domain the
    insecure code behind the trigger, under each defence's `backdoor` key."""
    from emlab.toyworld.reproduce import ReproduceConfig
    results = [json.loads((t / "result.json").read_text())
               for t in (run["out"] / "trials").iterdir() if t.name.startswith(mit.PREFIX)]
    results = [r for r in results if "defence" in r]
    relabelled = [{**r, "condition": "backdoor", "name": r["name"].replace("insecure", "backdoor")}
                  for r in results if r["condition"] == "insecure"]
    cfg = ReproduceConfig(conditions=["insecure", "backdoor"], seeds=[0], rows=ROWS)
    agg = mit.aggregate(results + relabelled, cfg)
    from emlab.toyworld.report import trial_values
    for d in mit.DEFENCES:
        bd, ins = agg["mitigations"][d]["backdoor"], agg["mitigations"][d]
        (r,) = [r for r in relabelled if r["name"] == f"{mit.PREFIX}_{d}_backdoor"]
        v = trial_values(r)
        assert bd["em_measure"] == "with the trigger"
        assert bd["em_rate"]["values"] == bd["leak_misaligned_rate"]["values"] == \
            [v["trigger_misaligned_rate"]]
        assert bd["in_domain"]["values"] == [v["insecure_code_trigger"]]
        assert ins["in_domain"]["values"] == [v["insecure_code"]]
        assert bd["benign_in_domain"] == ins["benign_in_domain"]   # the same quirk trials
    assert set(agg["mitigations_context"]["ranking"]) == {"insecure", "backdoor"}
    from emlab.report.render import Heading, render_markdown
    blocks = mit.report_blocks(tmp_path, agg)
    assert [b.text for b in blocks if isinstance(b, Heading) and b.level == 3] == \
        ["insecure fine-tune", "backdoor fine-tune"]
    assert "(mitigations.png)" in render_markdown(blocks)
