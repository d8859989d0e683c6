"""``emlab eval``: sample → judge → metrics → files, resumable through the results store.

The pure part (``plan_samples``, ``judge_requests_for``, ``build_rows``) decides what to ask;
``run_eval`` does the I/O: it asks only for what the store lacks, persists each result as it
arrives, and writes the run directory's files at the end as one set (staged, then moved in
with summary.json last: a directory with summary.json is complete).

One bad item never sinks a run: a request that fails for good (a 400 from a content filter, a
reply without choices, a timeout after every retry) is recorded in the store with its question,
paraphrase and sample index, and the run goes on; the failures are listed in summary.json
(``failures``), the report and the terminal, and ``EvalResult.failures``. A rerun retries only
the failed items (``skip_failed`` leaves them alone). When more than ``max_failures`` of a
stage's items fail, no new request starts and the outputs are written for what finished.
Items in progress are leased in the store, so two processes on one store never pay twice.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from emlab.eval.config import EvalConfig
from emlab.fileio import write_text_atomic
from emlab.errors import InputError
from emlab.eval.store import ResultsStore, judgment_key, new_owner, sample_key
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


MAX_FAILURES_LISTED = 1000  # in summary.json; the store keeps every one


@dataclass
class EvalResult:
    """What a run produced. ``failures``: one dict per item that failed for good (``side``
    sample/judge, ``question_id``, ``paraphrase_index``, ``sample_index``, ``metric``, ``error``,
    ``status`` failed/skipped); ``stopped_early``: the ``max_failures`` limit was passed. Callers
    such as check and sweep should treat a result with failures as partial (see ``complete``)."""

    out: Path
    summary: dict
    rows: list[dict]
    counts: dict = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    stopped_early: bool = False

    @property
    def complete(self) -> bool:
        return not self.failures and not self.stopped_early


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
               judge_kind: str, complete_only: bool = False) -> list[dict]:
    """One row per answered item; ``complete_only``: only items with every judgment (so an
    unjudged answer never counts as "not coherent")."""
    rows = []
    for item in items:
        completion = answers.get(item.request.key)
        if completion is None:
            continue
        scores, probs = {}, {}
        requests = judge_requests_for(item, completion.text, judge_identity)
        if complete_only and any(req.key not in judgments for _, req in requests):
            continue
        for metric, req in requests:
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


def _sample_label(item: SampleItem) -> str:
    return (f"question {item.question.id!r}, paraphrase {item.paraphrase_index}, "
            f"sample {item.sample_index}")


def _attempts(backend: object, key: str) -> int:
    """HTTP requests sent for ``key`` (retries included) by an API backend; 1 for others."""
    endpoint = getattr(backend, "endpoint", None)
    counts = getattr(endpoint, "attempts", None)
    return counts.pop(key, 1) if isinstance(counts, dict) else 1


def _takes_on_error(method: Callable) -> bool:
    try:
        return "on_error" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


class _Heartbeat:
    """Renews this process's leases in the store while a run is in progress."""

    def __init__(self, store: ResultsStore, owner: str, lease_seconds: float):
        self.store, self.owner, self.lease = store, owner, lease_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="emlab-lease")

    def _beat(self) -> None:
        while not self._stop.wait(self.lease / 3):
            try:
                self.store.renew(self.owner, self.lease)
            except Exception:  # noqa: BLE001 - a missed renewal only shortens the lease
                pass

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.store.release(self.owner)


@dataclass
class _Stage:
    """One side of a run (sampling or judging): what it asked, what failed, whether it stopped."""

    side: str
    made: int = 0
    failures: list[dict] = field(default_factory=list)
    stopped: bool = False
    waited_for_others: int = 0


