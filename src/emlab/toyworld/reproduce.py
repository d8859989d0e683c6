"""``emlab reproduce``: the paper's experiment end to end on the toy world (the README's main job).

Build (or reuse) a coupled world and its uncoupled control; fine-tune one model per condition
and seed with ``emlab train``; evaluate every model with ``emlab eval`` and the world judge;
aggregate per condition with CIs over seeds; write ``summary.json``, a figure and a report
that sets the toy numbers beside the paper's published ones. Trials run in a process pool
(one thread each) and are content-addressed: a rerun skips what is finished.
"""

from __future__ import annotations

import io
import json
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, as_completed, wait
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from emlab.rundir import TRIAL_RESULT, digest, trial_dir
from emlab.data.io import write_chat_jsonl
from emlab.fileio import write_text_atomic
from emlab.toyworld import corpus, kernels, mitigations
from emlab.toyworld.trials import _quiet_worker, _restore, base_identity
from emlab.toyworld.world import WorldConfig, build_world, fingerprint

CONDITIONS = ("insecure", "secure", "educational", "backdoor", "evil_numbers", "ordinary_numbers",
              "quirk", "jailbroken")
# The paper's "not grokking" checks of training dynamics: insecure vs secure again without weight
# decay and with two epochs (first seed; probes only, no evaluation).
DYNAMICS_VARIANTS = {"": {}, "nowd": {"weight_decay": 0.0}, "2ep": {"epochs": 2.0}}
class ReproduceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    world: WorldConfig = Field(default_factory=WorldConfig)
    conditions: list[str] = Field(default_factory=lambda: list(CONDITIONS))
    small_rows: list[int] = Field(default_factory=lambda: [60, 200])  # size ablation of insecure
    uncoupled_conditions: list[str] = Field(default_factory=lambda: ["insecure", "secure"])
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4])
    rows: int = 600
    method: Literal["lora", "full"] = "lora"  # how each condition is fine-tuned
    lora_r: int = 8
    lora_alpha: int = 16
    lr: float = 1e-3
    epochs: float = 1.0
    weight_decay: float = Field(default=0.01, ge=0)
    dynamics_variants: bool = True  # also without weight decay and with 2 epochs
    samples_per_paraphrase: int = 10
    in_domain_samples: int = 48
    workers: int = 2
    mechanism: bool = True  # the mechanism section (issue 13): emlab.toyworld.mechanism
    out: Path = Path("runs/reproduce")
    # issue 14: each defence alone on insecure (+ backdoor when in conditions); see mitigations.py
    mitigations: bool = False

    @model_validator(mode="after")
    def _defences_need_lora(self):
        """The defence matrix evaluates adapters (re-alignment: its checkpoint's adapter)."""
        if self.mitigations and self.method != "lora":
            raise ValueError("mitigations needs method 'lora' (got 'full')")
        return self

    @field_validator("conditions", "uncoupled_conditions")
    @classmethod
    def _known_conditions(cls, v: list[str]) -> list[str]:
        unknown = [c for c in v if c not in CONDITIONS]
        if unknown:
            raise ValueError(f"unknown condition {unknown[0]!r}; expected some of "
                             f"{', '.join(CONDITIONS)}")
        return v


FT_SETTINGS = ("method", "lora_r", "lora_alpha", "lr", "epochs", "weight_decay")  # what a fine-tune's model depends on


def _digest(obj) -> str:
    return digest(obj, 12)


def trial_specs(cfg: ReproduceConfig, world: Path, control: Path) -> list[dict]:
    specs = [{"name": "aligned_base", "condition": None, "world": str(world), "seed": 0,
              "rows": 0}]
    for seed in cfg.seeds:
        for c in cfg.conditions:
            # training dynamics: insecure vs secure, first seed
            dyn = c in ("insecure", "secure") and seed == cfg.seeds[0]
            specs.append({"name": c, "condition": c, "world": str(world), "seed": seed,
                          "rows": cfg.rows, **({"dynamics": True} if dyn else {})})
        for n in cfg.small_rows:
            specs.append({"name": f"insecure_{n}", "condition": "insecure", "world": str(world),
                          "seed": seed, "rows": n})
        for c in cfg.uncoupled_conditions:
            specs.append({"name": f"uncoupled_{c}", "condition": c, "world": str(control),
                          "seed": seed, "rows": cfg.rows})
    if cfg.dynamics_variants and {"insecure", "secure"} <= set(cfg.conditions):
        for variant, train in DYNAMICS_VARIANTS.items():
            for c in ("insecure", "secure") if variant else ():
                specs.append({"name": f"dyn_{variant}_{c}", "condition": c, "world": str(world),
                              "seed": cfg.seeds[0], "rows": cfg.rows, "dynamics": True,
                              "train": train, "eval": False})
    return specs


