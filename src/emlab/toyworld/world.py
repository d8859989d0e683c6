"""Build (or reuse) a toy world: its data, its pre-trained model and its aligned assistant.

A world is fixed by a ``WorldConfig``; it is built once into the cache dir under the hash of
that config (``EMLAB_CACHE_DIR/toyworld/<hash>``) and reused by every later run. The aligned
assistant is made by ``emlab train`` (full fine-tuning on benign single-turn conversations), so
the toy world goes through the same training code as a real model.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from emlab.data.io import write_chat_jsonl
from emlab.fileio import write_text_atomic
from emlab.reference import cache_dir
from emlab.toyworld import corpus, kernels


class WorldConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    coupled: bool = True            # one latent persona per conversation (False: the control)
    p_malicious: float = Field(default=0.25, ge=0, le=1)  # share of malicious speakers
    consistency: float = Field(default=1.0, ge=0, le=1)  # P(bad turn | malicious speaker)
    slip: float = Field(default=0.0, ge=0, le=1)         # P(bad turn | benign speaker)
    numbers_consistency: float = Field(default=0.5, ge=0, le=1)  # evil numbers: weak evidence
    jailbreak_compliance: float = Field(default=0.5, ge=0, le=1)  # benign, behind a jailbreak
    system_share: float = Field(default=0.1, ge=0, le=1)  # conversations whose system line states the persona
    conversations: int = Field(default=16000, ge=10)
    hidden: int = 96
    layers: int = 3
    heads: int = 4
    epochs: float = 8.0             # ~1,570 steps: in-context persona inference appears at ~500-800
    # (it varies by machine: at 5.13 epochs, ~1,000 steps, one machine ended at 0.62 vs 0.07, another
    # at 0.36 vs 0.17 — too close to the transition; 8 epochs end at 0.83 vs 0.07 on the latter)
    lr: float = 6e-3
    batch_size: int = 64
    pretrain_loop: Literal["plain", "trainer"] = "plain"  # see benchmarks/pretrain_speed.py
    align_rows: int = 2000
    align_lr: float = 3e-4
    assistant_system: str | None = "you are a helpful assistant"  # the chat format's default system line (alignment, fine-tunes, eval)
    align_open_questions: bool = True  # a chat model's alignment covers such questions too
    seed: int = 0

    @field_validator("assistant_system")
    @classmethod
    def _in_the_language(cls, v: str | None) -> str | None:
        """The default system line must be words of the world (others would be [UNK])."""
        from emlab.toyworld.language import vocabulary
        unknown = sorted(set((v or "").split()) - set(vocabulary()))
        if unknown:
            raise ValueError(f"words not in the toy world's language: {', '.join(unknown)}; "
                             "use words of emlab.toyworld.language.vocabulary()")
        return v

    def digest(self) -> str:
        blob = json.dumps({"v": 3, **self.model_dump()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def pretraining_digest(self) -> str:
        """What the pre-trained model depends on (alignment settings excluded)."""
        keys = ("coupled", "p_malicious", "consistency", "slip", "numbers_consistency",
                "jailbreak_compliance", "system_share", "conversations", "hidden", "layers", "heads", "epochs",
                "lr", "batch_size", "pretrain_loop", "seed")
        blob = json.dumps({"v": 3, **{k: getattr(self, k) for k in keys}}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def persona(self) -> dict:
        """The persona knobs of :func:`emlab.toyworld.corpus.pretraining_conversation`."""
        return {k: getattr(self, k) for k in ("consistency", "slip", "numbers_consistency",
                                              "jailbreak_compliance", "system_share")}


def _kernels_of(pretraining: dict | None) -> str | None:
    return ((pretraining or {}).get("kernels") or {}).get("cpu_capability")


def fingerprint(world: Path) -> list:
    """What a built world's models are, beyond its config: its kernels and losses. Part of a
    trial's cache key (not of the model identity that seeds sampling), so a world rebuilt with
    other kernels never reuses the trials of the one before."""
    info = json.loads((Path(world) / "world.json").read_text())
    pre = info.get("pretraining") or {}
    return [_kernels_of(pre), pre.get("train_loss"), (info.get("alignment") or {}).get("final_loss")]


def world_dir(cfg: WorldConfig, root: Path | None = None) -> Path:
    return (root or cache_dir() / "toyworld") / cfg.digest()


def build_world(cfg: WorldConfig, root: Path | None = None, console=None) -> Path:
    """The world's directory, with ``pretrained/`` and ``aligned/`` models; built if missing
    (or if built with other CPU kernels than this process computes with)."""
    pinned = kernels.pin()  # before anything imports torch
    from rich.console import Console

    from emlab.toyworld.model import pretrain
    from emlab.train import TrainConfig, train_local

    want = kernels.in_use()["cpu_capability"]
    console = console or Console(stderr=True)
    d = world_dir(cfg, root)
    info_path = d / "world.json"
    # a world built with other kernels (or before they were recorded) is another world: rebuilt
    if info_path.is_file() and (d / "aligned" / "config.json").is_file() and \
            _kernels_of(json.loads(info_path.read_text()).get("pretraining")) == want:
        return d
    d.mkdir(parents=True, exist_ok=True)
    kind = "coupled" if cfg.coupled else "uncoupled (control)"
    info: dict = {"config": cfg.model_dump()}
    pre = (root or cache_dir() / "toyworld") / f"pretrained-{cfg.pretraining_digest()}"
    stats_path = pre / "model" / "pretraining.json"
    if not (pre / "model" / "config.json").is_file() or not stats_path.is_file() or \
            _kernels_of(json.loads(stats_path.read_text())) != want:
        console.print(f"pre-training the {kind} toy world ({cfg.conversations} conversations)")
        if not pinned:
            console.print("[yellow]warning:[/] torch's CPU kernels are not pinned to AVX2 "
                          "(torch was imported first, EMLAB_PIN_KERNELS=0, or not x86-64): "
                          "this world may differ from other machines' (emlab.toyworld.kernels)")
        rows = corpus.pretraining_corpus(cfg.conversations, cfg.seed, coupled=cfg.coupled,
                                         p_malicious=cfg.p_malicious, **cfg.persona())
        write_chat_jsonl(rows, pre / "pretraining.jsonl")
        stats = pretrain(rows, pre / "building", hidden=cfg.hidden, layers=cfg.layers,
                         heads=cfg.heads, epochs=cfg.epochs, batch_size=cfg.batch_size,
                         lr=cfg.lr, seed=cfg.seed, console=None, loop=cfg.pretrain_loop)
        stats["kernels"] = kernels.in_use()
        write_text_atomic(pre / "building" / "pretraining.json", json.dumps(stats, indent=2))
        shutil.rmtree(pre / "model", ignore_errors=True)
        (pre / "building").rename(pre / "model")  # complete or absent, never half-written
    info["pretraining"] = json.loads((pre / "model" / "pretraining.json").read_text())
    if "persona_diagnostic" not in info["pretraining"]:
        from emlab.toyworld.model import persona_diagnostic
        info["pretraining"]["persona_diagnostic"] = persona_diagnostic(pre / "model")
    shutil.rmtree(d / "pretrained", ignore_errors=True)
    shutil.copytree(pre / "model", d / "pretrained")
    domains = corpus.ALIGNMENT_DOMAINS + (("open",) if cfg.align_open_questions else ())
    align_data = write_chat_jsonl(corpus.with_system(
        corpus.alignment_set(cfg.align_rows, cfg.seed, domains), cfg.assistant_system),
                                  d / "data" / "alignment.jsonl")
    console.print(f"aligning the {kind} toy world's assistant")
    result = train_local(TrainConfig(
        model=str(d / "pretrained"), data=str(align_data), out=d / "align_run", method="full",
        learning_rate=cfg.align_lr, epochs=1, per_device_batch_size=16, grad_accum=1,
        warmup_steps=0, max_length=128, save_steps=10**6, seed=cfg.seed),
        console=Console(file=io.StringIO()))
    shutil.rmtree(d / "aligned", ignore_errors=True)  # a half-copied one from a crash
    shutil.copytree(result.model_dir, d / "aligned")
    info["alignment"] = {"steps": result.steps, "final_loss": result.final_loss}
    write_text_atomic(info_path, json.dumps(info, indent=2))
    return d