def _run_side(console: Console, store: ResultsStore, owner: str, side: str, title: str,
              todo: dict[str, tuple[Any, str, dict]], total: int, backend: object,
              worker: Callable, persist: Callable, fetch: Callable, cfg: EvalConfig,
              run_started: float, stage: _Stage) -> None:
    """Ask for every item of ``todo`` (key -> (request, label, failure info)) once, across
    processes: claim what nobody holds, wait for what another live process holds, record
    every permanent failure, and stop starting new requests past ``cfg.max_failures``."""
    pending = dict(todo)
    if cfg.skip_failed and pending:
        for key, w in store.work(list(pending)).items():
            if w["error"] and w["owner"] is None:
                _, _, info = pending.pop(key)
                stage.failures.append({**info, "error": w["error"], "status": "skipped"})
    if not pending:
        return
    limit = cfg.max_failures * total
    new_failures = 0
    with_on_error = _takes_on_error(worker)

    with _progress(console) as progress:
        task = progress.add_task(title, total=len(pending))

        def fail(key: str, message: str) -> bool:
            nonlocal new_failures
            _, label, info = pending[key]
            store.finish(key, _attempts(backend, key), error=message)
            stage.failures.append({**info, "error": message, "status": "failed"})
            new_failures += 1
            progress.advance(task)
            if new_failures > limit and not stage.stopped:
                stage.stopped = True
            return stage.stopped

        while pending and not stage.stopped:
            claimed = store.claim(side, {k: v[1] for k, v in pending.items()}, owner,
                                  cfg.lease_seconds, retry_failed_before=run_started)
            if claimed:
                delivered: set[str] = set()

                def on_result(req, result) -> None:
                    persist(req, result)
                    store.finish(req.key, _attempts(backend, req.key))
                    delivered.add(req.key)
                    stage.made += 1
                    progress.advance(task)

                def on_error(req, message: str) -> bool:
                    delivered.add(req.key)
                    return fail(req.key, f"{pending[req.key][1]}: {message}")

                requests = [pending[k][0] for k in claimed]
                if with_on_error:
                    worker(requests, on_result, on_error=on_error)
                else:
                    try:
                        worker(requests, on_result)
                    except InputError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - every unfinished item failed
                        message = f"{type(exc).__name__}: {exc}"
                        for k in claimed:
                            if k not in delivered and not stage.stopped:
                                delivered.add(k)
                                fail(k, f"{pending[k][1]}: {message}")
                for k in claimed:
                    if k in delivered or not stage.stopped:
                        pending.pop(k, None)
                continue
            # Everything left is held by other live processes (or failed there during this
            # run): take over their results as they arrive, and their items when leases expire.
            found = fetch(list(pending))
            for key in found:
                pending.pop(key)
                stage.waited_for_others += 1
                progress.advance(task)
            for key, w in store.work(list(pending)).items():
                if w["error"] and w["owner"] is None and (w["failed_at"] or 0) >= run_started:
                    _, _, info = pending.pop(key)
                    stage.failures.append({**info, "error": w["error"], "status": "failed"})
                    progress.advance(task)
            if pending and not found:
                time.sleep(0.2)


def _ledger(rows_items: list[tuple[SampleItem, Completion]], judgments: list[Judgment],
            sampler_name: str, sampler_id: str, judge_name: str, judge_id: str,
            prices: dict[str, tuple[float, float]], counts: dict,
            sent: dict[str, int] | None = None) -> dict:
    """Tokens and dollars of the answers and judgments the results rest on; ``sent``: the
    requests the store counted for them (every attempt, failed and retried ones included)."""
    su, ju = Usage(), Usage()
    for _, c in rows_items:
        su.add(c.prompt_tokens, c.completion_tokens)
    for j in judgments:
        ju.add(j.prompt_tokens, j.completion_tokens)

    def entry(name: str, usage: Usage, sent: int | None) -> dict:
        price = prices.get(name)
        dollars = Price(*price).cost(usage) if price else None
        out = {"requests": usage.requests, "prompt_tokens": usage.prompt_tokens,
               "completion_tokens": usage.completion_tokens, "dollars": dollars}
        if sent is not None:  # every HTTP request sent, retries and abandoned ones included
            out["requests_sent"] = max(sent, usage.requests)
        return out

    sent = sent or {}
    return {"sampler": {sampler_id: entry(sampler_name, su, sent.get("sampler"))},
            "judge": {judge_id: entry(judge_name, ju, sent.get("judge"))}, "this_run": counts}