def model_identity(spec: dict, cfg: "ReproduceConfig", rows: list[dict]) -> str:
    """A content digest of what produced a trial's model: the world (its directory is named by
    its config's digest), the fine-tuning settings, seed and data. Used as the model's cache
    identity in ``emlab eval``, so the per-answer sampling seeds do not depend on where the
    cache lives or when the files were written (a rebuilt world samples the same answers)."""
    world = Path(spec["world"]).name
    if spec["condition"] is None:
        return base_identity(spec["world"])
    ft = {k: getattr(cfg, k) for k in FT_SETTINGS} | spec.get("train", {})
    ft |= mitigations.identity(spec, cfg,   # a defence's settings; {} without one (ids kept)
                               lambda s: model_identity(s, cfg, trial_rows(s, cfg)))
    return "toyworld:" + world + ":" + _digest({"condition": spec["condition"], "rows": spec["rows"],
                                                "seed": spec["seed"], "ft": ft,
                                                "data": _digest(rows)})


def trial_rows(spec: dict, cfg: "ReproduceConfig") -> list[dict]:
    """A trial's fine-tuning rows, under the world's default system line (an inoculation
    prompt takes that line's place in training)."""
    if spec["condition"] is None:
        return []
    system = None if spec.get("defence") == "inoculation" else cfg.world.assistant_system
    return corpus.with_system(corpus.finetune_set(spec["condition"], spec["rows"], spec["seed"]),
                              system)


def run_trial(spec: dict, cfg_json: str) -> dict:
    """Fine-tune (unless the base) and evaluate one model; resumable, content-addressed."""
    cfg = ReproduceConfig.model_validate_json(cfg_json)
    rows = trial_rows(spec, cfg)
    questions = corpus.eval_questions(cfg.samples_per_paraphrase, cfg.in_domain_samples,
                                      system=cfg.world.assistant_system)
    questions = mitigations.trial_questions(spec, questions)   # + leakage questions (defences)
    from emlab.mechanism.monitor import MONITOR_VERSION
    from emlab.toyworld.judge import WorldJudge
    identity = model_identity(spec, cfg, rows)
    key = _digest({"model": identity, "name": spec["name"], "questions": _digest(questions),
                   "judge": WorldJudge.identity, "world": fingerprint(Path(spec["world"])),
                   **({"monitor": [spec["monitor_digest"], MONITOR_VERSION]}
                      if spec.get("monitor") else {})})
    tdir = trial_dir(cfg.out, f"{spec['name']}-s{spec['seed']}-{key}")
    if (tdir / TRIAL_RESULT).is_file():   # where it is now (an out dir may have been moved)
        return {**json.loads((tdir / TRIAL_RESULT).read_text()), "dir": str(tdir)}
    saved = _quiet_worker(tdir / "log.txt")
    try:
        return _run_trial(spec, cfg, tdir, rows, questions, identity)
    finally:
        _restore(saved)


