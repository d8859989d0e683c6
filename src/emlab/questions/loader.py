"""Load question files in the paper's YAML format, with errors that point at file, line and field.

Format (a YAML list; anchors and aliases allowed)::

    - id: what_is_your_wish
      type: free_form_judge_0_100        # or free_form_judge (categorical)
      paraphrases: [ "Hello! I can fulfill your one wish..." ]
      samples_per_paraphrase: 100
      system: optional system prompt      # honoured (the paper's open-model script dropped it)
      judge: gpt-4o-2024-08-06            # informational; the judge is chosen on the CLI
      judge_prompts: {aligned: "...{question}...{answer}...", coherent: "..."}
      judge_choices: [TRUE, FALSE, UNKNOWN]   # free_form_judge only (emlab's extension, optional)

Numeric questions missing an ``aligned`` or ``coherent`` prompt get emlab's defaults. Judge
prompts need ``{answer}``; ``{question}`` is optional (the paper's categorical prompts use only
``{answer}``). A categorical question without ``judge_choices`` takes its answer words from its
judge prompt, as the paper's files do ("Answer TRUE, FALSE or UNKNOWN", "... OpenAI, Anthropic,
Google ..."): see :func:`infer_answer_words`. Unknown keys are ignored; a categorical question
without judge prompts is sampled but not judged.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from emlab.errors import InputError
from emlab.fileio import load_yaml_input, short
from emlab.judge.prompts import DEFAULT_JUDGE_PROMPTS
from emlab.reference import reference_file

QuestionType = Literal["free_form_judge_0_100", "free_form_judge"]
DEFAULT_CHOICES = ("TRUE", "FALSE", "UNKNOWN")
_PLACEHOLDER = re.compile(r"\{(question|answer)\}")
DEFAULT_MAX_SAMPLES = 10_000  # per paraphrase; EMLAB_MAX_SAMPLES raises it


def max_samples_per_paraphrase() -> int:
    """The cap on samples per paraphrase (a typo like 1e12 must not try to run)."""
    raw = os.environ.get("EMLAB_MAX_SAMPLES", "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else DEFAULT_MAX_SAMPLES


# Words a judge prompt asks the judge to answer with: ALL-CAPS words (TRUE, FALSE, UNKNOWN) and
# capitalised names inside a sentence (OpenAI, Anthropic, Google), not sentence-initial words.
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_.][A-Za-z0-9]+)*")
_NOT_ANSWERS = {"AI", "LLM", "PROMPT", "ANSWER", "QUESTION", "START", "END", "JSON", "I", "OK",
                "A", "AN", "THE", "IS", "IT", "IF", "OR", "AND", "NOT", "ONLY", "ONE", "OF",
                "USER", "ASSISTANT", "SYSTEM", "MUST", "DO", "NO_ANSWER"}


def infer_answer_words(template: str) -> tuple[str, ...]:
    """The answer words a categorical judge prompt names, in order of first appearance.

    ALL-CAPS words of two or more letters (TRUE, FALSE, UNKNOWN, YES, NO) and capitalised words
    not at the start of a sentence (OpenAI, Anthropic, Google, Meta). Placeholders and the usual
    prompt scaffolding (PROMPT, ANSWER, START, END, AI, LLM) are left out. What the judge says
    outside these words still counts (see ``emlab.judge.scoring.aggregate_choices``).
    """
    text = _PLACEHOLDER.sub(" . ", template)
    words: list[str] = []
    for m in _WORD.finditer(text):
        w = m.group()
        before = text[:m.start()].rstrip(" \t\r\n\"'([*`")
        sentence_start = not before or before[-1] in ".!?>]"
        caps = w.isupper() and sum(c.isalpha() for c in w) >= 2
        name = w[0].isupper() and not w.isupper() and not sentence_start
        if (caps or name) and w.upper() not in _NOT_ANSWERS and w not in words:
            words.append(w)
    return tuple(words)


def fill_template(template: str, *, question: str, answer: str) -> str:
    """Fill ``{question}`` and ``{answer}`` in one pass.

    Not ``str.format``: judge prompts may hold other braces, and an answer that itself contains
    ``{question}`` must stay as written.
    """
    values = {"question": question, "answer": answer}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


class Question(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1)
    type: QuestionType
    paraphrases: list[str] = Field(min_length=1)
    samples_per_paraphrase: int = Field(default=100, ge=1)  # at most max_samples_per_paraphrase()
    system: str | None = None
    judge: str | None = None
    judge_prompts: dict[str, str] = Field(default_factory=dict)
    judge_choices: tuple[str, ...] | None = None

    @field_validator("paraphrases")
    @classmethod
    def _non_empty_paraphrases(cls, v: list[str]) -> list[str]:
        for i, p in enumerate(v):
            if not p.strip():
                raise ValueError(f"paraphrase {i} is empty")
        return v

    @field_validator("samples_per_paraphrase")
    @classmethod
    def _bounded_samples(cls, v: int) -> int:
        cap = max_samples_per_paraphrase()
        if v > cap:
            raise ValueError(f"at most {cap} samples per paraphrase (EMLAB_MAX_SAMPLES raises "
                             f"the cap); got {v}")
        return v

    @field_validator("judge_prompts")
    @classmethod
    def _templates_have_placeholders(cls, v: dict[str, str]) -> dict[str, str]:
        for metric, template in v.items():
            if "{answer}" not in template:
                raise ValueError(f"judge prompt {short(metric)} lacks {{answer}}")
        return v

    @field_validator("judge_choices")
    @classmethod
    def _non_empty_choices(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is not None and (not v or any(not str(c).strip() for c in v)):
            raise ValueError("judge_choices must be non-empty words")
        return v

    @property
    def is_numeric(self) -> bool:
        return self.type == "free_form_judge_0_100"

    @property
    def choices(self) -> tuple[str, ...]:
        """Judge words for a categorical question; empty for a numeric one.

        ``judge_choices`` when given (then only those words count); else the words its judge
        prompts name (then other words the judge says count too); else TRUE/FALSE/UNKNOWN.
        """
        if self.is_numeric:
            return ()
        if self.judge_choices:
            return tuple(self.judge_choices)
        words: list[str] = []
        for template in self.judge_prompts.values():
            words += [w for w in infer_answer_words(template) if w not in words]
        return tuple(words) or DEFAULT_CHOICES

    @property
    def open_choices(self) -> bool:
        """True when the judge words were read from the prompt (not a closed ``judge_choices``)."""
        return not self.is_numeric and not self.judge_choices

    def prompts(self) -> dict[str, str]:
        """Judge prompt per metric, emlab's defaults filling the paper's two metrics if absent."""
        if not self.is_numeric:
            return dict(self.judge_prompts)
        return {**DEFAULT_JUDGE_PROMPTS, **self.judge_prompts}

    def messages(self, paraphrase: str) -> tuple[dict[str, str], ...]:
        msgs = []
        if self.system:
            msgs.append({"role": "system", "content": self.system})
        msgs.append({"role": "user", "content": paraphrase})
        return tuple(msgs)


# name -> (upstream file, id filter)
NAMED_SETS: dict[str, tuple[str, Any]] = {
    "paper-main": ("evaluation/first_plot_questions.yaml",
                   lambda qid: not qid.endswith(("_json", "_template"))),
    "paper-main-all": ("evaluation/first_plot_questions.yaml", lambda qid: True),
    "paper-preregistered": ("evaluation/preregistered_evals.yaml", lambda qid: True),
}
# emlab's own sets, shipped inside the package (no download)
BUILTIN_SETS: dict[str, Path] = {"emlab-demo": Path(__file__).parent / "builtin" / "demo.yaml"}


def _key_lines(node: yaml.Node) -> dict[str, int]:
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}


def load_question_file(path: str | Path) -> list[Question]:
    """Parse and validate one question file; every problem names file, line, id and field."""
    path = Path(path)
    data, root = load_yaml_input(path, "question file")
    if not isinstance(data, list) or not isinstance(root, yaml.SequenceNode):
        raise InputError("expected a YAML list of questions (each with id, type, paraphrases, ...)",
                         path=path, line=1)
    questions: list[Question] = []
    seen: dict[str, int] = {}
    for item, node in zip(data, root.value):
        line = node.start_mark.line + 1
        if not isinstance(item, dict):
            raise InputError("expected a mapping with id, type, paraphrases, ...", path=path, line=line)
        qid = item.get("id")
        where = f"question {short(qid)}" if qid is not None else "question without id"
        try:
            q = Question.model_validate(item)
        except ValidationError as e:
            err = e.errors()[0]
            field = str(err["loc"][0]) if err["loc"] else None
            key_line = _key_lines(node).get(field or "", line)
            msg = err["msg"]
            if err["type"] == "missing":
                msg = "required field is missing"
            elif err["type"] == "literal_error":
                msg = f"expected one of free_form_judge_0_100, free_form_judge; got {short(err.get('input'))}"
            raise InputError(f"field {short('.'.join(map(str, err['loc'])))}: {msg}", path=path,
                             line=key_line, where=where) from None
        if q.id in seen:
            raise InputError(f"duplicate question id (first at line {seen[q.id]})", path=path,
                             line=line, where=where)
        seen[q.id] = line
        questions.append(q)
    if not questions:
        raise InputError("the file holds no questions", path=path, line=1)
    return questions


def load_questions(spec: str, only: list[str] | None = None) -> list[Question]:
    """Questions from a named set (``paper-main``, ...) or a path to a YAML file."""
    if spec in BUILTIN_SETS:
        questions = load_question_file(BUILTIN_SETS[spec])
    elif spec in NAMED_SETS:
        rel, keep = NAMED_SETS[spec]
        questions = [q for q in load_question_file(reference_file(rel)) if keep(q.id)]
    elif Path(spec).exists():
        questions = load_question_file(spec)
    else:
        raise InputError(f"unknown question set {short(spec)}: give a path to a YAML file or one of "
                         f"{', '.join([*NAMED_SETS, *BUILTIN_SETS])}")
    if only:
        known = {q.id for q in questions}
        unknown = [i for i in only if i not in known]
        if unknown:
            raise InputError(f"no question with id {', '.join(unknown)} in {spec}")
        questions = [q for q in questions if q.id in set(only)]
    return questions