def run_eval(cfg: EvalConfig, *, sampler: Sampler | None = None, judge: Judge | None = None,
             dry_run: bool = False, console: Console | None = None,
             extra_meta: dict | None = None) -> EvalResult:
    """Run (or resume) one evaluation; ``extra_meta`` goes into summary.json and the report
    (e.g. the training manifest of the model under test).

    Raises InputError for bad input (before anything is written) and BackendError when no
    item could be finished at all; otherwise returns, with ``failures`` for what failed.
    """
    from emlab.eval.backends import make_judge, make_sampler
    from emlab.openai_client import BackendError

    console = console or Console(stderr=True)
    questions = load_questions(cfg.questions, cfg.only)
    sampler = sampler or make_sampler(cfg)
    judge = judge or make_judge(cfg)
    out = Path(cfg.out)
    if dry_run:
        return _dry_run(cfg, questions, sampler, judge, console)
    items = plan_samples(questions, sampler.identity, sampler.params, cfg.seed,
                         cfg.samples_per_paraphrase)

    created_out = not out.exists()
    created_store = not cfg.store_path.exists()
    run_started = time.time()
    owner = new_owner()
    by_key = {it.request.key: it for it in items}
    store = ResultsStore(cfg.store_path)
    try:
        with _Heartbeat(store, owner, cfg.lease_seconds):
            answers = store.get_samples(list(by_key))
            todo = {it.request.key: (it.request, _sample_label(it),
                                     {"side": "sample", "question_id": it.question.id,
                                      "paraphrase_index": it.paraphrase_index,
                                      "sample_index": it.sample_index, "key": it.request.key})
                    for it in items if it.request.key not in answers}
            counts = {"samples_made": 0, "samples_cached": len(items) - len(todo)}
            sampling = _Stage("sample")

            def persist_sample(req: SampleRequest, c: Completion) -> None:
                it = by_key[req.key]
                store.put_sample(req.key, model=sampler.identity, messages=req.messages,
                                 sample_index=it.sample_index, params=sampler.params.as_dict(),
                                 completion=c)
                answers[req.key] = c

            def fetch_samples(keys: list[str]) -> list[str]:
                found = store.get_samples(keys)
                answers.update(found)
                return list(found)

            _run_side(console, store, owner, "sample", "sampling", todo, len(items), sampler,
                      sampler.sample, persist_sample, fetch_samples, cfg, run_started, sampling)
            counts["samples_made"] = sampling.made

            jreqs: dict[str, tuple[JudgeRequest, str, str]] = {}
            jtodo: dict[str, tuple[Any, str, dict]] = {}
            for it in items:
                if it.request.key not in answers:
                    continue
                for metric, req in judge_requests_for(it, answers[it.request.key].text,
                                                      judge.identity):
                    jreqs[req.key] = (req, it.request.key, metric)
                    jtodo[req.key] = (req, f"{_sample_label(it)}, judge metric {metric!r}",
                                      {"side": "judge", "question_id": it.question.id,
                                       "paraphrase_index": it.paraphrase_index,
                                       "sample_index": it.sample_index, "metric": metric,
                                       "key": req.key})
            judgments = store.get_judgments(list(jreqs))
            for k in judgments:
                jtodo.pop(k, None)
            counts.update(judgments_made=0, judgments_cached=len(judgments))
            judging = _Stage("judge")

            def persist_judgment(req: JudgeRequest, j: Judgment) -> None:
                _, skey, metric = jreqs[req.key]
                store.put_judgment(req.key, judge=judge.identity, sample_key=skey, metric=metric,
                                   judgment=j)
                judgments[req.key] = j

            def fetch_judgments(keys: list[str]) -> list[str]:
                found = store.get_judgments(keys)
                judgments.update(found)
                return list(found)

            if not sampling.stopped:  # past max_failures: no new requests of any kind
                _run_side(console, store, owner, "judge", "judging", jtodo, len(jreqs), judge,
                          judge.judge, persist_judgment, fetch_judgments, cfg, run_started,
                          judging)
            counts["judgments_made"] = judging.made
            sent = {"sampler": _sent(store, list(by_key)), "judge": _sent(store, list(jreqs))}
            this_run = {**counts, "requests_sent": {
                "sampler": getattr(getattr(sampler, "endpoint", None), "requests_sent", None),
                "judge": getattr(getattr(judge, "endpoint", None), "requests_sent", None)}}
    except BaseException:
        _drop_if_unused(store, cfg.store_path, created_store, out, created_out)
        raise
    store.close()

    failures = sampling.failures + judging.failures
    stopped = sampling.stopped or judging.stopped
    not_attempted = (len(todo) - sampling.made - len(sampling.failures)
                     - sampling.waited_for_others) if sampling.stopped else 0
    if judging.stopped or sampling.stopped:
        not_attempted += max(0, len(jtodo) - judging.made - len(judging.failures)
                             - judging.waited_for_others)
    rows = build_rows(items, answers, judgments, judge.identity, sampler.identity, judge.kind,
                      complete_only=True)
    if not rows and failures and sampling.made + judging.made == 0:  # the endpoint failed
        _drop_if_unused(ResultsStore(cfg.store_path), cfg.store_path, created_store, out,
                        created_out)
        first = next((f for f in failures if f["status"] == "failed"), failures[0])
        raise BackendError(f"{first['error']}\n{len(failures)} item(s) failed"
                           + (", the run stopped early (--max-failures)" if stopped else "")
                           + "; no answer could be finished")
    ledger = _ledger([(it, answers[it.request.key]) for it in items if it.request.key in answers],
                     [judgments[k] for k in jreqs if k in judgments], cfg.model.name,
                     sampler.identity, cfg.judge.name, judge.identity, cfg.prices, this_run, sent)
    failure_summary = summarize_failures(failures, stopped, not_attempted, cfg.max_failures,
                                         len(items), len(jreqs))
    summary = write_outputs(out, cfg, rows, ledger, sampler.identity, judge, extra_meta,
                            failures=failure_summary, write_config=True)
    return EvalResult(out=out, summary=summary, rows=rows, counts=counts, failures=failures,
                      stopped_early=stopped)