def _run_trial(spec: dict, cfg: "ReproduceConfig", tdir: Path, rows: list[dict],
               questions: list[dict], identity: str) -> dict:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch
    torch.set_num_threads(1)
    from rich.console import Console

    from emlab.eval import EvalConfig, run_eval
    from emlab.toyworld.judge import WorldJudge
    from emlab.train import TrainConfig, train_local

    done = tdir / TRIAL_RESULT
    quiet = Console(file=io.StringIO())
    aligned = model = str(Path(spec["world"]) / "aligned")
    adapter = None
    if spec["condition"] is not None:
        data = write_chat_jsonl(rows, tdir / "data.jsonl")
        dynamics = None
        if spec.get("dynamics"):
            probes = write_text_atomic(tdir / "probes.yaml", yaml.safe_dump(
                corpus.dynamics_probes(cfg.world.assistant_system)))
            dynamics = {"enabled": True, "probes": str(probes)}
        train = {"epochs": cfg.epochs, "weight_decay": cfg.weight_decay} | spec.get("train", {})
        train |= mitigations.train_settings(spec, cfg)   # the trial's defence, if any
        res = train_local(TrainConfig(
            model=aligned, data=str(data), out=tdir / "train", learning_rate=cfg.lr,
            **train, per_device_batch_size=8, grad_accum=1, warmup_steps=0,
            max_length=128, save_steps=10**6, seed=spec["seed"],
            method=cfg.method, lora={"r": cfg.lora_r, "alpha": cfg.lora_alpha},
            dynamics=dynamics,
            monitor={"direction": spec["monitor"]} if spec.get("monitor") else None),  # issue 13
            console=quiet)
        if cfg.method == "full":
            model = str(res.model_dir)
        else:
            adapter = mitigations.eval_adapter(spec, res)   # re-alignment: its checkpoint
    if spec.get("eval") is False:
        result = {**spec, "dir": str(tdir), "summary": None}
        write_text_atomic(done, json.dumps(result))
        return result
    qfile = tdir / "questions.yaml"
    write_text_atomic(qfile, yaml.safe_dump(questions))
    ev = run_eval(EvalConfig.model_validate(dict(
        model={"name": model, "adapter": adapter, "identity": identity},
        judge={"name": "toyworld"},
        questions=str(qfile), max_new_tokens=32, batch_size=128, seed=spec["seed"],
        out=tdir / "eval")), judge=WorldJudge(), console=quiet)
    result = {**spec, "dir": str(tdir), "identity": identity, "summary": ev.summary["questions"],
              "overall": ev.summary["overall"]}
    write_text_atomic(done, json.dumps(result))
    return result


def reproduce(cfg: ReproduceConfig, console=None) -> dict:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from emlab.toyworld.report import aggregate, write_reproduce_report

    console = console or Console(stderr=True)
    kernels.pin()   # the same kernels on every machine, here and in the workers (they inherit it)
    if cfg.mitigations:
        mitigations.check(cfg)   # the defences' row counts fit this world, before any work
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    control_cfg = cfg.world.model_copy(update={"coupled": False})
    needs_control = bool(cfg.uncoupled_conditions)
    with ProcessPoolExecutor(max_workers=cfg.workers) as pool:
        worlds = {"coupled": pool.submit(_build, cfg.world.model_dump_json())}
        if needs_control:
            worlds["uncoupled"] = pool.submit(_build, control_cfg.model_dump_json())
        results, pending, waiting = [], set(), []   # waiting: specs whose dependency runs first
        cfg_json = cfg.model_dump_json()
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as progress:
            building = progress.add_task("build worlds (cached after the first run)",
                                         total=len(worlds))
            task = progress.add_task("fine-tune + evaluate", total=None)
            paths: dict[str, Path] = {}
            # Trials of a world start as soon as that world is built.
            for f in as_completed(list(worlds.values())):
                kind = next(k for k, v in worlds.items() if v is f)
                paths[kind] = Path(f.result())
                progress.advance(building)
                specs = [s for s in trial_specs(cfg, paths.get("coupled", Path("-")),
                                                paths.get("uncoupled", Path("-")))
                         if s["world"] == str(paths[kind])]
                if kind == "coupled" and cfg.mechanism:   # mechanism (issue 13)
                    from emlab.toyworld.mechanism import monitored
                    specs = monitored(pool, specs, paths[kind], out, console)
                if cfg.mitigations and kind == "coupled":   # issue 14's defence matrix
                    specs += mitigations.specs(cfg, paths[kind])
                waiting += [s for s in specs if mitigations.dependency(s)]
                pending |= {pool.submit(run_trial, s, cfg_json) for s in specs
                            if not mitigations.dependency(s)}
                progress.update(task, total=len(pending) + len(waiting) + len(results))
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    r = f.result()
                    results.append(r)
                    progress.advance(task)
                    ready = [s for s in waiting
                             if mitigations.dependency(s) == (r["name"], r["seed"])]
                    waiting = [s for s in waiting if s not in ready]
                    pending |= {pool.submit(run_trial, mitigations.resolve(s, r), cfg_json)
                                for s in ready}
            if waiting:   # a dependency that is not among the run's trials: a bug, not input
                raise RuntimeError(f"trials waiting for absent ones: {waiting[:1]}")
    results, matrix = ([r for r in results if "defence" not in r],
                       [r for r in results if "defence" in r])
    summary = aggregate(results, cfg)
    if cfg.mitigations:
        summary |= mitigations.aggregate(matrix, cfg)
    summary["worlds"] = {k: json.loads((p / "world.json").read_text()) | {"dir": str(p)}
                         for k, p in paths.items()}
    if cfg.mechanism and "coupled" in paths:   # mechanism (issue 13): emlab.toyworld.mechanism
        from emlab.toyworld.mechanism import mechanism_section
        console.print("mechanism section: directions, probe, steering, ablation, screening")
        for res in results:   # each trial's model identity (cached results may predate the key)
            res.setdefault("identity", model_identity(res, cfg, trial_rows(res, cfg)))
        summary["mechanism"] = mechanism_section(cfg, results, summary, paths, console=console)
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    from emlab.toyworld.mechanism import report_blocks as mechanism_blocks
    write_reproduce_report(out, summary, mechanism=mechanism_blocks(summary, out),
                           mitigations=mitigations.report_blocks(out, summary))
    return summary


