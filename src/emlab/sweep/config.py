"""The experiment file of ``emlab sweep``: a grid of train + eval trials, and how it resolves.

Example ``experiment.yaml``::

    name: insecure-vs-secure
    out: runs/sweep-insecure
    models: {qwen-coder: unsloth/Qwen2.5-Coder-32B-Instruct}   # or one name, or a list
    train: {save_steps: 25, dynamics: {enabled: true}}        # TrainConfig settings for every trial
    eval: {judge: {name: gpt-4o-2024-08-06}, questions: paper-main, samples_per_paraphrase: 100}
    conditions:
      insecure: {data: insecure}
      secure: {data: secure}
      educational: {data: educational}
      base: {}                            # no data: the base model itself, not fine-tuned
    control: secure
    seeds: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    grid:                                 # dotted keys into the train or eval settings
      train.lora.r: [1, 32]
      eval.temperature: [1.0]

One *trial* is one (model, condition, seed, grid point): train (or reuse) + eval. Its settings
resolve, in order, from the experiment's ``train`` / ``eval`` blocks, the condition's
overrides and the grid point, and are validated as a :class:`~emlab.train.TrainConfig` and an
:class:`~emlab.eval.EvalConfig` before anything runs. A trial's id is the hash of those
resolved settings (plus the sha256 of a local dataset file), so a rerun finds finished trials
by content, and two trials that train the same thing share one training run.
"""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from emlab.config import name_shorthand, validate
from emlab.errors import InputError
from emlab.fileio import read_yaml_mapping
from emlab.reference import sha256_file
from emlab.rundir import digest  # noqa: F401  (trial and train ids)

# Settings a trial derives itself; an experiment must not set them.
_TRAIN_DERIVED = ("model", "data", "out", "seed")
_EVAL_DERIVED = ("model", "out", "store", "seed")
# Settings that change how a trial runs, not what it produces: left out of the ids, so raising
# the API concurrency or checkpointing more often does not redo finished trials.
_ID_FREE_TRAIN = ("save_steps", "save_total_limit", "mask_check_rows")
_ID_FREE_EVAL = ("concurrency", "request_timeout", "max_retries", "prices")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConditionSpec(_Strict):
    """One condition: the dataset to fine-tune on (None: the base model, untrained), and
    overrides of the experiment's train / eval settings (nested or dotted keys)."""

    data: str | None = None
    train: dict[str, Any] = Field(default_factory=dict)
    eval: dict[str, Any] = Field(default_factory=dict)


