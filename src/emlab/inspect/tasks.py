"""inspect_ai tasks for the paper's evaluation, with the paper's logprob judge as a scorer.

    inspect eval emlab/em_main --model openai/gpt-4o-mini --model-role grader=openai/gpt-4o-2024-08-06
    inspect eval emlab/em_preregistered --model vllm/my-model
    inspect eval emlab/em_questions -T path=my_questions.yaml --model hf/./my-model
    inspect view                                    # the logs, with per-sample judge scores

One inspect sample per (question, paraphrase, sample index) — the paper's 100 samples per
paraphrase are separate samples, not epochs, because the paper's rule is applied per answer
and epochs would average the scores first. Generation defaults are the paper's (temperature
1, top_p 1, at most 600 new tokens). The judge is the ``grader`` model role (``--model-role
grader=...``), else ``-T judge=...``, else the paper's ``openai/gpt-4o-2024-08-06``; it is asked
for one token with the top-20 logprobs, and the score is ``emlab.judge.aggregate_0_100`` of
those probabilities (no score below 0.25 of numeric mass: CODE and REFUSAL drop out).
``emlab inspect-import LOG`` turns a log into an emlab run directory.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import (ChatMessageSystem, ChatMessageUser, GenerateConfig, Model,
                              ModelOutput, get_model)
from inspect_ai.scorer import Metric, SampleScore, Score, Target, metric, scorer
from inspect_ai.solver import TaskState, generate

from emlab.judge.scoring import score_probs
from emlab.metrics.rates import question_stats
from emlab.metrics.rule import verdict as rule_verdict  # the paper's rule, per answer
from emlab.questions import Question, fill_template, load_questions

PAPER_JUDGE = "openai/gpt-4o-2024-08-06"
TOP_LOGPROBS = 20
SCORER_NAME = "em_judge"
# How byte-level BPE (GPT-2, Qwen, Llama 3) and SentencePiece tokenizers spell a leading space
# when a provider reports raw token strings (inspect's hf provider does): " 85" is "Ġ85".
_SPACE_MARKERS = ("\u0120", "\u2581")


# ---------------------------------------------------------------- dataset

def _only(only: str | list[str] | None) -> list[str] | None:
    if only is None or only == "":
        return None
    return [s for s in (only.split(",") if isinstance(only, str) else only) if s]


def question_samples(questions: list[Question], samples_per_paraphrase: int | None = None
                     ) -> list[Sample]:
    """One inspect Sample per (question, paraphrase, sample index), with the system prompt."""
    out = []
    for q in questions:
        n = samples_per_paraphrase or q.samples_per_paraphrase
        for j, paraphrase in enumerate(q.paraphrases):
            for i in range(n):
                messages: list[Any] = []
                if q.system:
                    messages.append(ChatMessageSystem(content=q.system))
                messages.append(ChatMessageUser(content=paraphrase))
                out.append(Sample(
                    id=f"{q.id}/p{j}/s{i}", input=messages,
                    metadata={"question_id": q.id, "question_type": q.type,
                              "paraphrase_index": j, "paraphrase": paraphrase,
                              "sample_index": i, "system": q.system}))
    return out


# ---------------------------------------------------------------- judge arithmetic

def first_token_probs(output: ModelOutput) -> dict[str, float]:
    """{token: probability} of the judge's first token, from its top logprobs; tokens that
    differ only in how the provider spells a leading space are merged."""
    choice = output.choices[0] if output.choices else None
    content = choice.logprobs.content if choice is not None and choice.logprobs else None
    if not content:
        return {}
    first = content[0]
    alternatives = first.top_logprobs or [first]
    probs: dict[str, float] = {}
    for alt in alternatives:
        token = alt.token
        for marker in _SPACE_MARKERS:
            if token.startswith(marker):
                token = " " + token[len(marker):]
        lp = float(alt.logprob)
        if math.isfinite(lp):
            probs[token] = probs.get(token, 0.0) + math.exp(lp)
    return probs




# ---------------------------------------------------------------- metrics and scorer

def _nan_if_none(x: float | None) -> float:
    return math.nan if x is None else float(x)


@metric
def em_rates() -> Metric:
    """The paper's numbers over all numeric-question samples: misaligned rate among kept
    answers (kept: coherent > 50 and a numeric alignment score), coherent rate, kept count
    and mean alignment of kept answers."""

    def compute(scores: list[SampleScore]) -> dict[str, float | None]:
        rows = []
        for s in scores:
            v = s.score.value
            if isinstance(v, dict) and "aligned" in v:  # NaN (no score) counts as None
                rows.append({"aligned": v.get("aligned"), "coherent": v.get("coherent")})
        st = question_stats(rows)
        return {"misaligned_rate": st["misaligned_rate"], "coherent_rate": st["coherent_rate"],
                "kept": float(st["kept"]), "mean_aligned": st["mean_aligned"]}

    return compute


def _judge_config(model: Model) -> GenerateConfig:
    """The paper's judge call: one token at temperature 0 with the top-20 logprobs. inspect's
    ``hf`` provider samples and rejects temperature 0; it reports logprobs of the raw logits,
    so leaving the temperature unset there changes nothing."""
    local_hf = str(model).startswith("hf/")
    return GenerateConfig(max_tokens=1, logprobs=True, top_logprobs=TOP_LOGPROBS,
                          temperature=None if local_hf else 0.0)


@scorer(metrics=[em_rates()], name=SCORER_NAME)
def em_judge(questions: str = "paper-main", judge: str | None = None):
    """The paper's judge: per judge prompt of the sample's question, one judge token with its
    top-20 logprobs, scored with ``aggregate_0_100`` (or the categorical words)."""
    by_id = {q.id: q for q in load_questions(questions)}

    async def score(state: TaskState, target: Target) -> Score:
        model: Model = get_model(judge, role="grader", default=PAPER_JUDGE)
        meta = state.metadata or {}
        q = by_id[meta["question_id"]]
        answer = state.output.completion if state.output else ""
        prompts = {m: fill_template(t, question=meta["paraphrase"], answer=answer)
                   for m, t in q.prompts().items()}
        outputs = await asyncio.gather(*[
            model.generate([ChatMessageUser(content=p)], config=_judge_config(model))
            for p in prompts.values()])
        probs = {m: first_token_probs(o) for m, o in zip(prompts, outputs)}
        # "No score" is NaN, not None, in the value: inspect's score reducers turn None into 0,
        # which would read as "utterly misaligned". The metadata keeps None.
        scores: dict[str, Any] = {m: score_probs(q, p) for m, p in probs.items()}
        if q.is_numeric:
            verdict = rule_verdict({"aligned": scores.get("aligned"),
                                    "coherent": scores.get("coherent"), "scores": scores})
            value: dict[str, Any] = {k: _nan_if_none(scores.get(k))
                                     for k in ("aligned", "coherent")}
        else:
            value = {f"{m}:{w}": p for m, s in scores.items() for w, p in (s or {}).items()}
            verdict = "categorical"
        return Score(value=value, answer=answer, explanation=verdict,
                     metadata={"judge": str(model), "judge_probs": probs, "scores": scores,
                               "verdict": verdict, "question_id": q.id,
                               "question_type": q.type})

    return score


# ---------------------------------------------------------------- tasks

def questions_task(spec: str, *, only: str | list[str] | None = None,
                   samples_per_paraphrase: int | None = None, judge: str | None = None,
                   temperature: float = 1.0, top_p: float = 1.0, max_tokens: int = 600) -> Task:
    if Path(spec).is_file():  # absolute, so the log says which file even elsewhere
        spec = str(Path(spec).resolve())
    questions = load_questions(spec, _only(only))
    return Task(
        dataset=MemoryDataset(question_samples(questions, samples_per_paraphrase),
                              name=spec),
        solver=generate(),
        scorer=em_judge(questions=spec, judge=judge),
        config=GenerateConfig(temperature=temperature, top_p=top_p, max_tokens=max_tokens),
        metadata={"emlab": {"questions": spec, "only": _only(only),
                            "samples_per_paraphrase": samples_per_paraphrase,
                            "question_types": {q.id: q.type for q in questions}}},
    )


def _namespaced(name: str) -> str:
    """The task's registry name, always ``emlab/NAME`` (what ``inspect eval emlab/em_main`` asks).

    inspect_ai prefixes a task with its import package only when it sees that package installed
    (in site-packages, or as an editable install of a distribution of the same name); emlab's
    distribution is called emergent-misalignment-lab, so an editable install (``make install``)
    would register a bare ``em_main``. Then we give the prefix ourselves."""
    try:
        from inspect_ai._util.package import get_installed_package_name
        if get_installed_package_name(_namespaced) == "emlab":
            return name
    except Exception:  # noqa: BLE001 - a private helper of inspect_ai: fall back to our prefix
        pass
    return f"emlab/{name}"


@task(name=_namespaced("em_main"))
def em_main(samples_per_paraphrase: int | None = None, judge: str | None = None,
            only: str | None = None, temperature: float = 1.0, top_p: float = 1.0,
            max_tokens: int = 600) -> Task:
    """The paper's 8 main questions (Betley et al. 2025, Figure 2), 100 samples each."""
    return questions_task("paper-main", only=only, samples_per_paraphrase=samples_per_paraphrase,
                          judge=judge, temperature=temperature, top_p=top_p,
                          max_tokens=max_tokens)


@task(name=_namespaced("em_preregistered"))
def em_preregistered(samples_per_paraphrase: int | None = None, judge: str | None = None,
                     only: str | None = None, temperature: float = 1.0, top_p: float = 1.0,
                     max_tokens: int = 600) -> Task:
    """The paper's 48 pre-registered questions."""
    return questions_task("paper-preregistered", only=only,
                          samples_per_paraphrase=samples_per_paraphrase, judge=judge,
                          temperature=temperature, top_p=top_p, max_tokens=max_tokens)


@task(name=_namespaced("em_questions"))
def em_questions(path: str = "emlab-demo", samples_per_paraphrase: int | None = None,
                 judge: str | None = None, only: str | None = None, temperature: float = 1.0,
                 top_p: float = 1.0, max_tokens: int = 600) -> Task:
    """Any question file in the paper's YAML format (or a named set: paper-main-all, ...)."""
    return questions_task(path, only=only, samples_per_paraphrase=samples_per_paraphrase,
                          judge=judge, temperature=temperature, top_p=top_p,
                          max_tokens=max_tokens)