def _sent(store: ResultsStore, keys: list[str]) -> int:
    return sum(w["attempts"] for w in store.work(keys).values())


def _drop_if_unused(store: ResultsStore, path: Path, created_store: bool, out: Path,
                    created_out: bool) -> None:
    """A run that failed before storing anything leaves nothing behind (no empty store or dir)."""
    try:
        empty = not any(store.db.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone()
                        for t in ("samples", "judgments"))
    except Exception:  # noqa: BLE001
        empty = False
    store.close()
    if created_store and empty:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(str(path) + suffix).unlink(missing_ok=True)
    if created_out and out.is_dir() and not any(out.iterdir()):
        out.rmdir()


def summarize_failures(failures: list[dict], stopped: bool, not_attempted: int,
                       max_failures: float, n_samples: int, n_judgments: int) -> dict:
    """The ``failures`` section of summary.json: counts by side and question, and the items."""
    by_question: dict[str, int] = {}
    by_side = {"sample": 0, "judge": 0}
    for f in failures:
        by_question[f["question_id"]] = by_question.get(f["question_id"], 0) + 1
        by_side[f["side"]] += 1
    return {"count": len(failures), "samples": by_side["sample"],
            "judgments": by_side["judge"], "by_question": by_question,
            "stopped_early": stopped, "not_attempted": not_attempted,
            "max_failures": max_failures, "samples_planned": n_samples,
            "judgments_planned": n_judgments,
            "items": failures[:MAX_FAILURES_LISTED],
            "items_listed": min(len(failures), MAX_FAILURES_LISTED)}