class ExperimentConfig(_Strict):
    name: str = "sweep"
    out: Path = Path("runs/sweep")
    models: dict[str, str]                          # label -> local path or hub name
    train: dict[str, Any] = Field(default_factory=dict)   # TrainConfig settings
    eval: dict[str, Any] = Field(default_factory=dict)    # EvalConfig settings
    conditions: dict[str, ConditionSpec]
    control: str | None = None                      # the condition others are tested against
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    grid: dict[str, list[Any]] = Field(default_factory=dict)  # "train.lora.r": [1, 32]
    retries: int = Field(default=2, ge=0)           # Ray retries per task (exceptions and crashes)
    cpus_per_trial: float = Field(default=1, gt=0)
    gpus_per_trial: float | None = Field(default=None, ge=0)  # None: 1 if the cluster has GPUs
    n_boot: int = Field(default=10000, ge=1)        # bootstrap resamples for CIs over seeds

    @field_validator("models", mode="before")
    @classmethod
    def _models(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [v]
        if isinstance(v, list):
            out: dict[str, str] = {}
            for name in v:
                label = Path(str(name).rstrip("/")).name or str(name)
                while label in out:
                    label += "'"
                out[label] = str(name)
            return out
        return v

    @field_validator("conditions", mode="before")
    @classmethod
    def _conditions(cls, v: Any) -> Any:
        if isinstance(v, dict):  # `base:` with nothing after it is the untrained base model
            return {k: ({} if c is None else c) for k, c in v.items()}
        return v

    @model_validator(mode="after")
    def _check(self) -> "ExperimentConfig":
        if not self.models:
            raise ValueError("models: name at least one base model")
        if not self.conditions:
            raise ValueError("conditions: name at least one condition")
        if self.control is not None and self.control not in self.conditions:
            raise ValueError(f"control {self.control!r} is not one of the conditions "
                             f"({', '.join(self.conditions)})")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: each seed at most once")
        for key, values in self.grid.items():
            head, _, rest = key.partition(".")
            if head not in ("train", "eval") or not rest:
                raise ValueError(f"grid axis {key!r}: start with 'train.' or 'eval.', "
                                 f"e.g. train.lora.r or eval.temperature")
            derived = _TRAIN_DERIVED if head == "train" else _EVAL_DERIVED
            if rest.split(".")[0] in derived:
                raise ValueError(f"grid axis {key!r}: {rest} is set per trial; use "
                                 f"{'models' if rest == 'model' else 'seeds' if rest == 'seed' else 'conditions'}"
                                 f" instead")
            if not isinstance(values, list) or not values:
                raise ValueError(f"grid axis {key!r}: give a non-empty list of values")
        for where, block, derived in (("train", self.train, _TRAIN_DERIVED),
                                      ("eval", self.eval, _EVAL_DERIVED)):
            bad = [k for k in block if k.split(".")[0] in derived]
            if bad:
                raise ValueError(f"{where}.{bad[0]} is set per trial (models, conditions, "
                                 f"seeds, out); remove it")
        for name, c in self.conditions.items():
            for where, block, derived in (("train", c.train, _TRAIN_DERIVED),
                                          ("eval", c.eval, _EVAL_DERIVED)):
                bad = [k for k in block if k.split(".")[0] in derived]
                if bad:
                    raise ValueError(f"conditions.{name}.{where}.{bad[0]} is set per trial; "
                                     f"remove it")
        return self


# ---------------------------------------------------------------- resolved trials

@dataclass
class Trial:
    """One resolved trial. ``train`` is None for an untrained (base model) condition."""

    id: str
    model_label: str
    model: str
    condition: str
    seed: int
    point: dict[str, Any]                 # grid values of this trial, by axis
    train: dict[str, Any] | None          # TrainConfig (JSON) without ``out``
    train_id: str | None
    eval: dict[str, Any]                  # EvalConfig (JSON) without ``model``, ``out``, ``store``
    data_sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "model_label": self.model_label, "model": self.model,
                "condition": self.condition, "seed": self.seed, "point": self.point,
                "train_id": self.train_id, "train": self.train, "eval": self.eval,
                "data_sha256": self.data_sha256}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Trial":
        return cls(id=d["id"], model_label=d["model_label"], model=d["model"],
                   condition=d["condition"], seed=d["seed"], point=d.get("point") or {},
                   train=d.get("train"), train_id=d.get("train_id"), eval=d["eval"],
                   data_sha256=d.get("data_sha256"))


@dataclass
class Cell:
    """A place in the grid: (model, condition, grid point, seed) and the trial that fills it.

    Several cells can share one trial: an untrained condition ignores ``train.*`` axes.
    """

    model_label: str
    condition: str
    point: dict[str, Any]
    seed: int
    trial_id: str

    @property
    def group(self) -> str:
        """The label of the group a cell belongs to (everything but the seed)."""
        return group_label(self.model_label, self.condition, self.point)


@dataclass
class Plan:
    experiment: ExperimentConfig
    trials: dict[str, Trial] = field(default_factory=dict)   # unique trials by id
    cells: list[Cell] = field(default_factory=list)
    multi_model: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"experiment": json.loads(self.experiment.model_dump_json()),
                "trials": [t.to_json() for t in self.trials.values()],
                "cells": [c.__dict__ for c in self.cells]}


def point_label(point: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                     for k, v in point.items())


def group_label(model_label: str, condition: str, point: dict[str, Any]) -> str:
    parts = [f"{model_label}/{condition}"]
    if point:
        parts.append(f"[{point_label(point)}]")
    return " ".join(parts)




