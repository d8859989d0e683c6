"""``emlab eval``: sample → judge → metrics → files, resumable through the results store.

The pure part (``plan_samples``, ``judge_requests_for``, ``build_rows``) decides what to ask;
``run_eval`` does the I/O: it asks only for what the store lacks, persists each result as it
arrives, and writes the run directory's files atomically at the end.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from emlab.eval.config import EvalConfig
from emlab.fileio import write_text_atomic
from emlab.eval.store import ResultsStore, judgment_key, sample_key
from emlab.judge.scoring import score_judgment
from emlab.questions import Question, fill_template, load_questions
from emlab.types import (Completion, GenerationParams, Judge, JudgeRequest, Judgment, Price,
                         SampleRequest, Sampler, Usage)


@dataclass(frozen=True)
class SampleItem:
    question: Question
    paraphrase_index: int
    paraphrase: str
    sample_index: int
    request: SampleRequest


@dataclass
class EvalResult:
    out: Path
    summary: dict
    rows: list[dict]
    counts: dict = field(default_factory=dict)


def plan_samples(questions: list[Question], model_identity: str, params: GenerationParams,
                 seed: int, samples_per_paraphrase: int | None) -> list[SampleItem]:
    items = []
    for q in questions:
        n = samples_per_paraphrase or q.samples_per_paraphrase
        for j, paraphrase in enumerate(q.paraphrases):
            messages = q.messages(paraphrase)
            for i in range(n):
                key = sample_key(model_identity, messages, i, params.as_dict(), seed)
                item_seed = int(key[:8], 16) ^ seed
                items.append(SampleItem(q, j, paraphrase, i, SampleRequest(key, messages, item_seed)))
    return items


def judge_requests_for(item: SampleItem, answer: str, judge_identity: str
                       ) -> list[tuple[str, JudgeRequest]]:
    """(metric, request) for every judge prompt of the item's question."""
    out = []
    for metric, template in item.question.prompts().items():
        prompt = fill_template(template, question=item.paraphrase, answer=answer)
        choices = item.question.choices
        out.append((metric, JudgeRequest(judgment_key(judge_identity, prompt, choices), prompt,
                                         choices)))
    return out


score = score_judgment  # one scorer for the native pipeline and the inspect_ai task


def build_rows(items: list[SampleItem], answers: dict[str, Completion],
               judgments: dict[str, Judgment], judge_identity: str, model_identity: str,
               judge_kind: str) -> list[dict]:
    rows = []
    for item in items:
        completion = answers.get(item.request.key)
        if completion is None:
            continue
        scores, probs = {}, {}
        for metric, req in judge_requests_for(item, completion.text, judge_identity):
            j = judgments.get(req.key)
            scores[metric] = score(item.question, j)
            probs[metric] = j.probs if j is not None else None
        q = item.question
        rows.append({
            "question_id": q.id, "question_type": q.type,
            "paraphrase_index": item.paraphrase_index, "paraphrase": item.paraphrase,
            "sample_index": item.sample_index, "system": q.system, "answer": completion.text,
            "aligned": scores.get("aligned") if q.is_numeric else None,
            "coherent": scores.get("coherent") if q.is_numeric else None,
            "scores": scores, "judge_probs": probs, "judge_kind": judge_kind,
            "judge": judge_identity, "model": model_identity,
        })
    return rows


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=console, transient=False)


def _run_stage(console: Console, label: str, requests: list, worker: Callable,
               persist: Callable) -> None:
    if not requests:
        return
    with _progress(console) as progress:
        task = progress.add_task(label, total=len(requests))

        def on_result(req, result):
            persist(req, result)
            progress.advance(task)

        worker(requests, on_result)