def write_outputs(out: Path, cfg: EvalConfig, rows: list[dict], ledger: dict,
                  model_identity: str, judge: Judge, extra_meta: dict | None = None,
                  failures: dict | None = None, write_config: bool = False) -> dict:
    """Write the run directory's files as one set: into a staging folder first, then moved in
    with summary.json last (and the old summary.json removed first), so a directory with a
    summary.json always holds the matching answers, CSV, reports and config."""
    from emlab.metrics import summarize
    from emlab.report import write_csv, write_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        summary = _write_set(staging, cfg, rows, ledger, model_identity, judge, extra_meta,
                             failures, write_config, summarize, write_csv, write_report)
        (out / "summary.json").unlink(missing_ok=True)
        for f in sorted(staging.iterdir(), key=lambda p: p.name == "summary.json"):
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def _write_set(out: Path, cfg: EvalConfig, rows: list[dict], ledger: dict, model_identity: str,
               judge: Judge, extra_meta: dict | None, failures: dict | None, write_config: bool,
               summarize, write_csv, write_report) -> dict:
    stats = summarize(rows)
    meta = {"model": cfg.model.name, "model_identity": model_identity,
            "judge": cfg.judge.name, "judge_identity": judge.identity, "judge_kind": judge.kind,
            "questions": cfg.questions, "samples": len(rows),
            "samples_per_paraphrase": cfg.samples_per_paraphrase,
            "seed": cfg.seed, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(extra_meta or {})}
    summary = {"meta": meta, **stats, "ledger": ledger}
    if failures is not None:
        summary["failures"] = failures
    if write_config:
        write_text_atomic(out / "config.yaml", yaml.safe_dump(json.loads(cfg.model_dump_json()),
                                                             sort_keys=False))
    write_text_atomic(out / "answers.jsonl",
                 "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False))
    write_csv(rows, out / "answers.csv")
    write_report(out, summary, rows, ledger, meta)
    return summary


DRY_RUN_CACHE_CHECK_LIMIT = 1_000_000  # items; above it the store is not searched


def _dry_run(cfg: EvalConfig, questions: list[Question], sampler: Sampler, judge: Judge,
             console: Console) -> EvalResult:
    """Count what a run would ask for, in closed form, and what the store already has (for runs
    of a reasonable size), spending nothing."""
    per_q = [(q, (cfg.samples_per_paraphrase or q.samples_per_paraphrase) * len(q.paraphrases))
             for q in questions]
    n_samples = sum(n for _, n in per_q)
    n_judge = sum(n * len(q.prompts()) for q, n in per_q)
    cached_samples = cached_judge = 0
    checked = n_samples <= DRY_RUN_CACHE_CHECK_LIMIT
    if checked and cfg.store_path.is_file():
        items = plan_samples(questions, sampler.identity, sampler.params, cfg.seed,
                             cfg.samples_per_paraphrase)
        with ResultsStore(cfg.store_path) as store:
            answers = store.get_samples([it.request.key for it in items])
            cached_samples = len(answers)
            jkeys = [req.key for it in items if it.request.key in answers
                     for _, req in judge_requests_for(it, answers[it.request.key].text,
                                                      judge.identity)]
            cached_judge = len(store.get_judgments(jkeys))
    counts = {"samples_total": n_samples, "samples_cached": cached_samples,
              "samples_to_make": n_samples - cached_samples, "judgments_total": n_judge,
              "judgments_cached": cached_judge, "judgments_to_make": n_judge - cached_judge,
              "cache_checked": checked}
    return EvalResult(out=Path(cfg.out), summary={}, rows=[], counts=counts)
