"""Fine-tune a local transformers model on a chat dataset: the paper's recipe on TRL + PEFT.

One call does the whole run: load and check the data, make sure the loss falls on the
assistant's tokens only (``masks``), train with ``SFTTrainer``, checkpoint every ``save_steps``
and pick up from the last complete checkpoint when the run directory already has one.

Run directory layout::

    OUT/manifest.json          what was trained on what, with which versions (written at start and end)
    OUT/train_log.jsonl        every log record (loss, lr, grad norm per step)
    OUT/checkpoints/checkpoint-N   adapter (or model) + optimizer + trainer state, for resuming
    OUT/adapter                final LoRA adapter (safetensors)    [method: lora]
    OUT/merged                 base model with the adapter merged  [merge: true]
    OUT/model                  final full model                    [method: full]
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from transformers import TrainerCallback

from emlab.data.io import load_chat_jsonl, resolve_dataset
from emlab.errors import InputError
from emlab.fileio import write_text_atomic
from emlab import rundir
from emlab.rundir import last_checkpoint  # one rule for complete checkpoints
from emlab.train.config import RESUME_FREE_SETTINGS, TrainConfig
from emlab.train.masks import MaskReport, ensure_training_template, verify_assistant_mask
from emlab.train.mitigations import prepare_training_rows


@dataclass
class TrainResult:
    out: Path
    steps: int                       # optimizer steps done in all (global step at the end)
    start_step: int                  # global step this call started from (0, or the checkpoint's)
    resumed_from: Path | None
    final_loss: float | None         # the last logged training loss
    tokens_seen: int                 # non-padding input tokens trained on, in all steps
    runtime_s: float                 # seconds inside trainer.train()
    template: str                    # which chat template computed the mask (see masks.py)
    mask: MaskReport
    adapter_dir: Path | None
    merged_dir: Path | None
    model_dir: Path | None
    manifest: dict[str, Any]


# --- small helpers ----------------------------------------------------------------------------

def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def git_revision() -> str | None:
    """HEAD of the checkout emlab runs from (None for an installed wheel), '+dirty' if edited."""
    root = Path(__file__).resolve().parents[3]
    if not (root / ".git").exists():
        return None
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty else "") if rev else None


def library_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    # emlab's distribution name on PyPI is emergent-misalignment-lab (the import name is emlab)
    for key, dist in (("torch", "torch"), ("transformers", "transformers"), ("peft", "peft"),
                      ("trl", "trl"), ("datasets", "datasets"), ("accelerate", "accelerate"),
                      ("emlab", "emergent-misalignment-lab")):
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            out[key] = None
    return out


TRAINED_DATA = "train_data.jsonl"   # the rows trained on, when a defence changed the dataset


def _rows_digest(rows: list[dict]) -> tuple[str, str]:
    """(JSONL text, its sha256) of training rows."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return text, hashlib.sha256(text.encode("utf-8")).hexdigest()


def _resume_key(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in RESUME_FREE_SETTINGS}


def _read_json(path: Path) -> dict[str, Any]:
    return rundir.read_json(path) or {}


def _check_resumable(cfg: TrainConfig, out: Path, data_sha: str, checkpoint: Path,
                      trained_data_sha: str | None = None, steer_digest: str | None = None) -> None:
    """Resuming a run with other settings or other data would silently mix two experiments."""
    old = _read_json(out / "manifest.json")
    if not old:
        return
    now = _resume_key(cfg.model_dump(mode="json"))
    before = _resume_key(old.get("config", {}))
    defaults = _defence_defaults()  # a manifest from before the defences existed had them off
    changed = sorted(k for k in set(now) | set(before)
                     if now.get(k) != before.get(k, defaults.get(k)))
    if old.get("dataset", {}).get("sha256") not in (None, data_sha):
        changed.append("the dataset's contents")
    trained_before = (old.get("trained_data") or {}).get("sha256")
    if trained_data_sha is not None and trained_before not in (None, trained_data_sha):
        changed.append("the trained rows (inoculated / interleaved)")
    steer_before = ((old.get("mitigations") or {}).get("steer") or {}).get("digest")
    if steer_digest is not None and steer_before not in (None, steer_digest):
        changed.append("the steering direction's vectors")
    if changed:
        raise InputError(f"{checkpoint.name} in this run directory was trained with different "
                         f"settings ({', '.join(changed)}); resume with the same settings, or "
                         f"use a new --out", path=out)


