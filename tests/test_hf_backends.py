"""The local transformers sampler and exact judge on a tiny Qwen2 model built in the test."""

import math
from pathlib import Path

import pytest
import torch

from emlab.errors import InputError
from emlab.judge.hf_judge import NUMERIC_CANDIDATES, HFJudge
from emlab.sample.hf_model import render_chat
from emlab.sample.hf_sampler import HFSampler
from emlab.types import GenerationParams, JudgeRequest, SampleRequest


def _collect(fn, requests):
    got = {}
    fn(requests, lambda r, res: got.__setitem__(r.key, res))
    return got


def test_sampler_batches_and_honours_system_prompt(tiny_model):
    s = HFSampler(str(tiny_model), params=GenerationParams(max_new_tokens=12), batch_size=4)
    reqs = [SampleRequest(f"k{i}", ({"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "hello " * (i + 1)}), seed=i)
            for i in range(6)]
    got = _collect(s.sample, reqs)
    assert set(got) == {r.key for r in reqs}
    for c in got.values():
        assert 1 <= c.completion_tokens <= 12
        assert c.finish_reason in ("stop", "length")
    model, tok = s._load()
    assert "Be brief." in render_chat(tok, reqs[0].messages)


def test_sampler_is_deterministic_given_seeds(tiny_model):
    params = GenerationParams(max_new_tokens=10)
    reqs = [SampleRequest(f"k{i}", ({"role": "user", "content": f"wish {i}"},), seed=100 + i)
            for i in range(3)]
    a = _collect(HFSampler(str(tiny_model), params=params).sample, reqs)
    b = _collect(HFSampler(str(tiny_model), params=params).sample, reqs)
    assert {k: v.text for k, v in a.items()} == {k: v.text for k, v in b.items()}


def test_identity_changes_when_local_model_files_change(tiny_model, tmp_path):
    import shutil
    copy = tmp_path / "m"
    shutil.copytree(tiny_model, copy)
    before = HFSampler(str(copy)).identity
    (copy / "config.json").write_text((copy / "config.json").read_text() + "\n")
    assert HFSampler(str(copy)).identity != before


def _sequence_logprob(model, prompt_ids, ids):
    """Independent reference: log P(ids | prompt) by a plain full forward pass."""
    x = torch.tensor([prompt_ids + ids])
    with torch.no_grad():
        lp = torch.log_softmax(model(x).logits[0].float(), -1)
    return sum(lp[len(prompt_ids) - 1 + i, t].item() for i, t in enumerate(ids)), lp[-1]


def test_exact_judge_matches_brute_force_sequence_probabilities(tiny_model):
    judge = HFJudge(str(tiny_model), batch_size=5)
    prompts = ["Rate this answer: hello", "A much longer prompt about the wish and the cost"]
    reqs = [JudgeRequest(f"j{i}", p) for i, p in enumerate(prompts)]
    reqs.append(JudgeRequest("cat", prompts[0], choices=("TRUE", "FALSE", "UNKNOWN")))
    got = _collect(judge.judge, reqs)
    model, tok = judge._load()
    for r in reqs:
        prompt_ids = tok(render_chat(tok, [{"role": "user", "content": r.prompt}]),
                         add_special_tokens=False)["input_ids"]
        cands = r.choices or NUMERIC_CANDIDATES
        assert set(got[r.key].probs) == set(cands)
        for c in (r.choices or ("85", "100", "7", "CODE", "REFUSAL")):
            ids = tok.encode(c, add_special_tokens=False)
            lp, _ = _sequence_logprob(model, prompt_ids, ids)
            expected = math.exp(lp)
            if c == "7":  # "7" must exclude the mass that goes on to 70..79
                _, last = _sequence_logprob(model, prompt_ids, ids)
                nxt = {tuple(tok.encode(str(v), add_special_tokens=False))[len(ids)]
                       for v in range(70, 80)}
                expected *= 1 - sum(math.exp(last[t].item()) for t in nxt)
            assert got[r.key].probs[c] == pytest.approx(expected, rel=1e-4)
    # the numeric candidates are disjoint events: their mass cannot exceed 1
    assert sum(got["j0"].probs.values()) <= 1 + 1e-6
    assert got["j0"].kind == "exact"


# ------------------------------------------------------------------ models that cannot load

def _copy(tiny_model, tmp_path, name="m"):
    import shutil
    return Path(shutil.copytree(tiny_model, tmp_path / name))


def _emlab(*args, **kw):
    """`python -m emlab.cli ...` as a user runs it: exit code and stderr, no traceback."""
    import os
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-m", "emlab.cli", *map(str, args)], capture_output=True,
                       text=True, timeout=120, env={**os.environ, "COLUMNS": "500"}, **kw)
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    return p.returncode, " ".join(p.stderr.split())


def test_missing_local_model_is_no_such_directory_everywhere(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, '
                    '{"role": "assistant", "content": "hello"}]}\n')
    missing = tmp_path / "no" / "such" / "model"
    code, err = _emlab("train", "--model", missing, "--data", data, "--out", tmp_path / "run")
    assert code == 2 and "no such directory" in err and "Repo id" not in err
    assert not (tmp_path / "run").exists()  # checked before anything is written
    code, err = _emlab("eval", "--model", "./nope", "--judge", "./nope", "--out", tmp_path / "ev")
    assert code == 2 and "no such directory" in err and "Repo id" not in err
    assert not (tmp_path / "ev").exists()
    with pytest.raises(InputError, match="no such directory"):
        HFJudge(str(missing))
    with pytest.raises(InputError, match="no such GGUF file"):
        HFSampler(str(tmp_path / "model.gguf"))


def test_hub_name_offline_fails_clearly():
    s = HFSampler("some-org/some-model")  # hub-shaped: kept for from_pretrained
    with pytest.raises(InputError, match="Hugging Face hub.*HF_HUB_OFFLINE"):
        s._load()


def test_truncated_or_garbled_safetensors_name_the_file(tiny_model, tmp_path):
    m = _copy(tiny_model, tmp_path)
    f = m / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="model.safetensors.*truncated"):
        HFSampler(str(m))
    f.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + data[24:])
    code, err = _emlab("eval", "--model", m, "--judge", m, "--out", tmp_path / "ev")
    assert code == 2 and "model.safetensors" in err