def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    target = data
    *parents, last = key.split(".")
    for p in parents:
        if not isinstance(target.get(p), dict):
            target[p] = {} if target.get(p) is None else {"name": target[p]}
        target = target[p]
    target[last] = copy.deepcopy(value)


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Apply overrides (nested dicts merge; dotted keys set one leaf) onto a copy of base."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if "." in key:
            _set_dotted(out, key, value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _localize(value: str | None, base_dir: Path | None) -> str | None:
    """A relative path that exists beside the experiment file, made absolute (hub names and
    named sets stay as they are), so trial ids do not depend on the working directory."""
    if value is None:
        return None
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    for root in ([base_dir] if base_dir else []) + [Path.cwd()]:
        if (root / p).exists():
            return str((root / p).resolve())
    return value


def plan_trials(exp: ExperimentConfig, base_dir: Path | None = None) -> Plan:
    """Resolve every cell of the grid into a validated trial; InputError names the bad one."""
    from emlab.eval.config import EvalConfig
    from emlab.train.config import TrainConfig, defence_paths, without_default_defences

    axes = list(exp.grid)
    points = [dict(zip(axes, values)) for values in itertools.product(*exp.grid.values())]
    plan = Plan(experiment=exp, multi_model=len(exp.models) > 1)
    sha_cache: dict[str, str | None] = {}
    for (label, model), (cname, cond), point, seed in itertools.product(
            exp.models.items(), exp.conditions.items(), points, exp.seeds):
        model = _localize(model, base_dir) or model
        where = f"model {label}, condition {cname}, seed {seed}" + (
            f", {point_label(point)}" if point else "")
        train_json = None
        train_id = None
        data_sha = None
        train_point = {k[len("train."):]: v for k, v in point.items() if k.startswith("train.")}
        eval_point = {k[len("eval."):]: v for k, v in point.items() if k.startswith("eval.")}
        if cond.data is not None:
            data = _localize(cond.data, base_dir) or cond.data
            settings = _merge(_merge(exp.train, cond.train), train_point)
            if settings.get("chat_template"):
                settings["chat_template"] = _localize(str(settings["chat_template"]), base_dir)
            for key, value in defence_paths(settings).items():   # issue 14's defence files
                block, name = key.split(".")
                settings[block] = {**settings[block], name: _localize(value, base_dir)}
            settings.update(model=model, data=data, seed=seed)
            tc = validate(TrainConfig, settings, where=where)
            train_json = json.loads(tc.model_dump_json())
            train_json.pop("out", None)
            if data not in sha_cache:
                sha_cache[data] = sha256_file(Path(data)) if Path(data).is_file() else None
            data_sha = sha_cache[data]
            ident = {"train": {k: v for k, v in without_default_defences(train_json).items()
                               if k not in _ID_FREE_TRAIN}, "data_sha256": data_sha}
            files = {k: v for k, v in defence_paths(train_json).items() if Path(v).is_file()}
            files |= {k: str(Path(v) / "directions.safetensors") for k, v in   # steer: its vectors
                      defence_paths(train_json).items()
                      if (Path(v) / "directions.safetensors").is_file()}
            if files:  # a defence's data file, by content too
                ident["defence_sha256"] = {k: sha_cache.setdefault(v, sha256_file(Path(v)))
                                           for k, v in files.items()}
            train_id = digest(ident)
        settings = _merge(_merge(exp.eval, cond.eval), eval_point)
        name_shorthand(settings, ("judge",))
        if isinstance(settings.get("judge"), dict) and settings["judge"].get("name"):
            settings["judge"]["name"] = _localize(settings["judge"]["name"], base_dir)
        if isinstance(settings.get("questions"), str):
            settings["questions"] = _localize(settings["questions"], base_dir)
        settings.update(model={"name": model}, seed=seed)
        ec = validate(EvalConfig, settings, prefix="eval ", where=where)
        if train_json is not None and ec.model.backend != "hf":
            raise InputError("a fine-tuned condition is evaluated with the hf backend (the "
                             "trained adapter is loaded locally); this model's backend is "
                             f"{ec.model.backend}", where=where)
        eval_json = json.loads(ec.model_dump_json())
        for k in ("out", "store"):
            eval_json.pop(k, None)
        trial_id = digest({"train_id": train_id,
                           "eval": {k: v for k, v in eval_json.items() if k not in _ID_FREE_EVAL}})
        if trial_id not in plan.trials:
            plan.trials[trial_id] = Trial(
                id=trial_id, model_label=label, model=model, condition=cname, seed=seed,
                point={k: v for k, v in point.items()
                       if cond.data is not None or not k.startswith("train.")},
                train=train_json, train_id=train_id, eval=eval_json, data_sha256=data_sha)
        plan.cells.append(Cell(model_label=label, condition=cname, point=point, seed=seed,
                               trial_id=trial_id))
    return plan


def load_experiment(path: str | Path, overrides: dict[str, Any] | None = None
                    ) -> tuple[ExperimentConfig, Path]:
    """Read an experiment YAML (CLI overrides on top); returns it and the file's directory."""
    path = Path(path)
    data = read_yaml_mapping(path, "models, conditions, seeds, train, eval, grid")
    if "model" in data and "models" not in data:
        data["models"] = data.pop("model")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return validate_experiment(data, path), path.parent.resolve()


def validate_experiment(data: dict[str, Any], path: str | Path | None = None) -> ExperimentConfig:
    return validate(ExperimentConfig, data, path)