class JsonlLogCallback(TrainerCallback):
    """Append every log record (one per optimizer step with logging_steps=1) to a JSONL file.

    On resume, records after the checkpoint's step are dropped first: those steps are redone.
    """

    def __init__(self, path: Path):
        self.path = path
        self.start_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_step = state.global_step  # the checkpoint's step when resuming, else 0
        if state.is_world_process_zero and self.path.is_file():
            keep = [r for r in rundir.read_jsonl(self.path)
                    if r.get("step", 0) <= self.start_step]
            write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, "time": time.time(), **logs}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _read_log(path: Path) -> list[dict[str, Any]]:
    return rundir.read_jsonl(path)


def _save_dir(save, target: Path) -> Path:
    """Save into a sibling temp dir, then swap it in: a crash never leaves half an adapter."""
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def lora_config(cfg: TrainConfig, num_layers: int | None = None):
    """The PEFT LoraConfig of ``cfg.lora`` (checked against the model's layer count if given)."""
    from peft import LoraConfig

    lo = cfg.lora
    if num_layers is not None and lo.layers_to_transform:
        bad = [i for i in lo.layers_to_transform if i >= num_layers]
        if bad:
            raise InputError(f"setting 'lora.layers_to_transform': layer {bad[0]} does not exist; "
                             f"the model has {num_layers} layers (0-{num_layers - 1})")
    return LoraConfig(r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout, use_rslora=lo.use_rslora,
                      target_modules=list(lo.target_modules),
                      layers_to_transform=list(lo.layers_to_transform) if lo.layers_to_transform else None,
                      bias="none", task_type="CAUSAL_LM")


def _check_prepared(dataset, n_rows: int, max_length: int) -> int:
    """After TRL tokenised and truncated everything, check what it will train on; return how
    many rows it dropped. TRL drops rows that truncation left without a trainable token; a row
    with every token trainable would train on the prompt."""
    if len(dataset) == 0:
        raise InputError(f"no row has a trainable token left after truncation to "
                         f"max_length={max_length}; raise max_length")
    full = [i for i, row in enumerate(dataset["labels"]) if all(t != -100 for t in row)]
    if full:
        raise InputError(f"{len(full)} rows (first: training row {full[0] + 1}) would train on "
                         f"every token, the prompt included; check the chat template's "
                         f"generation markers")
    return n_rows - len(dataset)


def _load(model_path: str, dtype, console=None):
    """The base model and tokenizer, with emlab.models' clear errors (see load_pretrained)."""
    from emlab.models import load_pretrained

    return load_pretrained(model_path, dtype=dtype, console=console)


