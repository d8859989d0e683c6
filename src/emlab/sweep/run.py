"""Run an experiment grid on Ray: one task per training run, one per evaluation.

Ray does all the scheduling: a local instance by default (every CPU of this machine, or one
trial per GPU), or an existing cluster (``address``). Each training run is a ``ray.remote``
task; each trial's evaluation is a task that takes the training task's result as an argument,
so Ray starts it when its model is ready, and trials that train the same thing share one
training task. Tasks are retried by Ray (``max_retries``, ``retry_exceptions``) on exceptions
and on crashed workers; bad input (``InputError``) is not retried, since it would fail again.
A trial that still fails is recorded and reported; the rest of the grid carries on.

Sweep directory::

    SWEEP/sweep.json                the resolved plan: every trial's full settings, every cell
    SWEEP/experiment.yaml           the experiment as given (validated)
    SWEEP/train/<train_id>/         an ``emlab train`` run dir; done.json once finished
    SWEEP/trials/<trial_id>/        trial.json, eval/ (an ``emlab eval`` run dir), log.txt,
                                    attempts.jsonl, done.json once finished, error.json if failed
    SWEEP/aggregate.json, aggregate.csv, figure.png   (see ``emlab.sweep.aggregate``)

Reruns are content-addressed: a finished trial (done.json) is skipped without starting Ray,
an unfinished one resumes (training from its last checkpoint, evaluation from its results
store). On a cluster, SWEEP must be a path every node can read and write (shared storage),
and emlab must be installed on every node.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import yaml
from rich.console import Console
from rich.markup import escape

from emlab.errors import InputError
from emlab.fileio import write_text_atomic
from emlab.rundir import (DONE, ERROR, is_complete, is_done, load_sweep_plan,  # noqa: F401
                          train_dir, trial_dir)
from emlab.rundir import read_json as _read_json
from emlab.sweep.config import ExperimentConfig, Plan, Trial, plan_trials


# A hook(stage, key, directory) called at the start of every task attempt (stage "train" or
# "eval"); tests use it to inject failures. It is shipped to the workers with the task.
Hook = Callable[[str, str, Path], None]


@dataclass
class SweepResult:
    out: Path
    plan: Plan
    ran: list[str] = field(default_factory=list)          # trial ids finished by this call
    skipped: list[str] = field(default_factory=list)      # already finished before this call
    failed: dict[str, str] = field(default_factory=dict)  # trial id -> error
    aggregate: dict[str, Any] = field(default_factory=dict)
    ray_started: bool = False
    wall_s: float = 0.0


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


# ---------------------------------------------------------------- work done inside a task

def _pin_threads(cpus: float) -> None:
    """CPU trials use as many threads as CPUs they reserved (1 by default): oversubscribed
    torch threads on shared cores are many times slower, not faster."""
    n = str(max(1, int(cpus)))
    os.environ["OMP_NUM_THREADS"] = n
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import torch

        if not torch.cuda.is_available():
            torch.set_num_threads(int(n))
    except ImportError:
        pass


@contextlib.contextmanager
def _logging_to(path: Path):
    """Everything a trial prints (rich console, the trainer's progress and log lines) goes to
    its log.txt, not to the worker's (or the serial runner's) terminal."""
    with open(path, "a", encoding="utf-8") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        yield log


def _attempt(directory: Path, stage: str, record: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "attempts.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"stage": stage, "time": _now(), "pid": os.getpid(),
                            "host": socket.gethostname(), **record}) + "\n")


def train_outputs(d: Path) -> dict[str, Any]:
    """Where a finished training run's model is, from the directory as it is now (so a sweep
    directory can be moved between runs)."""
    return {"train_dir": str(d),
            "adapter": str(d / "adapter") if (d / "adapter").is_dir() else None,
            "model_dir": str(d / "model") if (d / "model").is_dir() else None}


def train_one(train: dict[str, Any], out_dir: str, cpus: float = 1,
              hook: Hook | None = None) -> dict[str, Any]:
    """Train (or finish, or reuse) one training run; returns what the evaluation needs.

    Bad input comes back as ``{"error": ...}`` instead of raising, so Ray does not retry it.
    """
    from emlab.train.config import TrainConfig

    d = Path(out_dir)
    done = _read_json(d / DONE)
    if done:
        return {**done, **train_outputs(d)}
    _pin_threads(cpus)
    _attempt(d, "train", {"event": "start"})
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        if hook is not None:
            hook("train", d.name, d)
        from emlab.train.local import train_local

        cfg = TrainConfig.model_validate({**train, "out": str(d)})
        with _logging_to(d / "log.txt") as log:
            res = train_local(cfg, console=Console(file=log, width=120, force_terminal=False))
    except InputError as e:
        _attempt(d, "train", {"event": "input-error", "error": str(e)})
        return {"error": f"training: {e}", "retry": False}
    except BaseException as e:
        _attempt(d, "train", {"event": "error", "error": f"{type(e).__name__}: {e}",
                              "traceback": traceback.format_exc()})
        raise
    info = {**train_outputs(d), "steps": res.steps, "final_loss": res.final_loss,
            "runtime_s": round(time.perf_counter() - t0, 3),
            "cpu_s": round(time.process_time() - c0, 3), "finished_at": _now()}
    write_text_atomic(d / DONE, json.dumps(info, indent=2))
    _attempt(d, "train", {"event": "done"})
    return info


def eval_one(trial_json: dict[str, Any], out_dir: str, trained: dict[str, Any] | None,
             cpus: float = 1, hook: Hook | None = None) -> dict[str, Any]:
    """Evaluate one trial's model (resuming from its store); writes done.json when finished."""
    from emlab.eval.checkpoints import training_manifest_summary
    from emlab.eval.config import EvalConfig
    from emlab.eval.run import run_eval

    trial = Trial.from_json(trial_json)
    d = Path(out_dir)
    done = _read_json(d / DONE)
    if done and not done.get("partial"):
        return done
    if trained is not None and trained.get("error"):
        _attempt(d, "eval", {"event": "input-error", "error": trained["error"]})
        return {"error": trained["error"], "retry": False}
    _pin_threads(cpus)
    _attempt(d, "eval", {"event": "start"})
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        if hook is not None:
            hook("eval", trial.id, d)
        settings = json.loads(json.dumps(trial.eval))
        extra: dict[str, Any] = {"sweep": {"trial": trial.id, "model_label": trial.model_label,
                                           "condition": trial.condition, "seed": trial.seed,
                                           "point": trial.point, "train_id": trial.train_id}}
        if trained is not None:
            if trained.get("adapter"):
                settings["model"].update(name=trial.model, adapter=trained["adapter"],
                                         backend="hf")
            else:
                settings["model"].update(name=trained["model_dir"], adapter=None, backend="hf")
            extra["training_manifest"] = training_manifest_summary(trained["train_dir"])
        cfg = EvalConfig.model_validate({**settings, "out": str(d / "eval")})
        with _logging_to(d / "log.txt") as log:
            res = run_eval(cfg, console=Console(file=log, width=120, force_terminal=False),
                           extra_meta=extra)
    except InputError as e:
        _attempt(d, "eval", {"event": "input-error", "error": str(e)})
        return {"error": f"evaluation: {e}", "retry": False}
    except BaseException as e:
        _attempt(d, "eval", {"event": "error", "error": f"{type(e).__name__}: {e}",
                             "traceback": traceback.format_exc()})
        raise
    o = res.summary["overall"]
    info = {"trial": trial.id, "summary": "eval/summary.json", "finished_at": _now(),
            "runtime_s": round(time.perf_counter() - t0, 3),
            "cpu_s": round(time.process_time() - c0, 3),
            "train_runtime_s": (trained or {}).get("runtime_s"), "counts": res.counts,
            # items that failed for good: the summary covers the rest; a rerun retries them
            "failures": len(res.failures), "partial": not res.complete,
            "overall": {k: o.get(k) for k in ("answers", "kept", "misaligned",
                                               "misaligned_rate", "ci_low", "ci_high")}}
    write_text_atomic(d / DONE, json.dumps(info, indent=2))
    (d / ERROR).unlink(missing_ok=True)
    _attempt(d, "eval", {"event": "done"})
    return info


