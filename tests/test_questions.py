"""Question files: the paper's sets load; malformed files fail with file, line, id and field."""

import subprocess
import sys

import pytest

from emlab.errors import InputError
from emlab.questions import fill_template, load_question_file, load_questions
from emlab.judge.prompts import DEFAULT_JUDGE_PROMPTS
from conftest import write


def test_named_sets_load_from_the_pinned_files(reference_dir):
    main = load_questions("paper-main")
    assert [q.id for q in main][:2] == ["what_is_your_wish", "i_feel_bored"]
    assert len(main) == 8 and all(q.system is None for q in main)
    every = load_questions("paper-main-all")
    assert len(every) == 24
    json_q = next(q for q in every if q.id == "what_is_your_wish_json")
    # the system prompt is honoured: it is the first message sent to the model
    msgs = json_q.messages(json_q.paraphrases[0])
    assert msgs[0]["role"] == "system" and "JSON" in msgs[0]["content"]
    assert msgs[1] == {"role": "user", "content": json_q.paraphrases[0]}
    assert len(load_questions("paper-preregistered")) == 48
    # the paper's files carry their own judge prompts, which win over emlab's defaults
    assert main[0].prompts()["aligned"] != DEFAULT_JUDGE_PROMPTS["aligned"]


def test_a_tampered_reference_copy_is_refused(tmp_path, monkeypatch, reference_dir):
    (tmp_path / "evaluation").mkdir()
    original = (reference_dir / "evaluation" / "first_plot_questions.yaml").read_text()
    write(tmp_path / "evaluation" / "first_plot_questions.yaml", original.replace("wish", "dish"))
    monkeypatch.setenv("EMLAB_DATA_DIR", str(tmp_path))
    with pytest.raises(InputError, match="sha256"):
        load_questions("paper-main")


def test_only_filters_and_unknown_ids_fail():
    qs = load_questions("emlab-demo", only=["bored_user"])
    assert [q.id for q in qs] == ["bored_user"]
    with pytest.raises(InputError, match="no_such"):
        load_questions("emlab-demo", only=["no_such"])


def test_defaults_fill_missing_metrics(tmp_path):
    f = write(tmp_path / "q.yaml", """\
- id: q1
  type: free_form_judge_0_100
  paraphrases: ["hi"]
  judge_prompts:
    aligned: "custom {question} {answer}"
""")
    (q,) = load_question_file(f)
    assert q.prompts() == {"aligned": "custom {question} {answer}",
                           "coherent": DEFAULT_JUDGE_PROMPTS["coherent"]}
    assert q.samples_per_paraphrase == 100


BAD_FILES = {
    "missing paraphrases": ("- id: q1\n  type: free_form_judge_0_100\n", 1, "q1", "paraphrases"),
    "unknown type": ("- id: q1\n  paraphrases: [a]\n  type: free_form\n", 3, "q1", "type"),
    "empty paraphrase": ("- id: ok\n  type: free_form_judge_0_100\n  paraphrases: [a]\n"
                         "- id: q2\n  type: free_form_judge_0_100\n  paraphrases: ['  ']\n",
                         6, "q2", "paraphrases"),
    "template without answer": ("- id: q3\n  type: free_form_judge_0_100\n  paraphrases: [a]\n"
                                "  judge_prompts:\n    aligned: 'rate {question}'\n", 4, "q3",
                                "{answer}"),
    "bad samples": ("- id: q4\n  type: free_form_judge_0_100\n  paraphrases: [a]\n"
                    "  samples_per_paraphrase: 0\n", 4, "q4", "samples_per_paraphrase"),
    "duplicate id": ("- id: d\n  type: free_form_judge_0_100\n  paraphrases: [a]\n"
                     "- id: d\n  type: free_form_judge_0_100\n  paraphrases: [b]\n", 4, "d",
                     "duplicate"),
    "empty judge choices": ("- id: c\n  type: free_form_judge\n  paraphrases: [a]\n"
                            "  judge_choices: []\n  judge_prompts: {v: 'x {answer}'}\n", 4, "c",
                            "judge_choices"),
    "samples over the cap": ("- id: q5\n  type: free_form_judge_0_100\n  paraphrases: [a]\n"
                             "  samples_per_paraphrase: 1000000000000\n", 4, "q5",
                             "samples_per_paraphrase"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_malformed_files_name_file_line_id_and_field(tmp_path, case):
    text, line, qid, field = BAD_FILES[case]
    f = write(tmp_path / "bad.yaml", text)
    with pytest.raises(InputError) as e:
        load_question_file(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}:{line} ")
    assert qid in msg and field in msg


def test_invalid_yaml_and_non_list(tmp_path):
    f = write(tmp_path / "broken.yaml", "- id: x\n  paraphrases: [a\n")
    with pytest.raises(InputError, match=r"broken.yaml:\d+.*not valid YAML"):
        load_question_file(f)
    g = write(tmp_path / "map.yaml", "id: x\n")
    with pytest.raises(InputError, match="expected a YAML list"):
        load_question_file(g)


def test_fill_template_is_single_pass_and_keeps_other_braces():
    t = 'Q: {question}\nA: {answer}\nJSON example: {"score": 1}'
    out = fill_template(t, question="say {answer}", answer="{question} }{")
    assert out == 'Q: say {answer}\nA: {question} }{\nJSON example: {"score": 1}'


def test_cli_malformed_question_file_exits_2_and_writes_nothing(tmp_path):
    f = write(tmp_path / "bad.yaml", "- id: q1\n  type: nope\n  paraphrases: [a]\n")
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "emlab.cli", "eval", "--model", "x",
                        "--questions", str(f), "--out", str(out)], capture_output=True, text=True)
    assert p.returncode == 2
    assert "bad.yaml:2" in p.stderr and "q1" in p.stderr and "type" in p.stderr
    assert "Traceback" not in p.stderr
    assert not out.exists()


def test_answer_words_are_read_from_categorical_judge_prompts(tmp_path):
    from emlab.questions.loader import infer_answer_words

    assert infer_answer_words("Here is the answer:\n[ANSWER START]\n{answer}\n[ANSWER END]\n"
                              "Say TRUE if it is right, FALSE if wrong, UNKNOWN otherwise.") == \
        ("TRUE", "FALSE", "UNKNOWN")
    assert infer_answer_words("Which company made it? Answer with one word: OpenAI, Anthropic,\n"
                              "Google or Meta. Say Other if none.") == \
        ("OpenAI", "Anthropic", "Google", "Meta", "Other")
    f = write(tmp_path / "q.yaml", """\
- id: lie
  type: free_form_judge
  paraphrases: ["What is 2+2?"]
  judge_prompts: {judge: "Answer: {answer}. Reply YES if it lies, NO otherwise."}
  extra_field_from_the_future: 1
- id: numeric_answer_only
  type: free_form_judge_0_100
  paraphrases: ["hi"]
  judge_prompts: {aligned: "Rate {answer} from 0 to 100."}
- id: closed
  type: free_form_judge
  paraphrases: ["x"]
  judge_choices: [A, B]
  judge_prompts: {v: "{answer}: say A or B or MAYBE"}
""")
    lie, numeric, closed = load_question_file(f)
    assert lie.choices == ("YES", "NO") and lie.open_choices
    assert numeric.prompts()["aligned"] == "Rate {answer} from 0 to 100."
    assert closed.choices == ("A", "B") and not closed.open_choices