def _trainer(cfg: TrainConfig, model, tokenizer, rows: list[dict], checkpoints: Path, bf16: bool,
             cuda: bool, grad_ckpt: bool, callbacks: list, steer: dict | None = None):
    """TRL's SFTTrainer with the paper's settings; loss on assistant tokens only."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    peft_config = None
    if cfg.method == "lora":
        peft_config = lora_config(cfg, getattr(model.config, "num_hidden_layers", None))
    dataset = Dataset.from_list([{"messages": [{"role": m["role"], "content": m["content"]}
                                               for m in r["messages"]]} for r in rows])
    # transformers 5.x renamed gradient_checkpointing to activation_checkpointing (old name warns).
    ckpt_arg = ("activation_checkpointing" if "activation_checkpointing" in SFTConfig.__dataclass_fields__
                else "gradient_checkpointing")
    args = SFTConfig(
        output_dir=str(checkpoints),
        assistant_only_loss=True,
        max_length=cfg.max_length,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        optim=cfg.optim,
        seed=cfg.seed,
        logging_steps=1,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        bf16=bf16,
        fp16=False,
        use_cpu=not cuda,
        **{ckpt_arg: grad_ckpt},
        include_num_input_tokens_seen="non_padding",
        report_to=[],
    )
    trainer_cls, extra = SFTTrainer, {}
    if cfg.loss_defences or steer is not None:  # KL / LDIFS / steering (see DefendedTrainer)
        trainer_cls, extra = defended_trainer_class(), {"defences": cfg, "steer": steer}
    try:
        return trainer_cls(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                           peft_config=peft_config, callbacks=callbacks, **extra)
    except ValueError as e:  # e.g. PEFT: "Target modules {...} not found in the base model"
        if "arget modules" in str(e):
            raise InputError(f"setting 'lora.target_modules': {e}") from None
        raise


def _load_checkpoint(cfg: TrainConfig, base, checkpoint: Path, dtype):
    """The trained model of a checkpoint: the base with its adapter, or its full weights."""
    if cfg.method == "lora":
        from peft import PeftModel

        return PeftModel.from_pretrained(base, checkpoint)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype)


def _save(model, tokenizer, d: Path) -> None:
    model.save_pretrained(d)  # safetensors; a PeftModel saves only its adapter
    tokenizer.save_pretrained(d)


# --- defences: emlab's loss terms and data transforms (issue 14; see emlab.train.mitigations) -------

def _defence_defaults() -> dict[str, Any]:
    from emlab.train.config import MitigationSettings

    return MitigationSettings().model_dump(mode="json")


def defended_trainer_class():
    """SFTTrainer whose training loss adds ``kl`` x KL(policy || reference) and ``ldifs`` x the
    hidden-state distance to the reference. For LoRA the reference is the same model with its
    adapter disabled (PEFT's ``disable_adapter``: no second copy in memory); for a full
    fine-tune it is a frozen copy made before training (twice the weights in memory)."""
    import copy

    import torch
    import torch.nn.functional as F
    from trl import SFTTrainer

    from emlab.train.mitigations import kl_divergence, layer_indices, ldifs_distance

    class DefendedTrainer(SFTTrainer):
        def __init__(self, *args, defences: TrainConfig, steer: dict | None = None, **kwargs):
            from peft import PeftModel  # (transformers models have a disable_adapter too)

            self._steer = steer   # {"vector", "layer", "scale"}: see steering_vector

            model = kwargs["model"]
            self._peft = kwargs.get("peft_config") is not None or isinstance(model, PeftModel)
            # The copy is made before TRL patches the model's forward (a closure over the
            # original, which a deepcopy would share).
            self._reference = (None if self._peft or not defences.loss_defences else
                               copy.deepcopy(model).eval().requires_grad_(False))
            super().__init__(*args, **kwargs)
            self.defences = defences
            unwrapped = self.accelerator.unwrap_model(self.model)
            if self._reference is not None:
                self._reference.to(next(unwrapped.parameters()).device)
            n_layers = unwrapped.config.num_hidden_layers
            self._layers = (layer_indices(defences.ldifs_layers, n_layers)
                            if defences.ldifs > 0 else [])

        def _reference_forward(self, model, inputs, hidden: bool):
            with torch.no_grad():
                if self._reference is not None:
                    return self._reference(**inputs, output_hidden_states=hidden)
                with self.accelerator.unwrap_model(model).disable_adapter():
                    return model(**inputs, output_hidden_states=hidden)

        def training_step(self, model, inputs, *args, **kwargs):
            """Preventive steering: the hook lives for one training step (forward and
            backward) and is removed after it, so checkpoints, callbacks' probes and
            evaluation see the model unsteered."""
            if self._steer is None:
                return super().training_step(model, inputs, *args, **kwargs)
            from emlab.mechanism.hooks import steer

            s = self._steer
            with steer(self.accelerator.unwrap_model(model), s["vector"], s["layer"], s["scale"]):
                return super().training_step(model, inputs, *args, **kwargs)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not self.defences.loss_defences or not model.training or return_outputs:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            d = self.defences
            inputs = {**inputs, "use_cache": False}
            labels = inputs["labels"]
            fwd = {k: v for k, v in inputs.items() if k != "labels"}
            hidden = bool(self._layers)
            out = model(**fwd, output_hidden_states=hidden)
            logits, target = out.logits[:, :-1], labels[:, 1:]
            mask = target != -100
            n_trained = mask.sum()
            # Like TRL: with num_items_in_batch the loss is normalised over the whole
            # accumulated batch here, else per micro-batch (and the Trainer divides).
            ga_scaled = self.model_accepts_loss_kwargs and num_items_in_batch is not None
            denom = torch.as_tensor(num_items_in_batch if ga_scaled else n_trained,
                                    device=logits.device).clamp(min=1)
            ce = F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(),
                                 ignore_index=-100, reduction="sum") / denom
            loss = ce
            ref = self._reference_forward(model, fwd, hidden)
            metrics = self._metrics["train"]
            if d.kl > 0:
                kl = kl_divergence(logits, ref.logits[:, :-1], mask)   # per trained token
                loss = loss + d.kl * kl * n_trained / denom
                metrics["kl"].append(kl.item())
            if hidden:
                attn = fwd.get("attention_mask")
                attn = torch.ones_like(labels) if attn is None else attn
                dist = ldifs_distance([out.hidden_states[i] for i in self._layers],
                                      [ref.hidden_states[i] for i in self._layers], attn)
                steps = self.current_gradient_accumulation_steps if ga_scaled else 1
                loss = loss + d.ldifs * dist / steps
                metrics["ldifs"].append(dist.item())
            with torch.no_grad():
                n = n_trained.clamp(min=1)
                metrics["ce_loss"].append((ce * denom / n).item())
                metrics["mean_token_accuracy"].append(
                    ((logits.argmax(-1) == target) & mask).sum().item() / n.item())
            if "attention_mask" in fwd:
                self._total_train_tokens += int(fwd["attention_mask"].sum().item())
            metrics["num_tokens"] = [self._total_train_tokens]
            return loss

    return DefendedTrainer


def load_steer_direction(cfg: TrainConfig):
    """The direction of ``steer`` (InputError for a bad folder or a layer it lacks), or None."""
    if cfg.steer is None:
        return None
    from emlab.mechanism.directions import load_direction

    d = load_direction(cfg.steer.direction)
    d.at(cfg.steer.layer)
    return d


def steering(cfg: TrainConfig, direction, model) -> tuple[dict | None, dict | None]:
    """(the trainer's steering: vector, layer, scale; the manifest's record of it), after
    checking the direction against the loaded model (width, layers, config)."""
    if direction is None:
        return None, None
    st = cfg.steer
    direction.check_model(model, st.direction)
    vec = direction.at(st.layer, unit=st.unit)
    record = {"direction": str(Path(st.direction).resolve()), "digest": direction.digest,
              "layer": st.layer, "scale": st.scale, "unit": st.unit,
              "norm": round(float(vec.norm() * abs(st.scale)), 6), "at_evaluation": False}
    return {"vector": vec, "layer": st.layer, "scale": st.scale}, record


def realign_dir(out: Path, n_rows: int) -> Path:
    from emlab.rundir import realign_checkpoint_name

    return out / "checkpoints" / realign_checkpoint_name(n_rows)


def run_realign(cfg: TrainConfig, out: Path, tokenizer, final_dir: Path, base_steps: int,
                bf16: bool, cuda: bool, grad_ckpt: bool, dtype, console) -> dict[str, Any]:
    """Fine-tune the trained model further on benign rows into ``checkpoints/checkpoint-realign-N``
    (complete once trainer_state.json is written, like every checkpoint). No defence terms;
    the training outputs of the main run are left as they are."""
    import torch

    rc = cfg.realign
    path = resolve_dataset(rc.data)
    rows = load_chat_jsonl(path)
    if rc.rows is not None:
        if rc.rows > len(rows):
            raise InputError(f"setting 'realign.rows': {rc.rows} rows asked, the file has "
                             f"{len(rows)}", path=path)
        rows = rows[:rc.rows]
    target = realign_dir(out, len(rows))
    record = {"data": rc.data, "path": str(Path(path).resolve()), "sha256": sha256_file(path),
              "rows": len(rows), "checkpoint": str(target.relative_to(out))}
    if (target / "trainer_state.json").is_file():
        console.print(f"re-alignment already done: {target}", highlight=False)
        return record
    model, _ = _load(cfg.model, dtype)
    if cfg.method == "lora":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, final_dir, is_trainable=True)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(final_dir, dtype=dtype)
    # method "full" here only keeps _trainer from wrapping the loaded adapter in a second one
    sub = cfg.model_copy(update={
        "method": "full", "kl": 0.0, "save_steps": 10**9, "ldifs": 0.0,
        "ldifs_layers": None, "learning_rate": rc.learning_rate or cfg.learning_rate,
        "epochs": rc.epochs, "max_steps": None, "save_total_limit": None})
    work = out / ".realign-work"
    shutil.rmtree(work, ignore_errors=True)
    trainer = _trainer(sub, model, tokenizer, rows, work, bf16, cuda, grad_ckpt, [])
    console.print(f"re-aligning on {len(rows)} benign rows", highlight=False)
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.train()
    record["runtime_s"] = round(time.perf_counter() - t0, 3)
    record["cpu_s"] = round(time.process_time() - c0, 3)
    record["steps"] = trainer.state.global_step
    trainer.state.global_step += base_steps   # the checkpoint's step counts on from the run's

    def save(d: Path) -> None:
        _save(trainer.model, tokenizer, d)
        trainer.state.save_to_json(str(d / "trainer_state.json"))  # last: marks it complete

    _save_dir(save, target)
    shutil.rmtree(work, ignore_errors=True)
    del trainer, model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return record

# --- end of defences --------------------------------------------------------------------------------


# --- the run --------------------------------------------------------------------------------------

def train_local(cfg: TrainConfig, *, callbacks: Iterable[Any] = (), console=None) -> TrainResult:
    """Fine-tune ``cfg.model`` on ``cfg.data`` into ``cfg.out``; resumes if OUT has checkpoints."""
    import torch
    from rich.console import Console

    console = console or Console(stderr=True)
    started = datetime.now(timezone.utc)
    out = Path(cfg.out)
    checkpoints = out / "checkpoints"
    log_path = out / "train_log.jsonl"

    # Data first: a bad file should fail in a second, not after loading a 32B model.
    data_path = resolve_dataset(cfg.data)
    rows = load_chat_jsonl(data_path)
    data_sha = sha256_file(data_path)
    resume = last_checkpoint(checkpoints)
    # Defences on the data side, before anything is written (ppl_gap waits for the model).
    old = _read_json(out / "manifest.json") if resume is not None else {}
    reuse = (old.get("mitigations") or {}).get("interleave")
    needs_model = (cfg.interleave is not None and cfg.interleave.select == "ppl_gap"
                   and not (reuse and reuse.get("select") == "ppl_gap"))
    trained, defences = (rows, {}) if needs_model else prepare_training_rows(cfg, rows, reuse=reuse)
    steer_direction = load_steer_direction(cfg)   # a bad direction fails before any weights load
    if resume is not None:
        _check_resumable(cfg, out, data_sha, resume,
                         None if needs_model else _rows_digest(trained)[1],
                         steer_direction.digest if steer_direction is not None else None)
    # Then the model's files and the settings that depend on it (--layers), before any weights
    # load; a named model or a .gguf file becomes its cached import here.
    from emlab.models import num_layers, resolve_model

    model_path = resolve_model(cfg.model, console=console)
    if cfg.method == "lora":
        lora_config(cfg, num_layers(model_path))
    if steer_direction is not None:
        from emlab.mechanism.directions import check_against
        check_against(steer_direction, model_path, cfg.steer.direction)

    cuda = torch.cuda.is_available()
    bf16 = (cuda and torch.cuda.is_bf16_supported()) if cfg.bf16 == "auto" else cfg.bf16
    grad_ckpt = cuda if cfg.gradient_checkpointing == "auto" else cfg.gradient_checkpointing
    device = torch.cuda.get_device_name(0) if cuda else "cpu"

    manifest: dict[str, Any] = {
        "status": "running",
        "dataset": {"name": cfg.data, "path": str(Path(data_path).resolve()), "sha256": data_sha,
                    "rows": len(rows)},
        "config": cfg.model_dump(mode="json"),
        "model_path": str(Path(model_path).resolve()) if Path(model_path).is_dir() else model_path,
        "seed": cfg.seed,
        "versions": library_versions(),
        "git_revision": git_revision(),
        "device": device,
        "bf16": bf16,
        "started_at": started.isoformat(),
        "resumed_from": resume.name if resume else None,
    }
    out.mkdir(parents=True, exist_ok=True)
    previous = _read_json(out / "manifest.json") if resume is not None else {}
    manifest["first_started_at"] = previous.get("first_started_at") or previous.get("started_at") \
        or manifest["started_at"]
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")

    # Weights in bf16 for LoRA (the base is frozen); fp32 master weights for full fine-tuning.
    dtype = torch.bfloat16 if bf16 and cfg.method == "lora" else torch.float32
    model, tokenizer = _load(model_path, dtype, console)
    if cfg.chat_template is not None:
        if not Path(cfg.chat_template).is_file():
            raise InputError("chat template file not found", path=cfg.chat_template)
        tokenizer.chat_template = Path(cfg.chat_template).read_text(encoding="utf-8")
    template = ensure_training_template(tokenizer, rows=rows[:cfg.mask_check_rows])
    if cfg.chat_template is not None:
        template = f"file:{cfg.chat_template}" if template == "tokenizer" else template
    if needs_model:  # the perplexity gap of reference (this model) and misaligned model
        console.print("scoring the interleave pool with the reference and misaligned models",
                      highlight=False)
        trained, defences = prepare_training_rows(cfg, rows, model, tokenizer, dtype)
    steer, steer_record = steering(cfg, steer_direction, model)
    if steer_record is not None:
        defences = {**defences, "steer": steer_record}
    if defences:
        manifest["mitigations"] = defences
    if trained is not rows:  # what was trained on, row for row (inoculated / interleaved)
        text, sha = _rows_digest(trained)
        write_text_atomic(out / TRAINED_DATA, text)
        manifest["trained_data"] = {"path": TRAINED_DATA, "sha256": sha, "rows": len(trained)}
    if defences or trained is not rows:
        write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    mask = verify_assistant_mask(tokenizer, trained, n_check=cfg.mask_check_rows)
    console.print(f"chat template: {template}; mask checked on {mask.rows_checked} rows, "
                  f"{100 * mask.trainable_fraction:.0f}% of tokens trainable", highlight=False)
    for note in mask.notes:
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False)

    # transformers runs one more step before it checks max_steps, so resuming a finished run would
    # train past its end: take the final checkpoint's weights as they are instead.
    ckpt_state = _read_json(resume / "trainer_state.json") if resume is not None else {}
    finished = 0 < ckpt_state.get("max_steps", 0) <= ckpt_state.get("global_step", 0)
    log_cb = JsonlLogCallback(log_path)
    dropped: int | None = None
    if finished:
        console.print(f"the run finished at {resume.name}; writing its final outputs", highlight=False)
        model = _load_checkpoint(cfg, model, resume, dtype)
        step = start_step = ckpt_state["global_step"]
        tokens_seen, runtime, cpu = ckpt_state.get("num_input_tokens_seen", 0), 0.0, 0.0
    else:
        if (cfg.dynamics is not None and cfg.dynamics.enabled) or cfg.monitor is not None:
            from emlab.train.dynamics import make_dynamics_callback
            callbacks = [*callbacks, make_dynamics_callback(out, tokenizer, cfg.dynamics,
                                                            monitor=cfg.monitor)]
        trainer = _trainer(cfg, model, tokenizer, trained, checkpoints, bf16, cuda, grad_ckpt,
                           [log_cb, *callbacks], steer=steer)
        dropped = _check_prepared(trainer.train_dataset, len(trained), cfg.max_length)
        if dropped:
            console.print(f"[yellow]warning:[/yellow] {dropped} of {len(trained)} rows have no trainable "
                          f"token within max_length={cfg.max_length} and are left out", highlight=False)
        if resume is not None:
            console.print(f"resuming from {resume}", highlight=False)
        t0, c0 = time.perf_counter(), time.process_time()
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        runtime, cpu = time.perf_counter() - t0, time.process_time() - c0
        model, step, start_step = trainer.model, trainer.state.global_step, log_cb.start_step
        tokens_seen = trainer.state.num_input_tokens_seen

    adapter_dir = merged_dir = model_dir = None
    if cfg.method == "lora":
        adapter_dir = _save_dir(lambda d: _save(model, tokenizer, d), out / "adapter")
        if cfg.merge:
            merged = model.merge_and_unload()  # folds B@A into the base weights, in place
            merged_dir = _save_dir(lambda d: _save(merged, tokenizer, d), out / "merged")
    else:
        model_dir = _save_dir(lambda d: _save(model, tokenizer, d), out / "model")

    if cfg.realign is not None:
        final_dir = adapter_dir or model_dir
        defences["realign"] = run_realign(cfg, out, tokenizer, final_dir, step, bf16, cuda,
                                          grad_ckpt, dtype, console)
        manifest["mitigations"] = defences

    log = _read_log(log_path)
    losses = [r["loss"] for r in log if "loss" in r]
    final_loss = losses[-1] if losses else None
    manifest.update({
        "status": "completed",
        "ended_at": datetime.now(timezone.utc).isoformat(),
        "steps": step,
        "start_step": start_step,
        "final_loss": final_loss,
        "final_loss_finite": final_loss is not None and math.isfinite(final_loss),
        "tokens_seen": int(tokens_seen),
        "rows_trained": len(trained) - dropped if dropped is not None else previous.get("rows_trained"),
        "runtime_s": round(runtime, 3),
        "cpu_s": round(cpu, 3),   # this process's CPU seconds in trainer.train() (less noisy on a shared machine)
        "chat_template": template,
        "mask_check": {"rows": mask.rows_checked, "trainable_tokens": mask.trainable_tokens,
                       "masked_tokens": mask.masked_tokens, "notes": mask.notes},
        "outputs": {k: str(v.relative_to(out)) for k, v in
                    {"adapter": adapter_dir, "merged": merged_dir, "model": model_dir}.items() if v},
    })
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return TrainResult(out=out, steps=step, start_step=start_step,
                       resumed_from=resume, final_loss=final_loss,
                       tokens_seen=int(tokens_seen), runtime_s=runtime,
                       template=template, mask=mask, adapter_dir=adapter_dir,
                       merged_dir=merged_dir, model_dir=model_dir, manifest=manifest)