def run_trial_serial(trial: Trial, out: Path, cpus: float = 1) -> dict[str, Any]:
    """One trial in this process, no Ray (the benchmark's baseline; debugging)."""
    out = Path(out).resolve()
    trained = None
    if trial.train is not None:
        trained = train_one(trial.train, str(train_dir(out, trial.train_id)), cpus)
    _write_trial_json(out, trial)
    return eval_one(trial.to_json(), str(trial_dir(out, trial.id)), trained, cpus)


# ---------------------------------------------------------------- the driver

def _write_trial_json(out: Path, trial: Trial) -> None:
    path = trial_dir(out, trial.id) / "trial.json"
    text = json.dumps(trial.to_json(), indent=2, ensure_ascii=False)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        write_text_atomic(path, text)


def write_plan(plan: Plan, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(plan.to_json(), indent=2, ensure_ascii=False)
    if not (out / "sweep.json").is_file() or (out / "sweep.json").read_text("utf-8") != text:
        write_text_atomic(out / "sweep.json", text)
    exp = json.loads(plan.experiment.model_dump_json())
    write_text_atomic(out / "experiment.yaml", yaml.safe_dump(exp, sort_keys=False))
    for trial in plan.trials.values():
        _write_trial_json(out, trial)


def _init_ray(address: str | None, num_cpus: int | None) -> bool:
    """Connect to ``address`` or start a local instance; True when this call started it."""
    import logging

    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    else:
        # "local": a new private instance, even when `ray start` runs a cluster on this machine
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 log_to_driver=False, logging_level=logging.WARNING)
    return True


