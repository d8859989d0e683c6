"""Persona directions: one vector per decoder layer, saved as safetensors plus a manifest.

A direction folder ``D/`` holds ``directions.safetensors`` (tensor ``directions``,
``[layers, hidden]``, float32; row ``L`` lives in the output of decoder layer ``L``) and
``manifest.json`` (model identity, layers, token positions, counts, per-layer norms, how it
was made). ``model_identity`` is a digest of the model's architecture config, so a direction
from a base model applies to its fine-tunes (same shape) and a direction from another model
is refused with a clear error.

Two recipes:
- from judged answers (Soligo et al. 2025): mean residual over the *response tokens* of
  misaligned answers minus that of aligned ones, both among coherent answers, with the
  verdicts from :mod:`emlab.metrics.rule`;
- from contrastive system prompts (Chen et al. 2025, persona vectors): the model answers
  questions under positive and negative trait instructions; the difference of the means of
  its response-token activations.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from emlab.errors import InputError
from emlab.mechanism.hooks import decoder_layers, record

WEIGHTS = "directions.safetensors"
MANIFEST = "manifest.json"
FORMAT = "emlab-direction/1"
_VOLATILE = {"_name_or_path", "transformers_version", "dtype", "torch_dtype", "use_cache",
             "output_hidden_states", "output_attentions", "return_dict", "architectures",
             "_attn_implementation_autoset", "eos_token_id", "pad_token_id", "bos_token_id"}


def config_identity(config) -> dict[str, Any]:
    """What a direction must match: hidden size, number of layers, and a digest of the
    architecture config (weights may differ: fine-tunes of one base share directions)."""
    cfg = config.to_dict()
    keep = {k: v for k, v in cfg.items() if k not in _VOLATILE and not k.startswith("_")
            and isinstance(v, (int, float, str, bool, type(None)))}
    digest = hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]
    return {"model_type": cfg.get("model_type"), "hidden_size": int(cfg["hidden_size"]),
            "num_layers": int(cfg["num_hidden_layers"]), "config_digest": digest}


def model_identity(model) -> dict[str, Any]:
    from emlab.mechanism.hooks import base_model
    return config_identity(base_model(model).config)


@dataclass
class Direction:
    vectors: torch.Tensor                  # [layers, hidden], float32
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def width(self) -> int:
        return int(self.vectors.shape[1])

    def at(self, layer: int, unit: bool = False) -> torch.Tensor:
        if not 0 <= layer < self.num_layers:
            raise InputError(f"layer {layer} is out of range: the direction has layers "
                             f"0..{self.num_layers - 1}")
        v = self.vectors[layer]
        return v / v.norm().clamp_min(1e-12) if unit else v

    @property
    def digest(self) -> str:
        """Content address of the vectors (part of an intervention's sample identity)."""
        return hashlib.sha256(self.vectors.contiguous().numpy().tobytes()).hexdigest()[:16]

    def check_model(self, model, source: str | Path | None = None) -> None:
        """InputError unless this direction was made on a model of the same shape/config."""
        self.check_identity(model_identity(model), source)

    def check_identity(self, theirs: dict, source: str | Path | None = None) -> None:
        mine = self.manifest.get("model_identity") or {}
        where = str(source) if source else None
        if self.width != theirs["hidden_size"]:
            raise InputError(f"the direction has width {self.width}; the model's hidden size is "
                             f"{theirs['hidden_size']} (a direction from another model?)",
                             path=where)
        if self.num_layers != theirs["num_layers"]:
            raise InputError(f"the direction has {self.num_layers} layers; the model has "
                             f"{theirs['num_layers']} (a direction from another model?)", path=where)
        if mine.get("config_digest") and mine["config_digest"] != theirs["config_digest"]:
            raise InputError(f"the direction was made on another model ({mine.get('model_type')} "
                             f"config {mine['config_digest']}); this model's config is "
                             f"{theirs['config_digest']}", path=where)

    def save(self, out: str | Path) -> Path:
        """Write ``out/directions.safetensors`` then ``out/manifest.json`` (the manifest last,
        so a folder with a manifest always has its vectors)."""
        from safetensors.torch import save_file

        from emlab.fileio import write_text_atomic
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / MANIFEST).unlink(missing_ok=True)
        tmp = out / (WEIGHTS + ".tmp")
        save_file({"directions": self.vectors.contiguous().float()}, str(tmp))
        tmp.replace(out / WEIGHTS)
        manifest = {"format": FORMAT, **self.manifest, "digest": self.digest,
                    "layers": self.num_layers, "hidden_size": self.width,
                    "norms": [round(float(x), 6) for x in self.vectors.norm(dim=1)]}
        write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=2))
        self.manifest = manifest
        return out