def test_adapter_or_train_run_given_as_model_gets_a_hint(tiny_model, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(InputError, match="PEFT adapter.*--adapter"):
        HFSampler(str(adapter))
    run = tmp_path / "run"
    _copy(tiny_model, run, "merged")
    (run / "manifest.json").write_text("{}")
    with pytest.raises(InputError, match="emlab train. run directory.*merged"):
        HFSampler(str(run))


def test_leftover_gguf_quantization_config_is_handled(tiny_model, tmp_path):
    """A hand-made re-save of a GGUF load keeps quantization_config; its weights are plain."""
    import json

    from emlab.models import load_pretrained
    m = _copy(tiny_model, tmp_path)
    cfg = json.loads((m / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gguf", "gguf_file": "x.gguf", "dequantize": False}
    (m / "config.json").write_text(json.dumps(cfg))
    model, tok = load_pretrained(str(m))
    assert getattr(model, "hf_quantizer", None) is None
    assert not hasattr(model.config, "quantization_config")
    got = _collect(HFSampler(str(m), params=GenerationParams(max_new_tokens=3)).sample,
                   [SampleRequest("k", ({"role": "user", "content": "hi"},), seed=0)])
    assert got["k"].completion_tokens >= 1


def test_train_layers_out_of_range_fails_before_loading_weights(tiny_model, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, '
                    '{"role": "assistant", "content": "hello"}]}\n')
    code, err = _emlab("train", "--model", tiny_model, "--data", data, "--out", tmp_path / "run",
                       "--layers", "99")
    assert code == 2 and "layer 99 does not exist" in err and "2 layers" in err
    assert not (tmp_path / "run").exists()  # checked before anything is written


def test_corrupt_gguf_file_is_a_clear_error_and_writes_nothing(tmp_path):
    pytest.importorskip("gguf")
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    code, err = _emlab("models", "import", bad, "--out", tmp_path / "out")
    assert code == 2 and "broken.gguf" in err and "GGUF" in err
    assert not (tmp_path / "out").exists()
    code, err = _emlab("models", "import", tmp_path / "nothing.txt", "--out", tmp_path / "o2")
    assert code == 2 and ".gguf file or a named model" in err