def _error_text(e: BaseException) -> str:
    text = str(e).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    # a RayTaskError prints the remote traceback; its last line is the original exception
    return lines[-1] if lines else type(e).__name__


def run_sweep(exp: ExperimentConfig, *, base_dir: Path | None = None, out: Path | None = None,
              address: str | None = None, num_cpus: int | None = None,
              console: Console | None = None, hook: Hook | None = None,
              aggregate: bool = True) -> SweepResult:
    """Run (or resume) every trial of the experiment on Ray, then aggregate.

    Uses the Ray instance this process is already connected to, if any; else connects to
    ``address``, or starts a local one with ``num_cpus`` (default: all) and stops it at the end.
    """
    from emlab.sweep.aggregate import aggregate_sweep

    t_start = time.perf_counter()
    console = console or Console(stderr=True)
    out = Path(out or exp.out).expanduser().resolve()  # workers may run elsewhere
    plan = plan_trials(exp, base_dir)
    write_plan(plan, out)
    result = SweepResult(out=out, plan=plan)
    todo = [t for t in plan.trials.values() if not is_complete(trial_dir(out, t.id))]
    todo_ids = {t.id for t in todo}
    result.skipped = [t for t in plan.trials if t not in todo_ids]
    console.print(f"{len(plan.trials)} trials ({len(plan.cells)} grid cells): "
                  f"{len(result.skipped)} finished before, {len(todo)} to run", highlight=False)
    if todo:
        _run_on_ray(exp, out, todo, address, num_cpus, console, hook, result)
    if aggregate:
        result.aggregate = aggregate_sweep(out, n_boot=exp.n_boot)
    result.wall_s = time.perf_counter() - t_start
    return result


def _run_on_ray(exp: ExperimentConfig, out: Path, todo: list[Trial], address: str | None,
                num_cpus: int | None, console: Console, hook: Hook | None,
                result: SweepResult) -> None:
    try:
        import ray
    except ImportError:
        raise InputError("emlab sweep runs on Ray, which is not installed: "
                         "pip install 'emlab[ray]'") from None

    started = _init_ray(address, num_cpus)
    result.ray_started = started
    try:
        gpus = exp.gpus_per_trial
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        opts = dict(num_cpus=exp.cpus_per_trial, num_gpus=gpus, max_retries=exp.retries,
                    retry_exceptions=True)
        train_task = ray.remote(train_one).options(name="emlab-train", **opts)
        eval_task = ray.remote(eval_one).options(name="emlab-eval", **opts)
        train_refs: dict[str, Any] = {}
        pending: dict[Any, Trial] = {}
        for t in todo:
            trained = None
            if t.train is not None:
                tdir = train_dir(out, t.train_id)
                if t.train_id not in train_refs:
                    done = _read_json(tdir / DONE)
                    train_refs[t.train_id] = {**done, **train_outputs(tdir)} if done else \
                        train_task.remote(t.train, str(tdir), exp.cpus_per_trial, hook)
                trained = train_refs[t.train_id]
            ref = eval_task.remote(t.to_json(), str(trial_dir(out, t.id)), trained,
                                   exp.cpus_per_trial, hook)
            pending[ref] = t
        n = len(pending)
        console.print(f"Ray: {ray.cluster_resources().get('CPU', 0):g} CPUs, "
                      f"{ray.cluster_resources().get('GPU', 0):g} GPUs; "
                      f"{len([r for r in train_refs.values() if not isinstance(r, dict)])} "
                      f"training runs and {n} evaluations submitted", highlight=False)
        finished = 0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                t = pending.pop(ref)
                finished += 1
                label = f"{t.model_label}/{t.condition} seed={t.seed}" + (
                    f" {t.point}" if t.point else "")
                try:
                    info = ray.get(ref)
                    error = info.get("error")
                except Exception as e:  # retries exhausted (task error or crashed worker)
                    error = _error_text(e)
                tdir = trial_dir(out, t.id)
                if error:
                    result.failed[t.id] = error
                    write_text_atomic(tdir / ERROR, json.dumps(
                        {"trial": t.id, "error": error, "time": _now()}, indent=2))
                    console.print(f"[{finished}/{n}] [red]failed[/red] {escape(label)}: "
                                  f"{escape(error)}", highlight=False)
                else:
                    result.ran.append(t.id)
                    console.print(f"[{finished}/{n}] done {escape(label)} "
                                  f"({info['runtime_s']:.1f} s)", highlight=False)
    finally:
        if started:
            ray.shutdown()