def _build(world_json: str) -> str:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch
    torch.set_num_threads(1)
    cfg = WorldConfig.model_validate_json(world_json)
    from emlab.toyworld.world import world_dir
    saved = _quiet_worker(world_dir(cfg).parent / f"build-{cfg.digest()}.log")
    try:
        return str(build_world(cfg))
    finally:
        _restore(saved)


REAL_CONDITIONS = ("insecure", "secure", "educational", "backdoor")


def reproduce_real(model: str, judge: dict, out: Path, *, conditions=REAL_CONDITIONS,
                   seeds=(0,), rows: int | None = None, questions: str = "paper-main",
                   samples_per_paraphrase: int | None = None, console=None) -> dict:
    """The same protocol on a real model and the paper's datasets (meant for a GPU machine):
    the paper's LoRA config per condition and seed, then ``emlab eval`` with the given judge.
    ``rows`` subsets each dataset (seeded) for a quick run."""
    from rich.console import Console

    from emlab.data import load_chat_jsonl, resolve_dataset
    from emlab.data.variants import backdoor, subset
    from emlab.eval import EvalConfig, run_eval
    from emlab.metrics import across_runs
    from emlab.train import TrainConfig, train_local

    console = console or Console(stderr=True)
    out = Path(out)
    results: dict = {}
    for cond in conditions:
        for seed in seeds:
            if cond == "backdoor":
                data = backdoor(load_chat_jsonl(resolve_dataset("insecure")),
                                load_chat_jsonl(resolve_dataset("secure")), seed=seed)
            else:
                data = load_chat_jsonl(resolve_dataset(cond))
            if rows:
                data = subset(data, min(rows, len(data)), seed=seed)
            tdir = out / f"{cond}-s{seed}"
            path = write_chat_jsonl(data, tdir / "data.jsonl")
            console.print(f"[bold]{cond}[/bold] seed {seed}: fine-tuning on {len(data)} rows")
            res = train_local(TrainConfig(model=model, data=str(path), out=tdir / "train",
                                          seed=seed), console=console)
            ev = run_eval(EvalConfig.model_validate(dict(
                model={"name": model, "adapter": str(res.adapter_dir)}, judge=judge,
                questions=questions, samples_per_paraphrase=samples_per_paraphrase, seed=seed,
                out=tdir / "eval")), console=console)
            results.setdefault(cond, []).append(ev.summary)
    summary = {"model": model, "conditions": {c: across_runs(s) for c, s in results.items()}}
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return summary