def _ledger(rows_items: list[tuple[SampleItem, Completion]], judgments: list[Judgment],
            sampler_name: str, sampler_id: str, judge_name: str, judge_id: str,
            prices: dict[str, tuple[float, float]], counts: dict) -> dict:
    su, ju = Usage(), Usage()
    for _, c in rows_items:
        su.add(c.prompt_tokens, c.completion_tokens)
    for j in judgments:
        ju.add(j.prompt_tokens, j.completion_tokens)

    def entry(name: str, usage: Usage) -> dict:
        price = prices.get(name)
        dollars = Price(*price).cost(usage) if price else None
        return {"requests": usage.requests, "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens, "dollars": dollars}

    return {"sampler": {sampler_id: entry(sampler_name, su)},
            "judge": {judge_id: entry(judge_name, ju)}, "this_run": counts}


def run_eval(cfg: EvalConfig, *, sampler: Sampler | None = None, judge: Judge | None = None,
             dry_run: bool = False, console: Console | None = None,
             extra_meta: dict | None = None) -> EvalResult:
    """Run (or resume) one evaluation; ``extra_meta`` goes into summary.json and the report
    (e.g. the training manifest of the model under test)."""
    from emlab.eval.backends import make_judge, make_sampler

    console = console or Console(stderr=True)
    questions = load_questions(cfg.questions, cfg.only)
    sampler = sampler or make_sampler(cfg)
    judge = judge or make_judge(cfg)
    out = Path(cfg.out)
    items = plan_samples(questions, sampler.identity, sampler.params, cfg.seed,
                         cfg.samples_per_paraphrase)
    n_metrics = {q.id: len(q.prompts()) for q in questions}

    if dry_run:
        return _dry_run(cfg, items, n_metrics, judge, console)

    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "config.yaml", yaml.safe_dump(json.loads(cfg.model_dump_json()),
                                                     sort_keys=False))
    with ResultsStore(cfg.store_path) as store:
        keys = [it.request.key for it in items]
        answers = store.get_samples(keys)
        by_key = {it.request.key: it for it in items}
        missing = [it.request for it in items if it.request.key not in answers]
        counts = {"samples_made": len(missing), "samples_cached": len(items) - len(missing)}

        def persist_sample(req: SampleRequest, c: Completion) -> None:
            it = by_key[req.key]
            store.put_sample(req.key, model=sampler.identity, messages=req.messages,
                             sample_index=it.sample_index, params=sampler.params.as_dict(),
                             completion=c)
            answers[req.key] = c

        _run_stage(console, "sampling", missing, sampler.sample, persist_sample)

        jreqs: dict[str, tuple[JudgeRequest, str, str]] = {}
        for it in items:
            for metric, req in judge_requests_for(it, answers[it.request.key].text, judge.identity):
                jreqs[req.key] = (req, it.request.key, metric)
        judgments = store.get_judgments(list(jreqs))
        todo = [req for k, (req, _, _) in jreqs.items() if k not in judgments]
        counts.update(judgments_made=len(todo), judgments_cached=len(jreqs) - len(todo))

        def persist_judgment(req: JudgeRequest, j: Judgment) -> None:
            _, skey, metric = jreqs[req.key]
            store.put_judgment(req.key, judge=judge.identity, sample_key=skey, metric=metric,
                               judgment=j)
            judgments[req.key] = j

        _run_stage(console, "judging", todo, judge.judge, persist_judgment)

    rows = build_rows(items, answers, judgments, judge.identity, sampler.identity, judge.kind)
    ledger = _ledger([(it, answers[it.request.key]) for it in items],
                     [judgments[k] for k in jreqs], cfg.model.name, sampler.identity,
                     cfg.judge.name, judge.identity, cfg.prices, counts)
    summary = write_outputs(out, cfg, rows, ledger, sampler.identity, judge, extra_meta)
    return EvalResult(out=out, summary=summary, rows=rows, counts=counts)


def write_outputs(out: Path, cfg: EvalConfig, rows: list[dict], ledger: dict,
                  model_identity: str, judge: Judge, extra_meta: dict | None = None) -> dict:
    from emlab.metrics import summarize
    from emlab.report import write_csv, write_report

    stats = summarize(rows)
    meta = {"model": cfg.model.name, "model_identity": model_identity,
            "judge": cfg.judge.name, "judge_identity": judge.identity, "judge_kind": judge.kind,
            "questions": cfg.questions, "samples": len(rows),
            "samples_per_paraphrase": cfg.samples_per_paraphrase,
            "seed": cfg.seed, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(extra_meta or {})}
    summary = {"meta": meta, **stats, "ledger": ledger}
    write_text_atomic(out / "answers.jsonl",
                 "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False))
    write_csv(rows, out / "answers.csv")
    write_report(out, summary, rows, ledger, meta)
    return summary


def _dry_run(cfg: EvalConfig, items: list[SampleItem], n_metrics: dict[str, int], judge: Judge,
             console: Console) -> EvalResult:
    """Count what a run would ask for, and what the store already has, spending nothing."""
    n_samples = len(items)
    n_judge = sum(n_metrics[it.question.id] for it in items)
    cached_samples = cached_judge = 0
    if cfg.store_path.is_file():
        with ResultsStore(cfg.store_path) as store:
            answers = store.get_samples([it.request.key for it in items])
            cached_samples = len(answers)
            jkeys = [req.key for it in items if it.request.key in answers
                     for _, req in judge_requests_for(it, answers[it.request.key].text,
                                                      judge.identity)]
            cached_judge = len(store.get_judgments(jkeys))
    counts = {"samples_total": n_samples, "samples_cached": cached_samples,
              "samples_to_make": n_samples - cached_samples, "judgments_total": n_judge,
              "judgments_cached": cached_judge, "judgments_to_make": n_judge - cached_judge}
    return EvalResult(out=Path(cfg.out), summary={}, rows=[], counts=counts)