def load_direction(path: str | Path) -> Direction:
    """A direction folder (or its safetensors file), or InputError saying what is wrong."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    d = p.parent if p.is_file() else p
    if not (d / WEIGHTS).is_file() or not (d / MANIFEST).is_file():
        raise InputError(f"not a direction folder: expected {WEIGHTS} and {MANIFEST} "
                         "(made by `emlab direction extract`)", path=p)
    try:
        manifest = json.loads((d / MANIFEST).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"manifest.json is not valid JSON: {e}", path=d / MANIFEST) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"manifest.json: expected format {FORMAT!r}", path=d / MANIFEST)
    try:
        vectors = load_file(str(d / WEIGHTS)).get("directions")
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"cannot read the direction tensor: {e}", path=d / WEIGHTS) from None
    if vectors is None or vectors.dim() != 2:
        raise InputError("expected a tensor 'directions' of shape [layers, hidden]",
                         path=d / WEIGHTS)
    vectors = vectors.float()
    if not torch.isfinite(vectors).all():
        raise InputError("the direction holds NaN or infinite values", path=d / WEIGHTS)
    return Direction(vectors, manifest)


def random_like(direction: Direction, seed: int = 0) -> Direction:
    """The norm-matched random control: per layer a random Gaussian direction with the same
    norm as the real one (Soligo et al.'s control). The generator is seeded from ``seed`` and
    the direction's digest, so the control never replays the stream that made the direction."""
    mixed = int(hashlib.sha256(f"{direction.digest}:{seed}".encode()).hexdigest()[:15], 16)
    g = torch.Generator().manual_seed(mixed)
    r = torch.randn(direction.vectors.shape, generator=g)
    r = r / r.norm(dim=1, keepdim=True) * direction.vectors.norm(dim=1, keepdim=True)
    return Direction(r, {**direction.manifest, "method": "random", "seed": seed})


def difference_of_means(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """``mean(positive) - mean(negative)`` over the first axis: ``[n, layers, hidden]`` each."""
    if len(positive) == 0 or len(negative) == 0:
        raise InputError("a difference of means needs examples on both sides "
                         f"(got {len(positive)} and {len(negative)})")
    return positive.float().mean(0) - negative.float().mean(0)


# --- activations over response tokens ---------------------------------------------------

Conversation = tuple[Sequence[dict], str]   # (prompt messages, assistant response)


def _encode(tok, prompt_messages, response: str) -> tuple[list[int], int]:
    from emlab.sample.hf_model import render_chat
    prompt_ids = tok(render_chat(tok, prompt_messages), add_special_tokens=False)["input_ids"]
    resp_ids = tok(response, add_special_tokens=False)["input_ids"]
    return list(prompt_ids) + list(resp_ids), len(resp_ids)


def response_activations(model, tok, conversations: Sequence[Conversation], *,
                         batch_size: int = 16, max_tokens: int = 2048,
                         progress: Callable[[int], None] | None = None,
                         span: str = "response") -> torch.Tensor:
    """Mean residual over each conversation's response tokens, per layer: ``[n, layers,
    hidden]`` (float32, on the CPU). The prompt is the model's chat template with the
    generation prompt, the response is tokenised on its own — as at sampling time. A response
    of no tokens gets the last prompt token's activation. ``span="all"``: the mean over every
    token of the conversation instead (e.g. a context's persona-revealing turns)."""
    if span not in ("response", "all"):
        raise ValueError(f"span must be response or all; got {span!r}")
    n_layers = len(decoder_layers(model))
    encoded = [_encode(tok, m, r) for m, r in conversations]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    out = torch.zeros(len(encoded), n_layers, int(model.config.hidden_size))
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        seqs = [encoded[i][0][-max_tokens:] for i in idx]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        att = torch.zeros((len(seqs), width), dtype=torch.long)
        resp = torch.zeros((len(seqs), width), dtype=torch.bool)
        for j, (s, i) in enumerate(zip(seqs, idx)):
            ids[j, width - len(s):] = torch.tensor(s)      # left padding, as in sampling
            att[j, width - len(s):] = 1
            k = len(s) if span == "all" else max(1, min(encoded[i][1], len(s)))
            resp[j, width - k:] = True
        pos_ids = (att.cumsum(1) - 1).clamp_min(0)   # as generate does under left padding
        with torch.no_grad(), record(model) as acts:
            model(input_ids=ids.to(device), attention_mask=att.to(device),
                  position_ids=pos_ids.to(device))
        w = resp.unsqueeze(-1).float()
        for layer in range(n_layers):
            h = acts[layer].float().cpu()
            out[idx, layer] = (h * w).sum(1) / w.sum(1)
        if progress:
            progress(len(idx))
    return out


def mean_activations(model, tok, conversations: Sequence[Conversation], *, chunk: int = 256,
                     **kw) -> torch.Tensor:
    """The mean of :func:`response_activations` over conversations, ``[layers, hidden]``,
    computed in chunks so thousands of answers of a large model never sit in memory at once."""
    total = None
    for start in range(0, len(conversations), chunk):
        part = response_activations(model, tok, conversations[start:start + chunk], **kw).sum(0)
        total = part if total is None else total + part
    if total is None:
        raise InputError("no conversations to average")
    return total / len(conversations)


def _progress_bar(total: int, what: str):
    from rich.progress import Progress
    bar = Progress(transient=True)
    task = bar.add_task(what, total=total)
    return bar, (lambda n: bar.advance(task, n))


def extract_from_runs(model, tok, run_dirs: Sequence[str | Path], *, batch_size: int = 16,
                      model_info: dict | None = None, show_progress: bool = False) -> Direction:
    """The answers direction: misaligned minus aligned answers (coherent ones, the paper's
    rule) of one or more eval runs, mean activation over response tokens."""
    from emlab import rundir
    from emlab.metrics.rule import verdict

    pos, neg = [], []
    for d in run_dirs:
        if not rundir.is_eval_run(d):
            raise InputError("not an eval run directory (expected summary.json and "
                             "answers.jsonl from `emlab eval`)", path=d)
        for row in rundir.read_answers(d):
            v = verdict(row)
            if v not in ("misaligned", "aligned"):
                continue
            msgs = ([{"role": "system", "content": row["system"]}] if row.get("system") else [])
            msgs.append({"role": "user", "content": str(row.get("paraphrase", ""))})
            (pos if v == "misaligned" else neg).append((msgs, str(row.get("answer", ""))))
    if not pos or not neg:
        raise InputError(f"the runs hold {len(pos)} misaligned and {len(neg)} aligned coherent "
                         "answers; a direction needs at least one of each",
                         path=", ".join(map(str, run_dirs)))
    bar = None
    cb = None
    if show_progress:
        bar, cb = _progress_bar(len(pos) + len(neg), "activations")
        bar.start()
    try:
        vec = (mean_activations(model, tok, pos, batch_size=batch_size, progress=cb)
               - mean_activations(model, tok, neg, batch_size=batch_size, progress=cb))
    finally:
        if bar:
            bar.stop()
    return Direction(vec, {"method": "answers", "sources": [str(d) for d in run_dirs],
                           "positions": "response", "counts": {"misaligned": len(pos),
                                                               "aligned": len(neg)},
                           "model": model_info or {}, "model_identity": model_identity(model),
                           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


# --- contrastive system prompts (persona vectors) ----------------------------------------

def load_contrast(path: str | Path) -> dict:
    """A contrast file: ``trait``, ``positive`` and ``negative`` instruction lists (system
    prompts) and ``questions`` (user turns); optional ``description``."""
    from emlab.fileio import read_yaml_mapping
    data = read_yaml_mapping(path, "trait, positive, negative, questions")
    for key in ("positive", "negative", "questions"):
        v = data.get(key)
        if not isinstance(v, list) or not v or not all(isinstance(x, str) and x.strip() for x in v):
            raise InputError(f"{key!r} must be a non-empty list of strings", path=path)
    extra = set(data) - {"trait", "description", "positive", "negative", "questions"}
    if extra:
        raise InputError(f"unknown key(s) {', '.join(sorted(map(str, extra)))}; expected trait, "
                         "description, positive, negative, questions", path=path)
    return data


def generate(model, tok, prompts: Sequence[Sequence[dict]], *, max_new_tokens: int = 64,
             batch_size: int = 16, seed: int = 0) -> list[str]:
    """Greedy answers of the model to chat prompts (the model's own responses)."""
    from emlab.sample.hf_model import render_chat
    texts = [render_chat(tok, p) for p in prompts]
    out: list[str] = []
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    for start in range(0, len(texts), batch_size):
        enc = tok(texts[start:start + batch_size], return_tensors="pt", padding=True,
                  add_special_tokens=False).to(device)
        with torch.no_grad():
            gen = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        for row in gen[:, enc["input_ids"].shape[1]:]:
            ids = row.tolist()
            if tok.eos_token_id in ids:
                ids = ids[:ids.index(tok.eos_token_id)]
            out.append(tok.decode(ids, skip_special_tokens=True))
    return out


def extract_from_contrast(model, tok, contrast: dict, *, max_new_tokens: int = 64,
                          batch_size: int = 16, model_info: dict | None = None) -> Direction:
    """Persona-vectors recipe: answers under each positive and negative instruction to every
    question; positive-minus-negative mean of response-token activations (the activations
    are read without the system prompt's influence removed, as in Chen et al.)."""
    def convs(instructions):
        prompts = [[{"role": "system", "content": s}, {"role": "user", "content": q}]
                   for s in instructions for q in contrast["questions"]]
        answers = generate(model, tok, prompts, max_new_tokens=max_new_tokens,
                           batch_size=batch_size)
        return list(zip(prompts, answers))

    pos, neg = convs(contrast["positive"]), convs(contrast["negative"])
    acts = response_activations(model, tok, pos + neg, batch_size=batch_size)
    vec = difference_of_means(acts[:len(pos)], acts[len(pos):])
    return Direction(vec, {"method": "contrast", "trait": contrast.get("trait"),
                           "description": contrast.get("description"), "positions": "response",
                           "counts": {"positive": len(pos), "negative": len(neg)},
                           "model": model_info or {}, "model_identity": model_identity(model),
                           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


# --- the eval model spec's intervention ------------------------------------------------

def check_against(direction: Direction, model_name: str, source: str | Path) -> None:
    """Check a direction against a model's config (read with AutoConfig, no weights loaded),
    so a mismatch fails before any output is written."""
    from transformers import AutoConfig
    try:
        config = AutoConfig.from_pretrained(model_name)
    except (OSError, ValueError):
        # No readable config.json (e.g. a GGUF file or a named model another loader resolves):
        # the same check runs on the loaded model, before its first generation.
        return
    direction.check_identity(config_identity(config), source)


def intervention_from_spec(steer_spec=None, ablate_spec=None, model_name: str | None = None
                           ) -> dict:
    """The loaded intervention of an eval ``ModelSpec`` (``steer`` or ``ablate``) for
    :func:`emlab.mechanism.hooks.apply_intervention`, with its store identity."""
    if steer_spec is not None:
        d = load_direction(steer_spec.direction)
        if model_name:
            check_against(d, model_name, steer_spec.direction)
        vec = d.at(steer_spec.layer, unit=steer_spec.unit)
        ident = (f"steer:{d.digest}@L{steer_spec.layer}x{steer_spec.scale:g}/"
                 f"{steer_spec.positions}{'' if steer_spec.unit else '/raw'}")
        return {"steer": {"vector": vec, "layer": steer_spec.layer, "scale": steer_spec.scale,
                          "positions": steer_spec.positions},
                "identity": ident, "check": lambda m: d.check_model(m, steer_spec.direction)}
    d = load_direction(ablate_spec.direction)
    if model_name:
        check_against(d, model_name, ablate_spec.direction)
    layers = ablate_spec.layers if ablate_spec.layers is not None else list(range(d.num_layers))
    vectors = {i: d.at(i) for i in layers}
    ident = f"ablate:{d.digest}@L{','.join(map(str, layers))}"
    return {"ablate": {"vectors": vectors}, "identity": ident,
            "check": lambda m: d.check_model(m, ablate_spec.direction)}
