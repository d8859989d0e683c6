"""Steering, ablation and recording on the residual stream, with plain PyTorch forward hooks.

Layer ``L`` means the output of decoder layer ``L`` (0-based): the residual stream after that
block, which is what transformers' decoder layers return (a tensor, or a tuple whose first
element is it). Nothing in the model is copied or patched; every hook is removed when its
``with`` block ends, also on an exception.

Positions during ``generate`` with a KV cache: a forward call that starts from an empty cache
processes the prompt (the ``prompt`` positions); calls that extend a cache process generated
tokens (the ``response`` positions). A forward over whole conversations without a cache (data
screening, training) can instead pass a boolean mask ``[batch, seq]`` as ``positions``.

Why not steering-vectors / repeng / nnsight: steering-vectors pins ``transformers<5`` (we run
5.x), repeng pins ``numpy<2`` and trains its own control model wrapper, nnsight brings a
tracing runtime and a remote-execution client; none offers prompt-vs-response control under
a KV cache. Forward hooks are a few lines and work for any decoder-only transformers model.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Literal, Sequence, Union

import torch

Positions = Union[Literal["prompt", "response", "all"], torch.Tensor]
POSITIONS = ("prompt", "response", "all")


def base_model(model):
    """The transformers model under a PEFT wrapper (the hooks go on its layers)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder blocks of a causal LM: the ModuleList with ``num_hidden_layers`` entries."""
    m = base_model(model)
    n = getattr(getattr(m, "config", None), "num_hidden_layers", None)
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        obj = m
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, torch.nn.ModuleList) and (n is None or len(obj) == n):
            return obj
    for mod in m.modules():
        if isinstance(mod, torch.nn.ModuleList) and n is not None and len(mod) == n:
            return mod
    raise ValueError(f"cannot find the decoder layers of {type(m).__name__}")


def hidden_size(model) -> int:
    return int(base_model(model).config.hidden_size)


def _cache_len(kwargs: dict, index: int) -> int:
    """Tokens already in this layer's KV cache (earlier layers of the same call have already
    written theirs, so ask for this layer's)."""
    for name in ("cache", "past_key_values", "past_key_value"):
        c = kwargs.get(name)
        if c is not None:
            try:
                return int(c.get_seq_length(index))
            except (AttributeError, TypeError, IndexError, ValueError):
                return 0
    return 0


def _split(output):
    if isinstance(output, tuple):
        return output[0], lambda h: (h, *output[1:])
    return output, lambda h: h


def _check_positions(positions: Positions) -> None:
    if isinstance(positions, torch.Tensor):
        if positions.dtype != torch.bool or positions.dim() != 2:
            raise ValueError("a positions mask must be a bool tensor [batch, seq]")
    elif positions not in POSITIONS:
        raise ValueError(f"positions must be one of {', '.join(POSITIONS)} or a bool mask; "
                         f"got {positions!r}")


def _layer_hook(model, index: int, edit, positions: Positions):
    """Register pre+post hooks on one layer; ``edit(h) -> new h`` is applied at ``positions``."""
    state = {"past": 0}

    def pre(_m, _args, kwargs):
        state["past"] = _cache_len(kwargs, index)

    def post(_m, _args, output):
        h, rebuild = _split(output)
        if isinstance(positions, torch.Tensor):
            if positions.shape != h.shape[:2]:
                raise ValueError(f"positions mask {tuple(positions.shape)} does not match the "
                                 f"activations {tuple(h.shape[:2])}")
            mask = positions.to(h.device).unsqueeze(-1)
        else:
            in_response = state["past"] > 0
            if positions == "prompt" and in_response or positions == "response" and not in_response:
                return output
            mask = None
        new = edit(h)
        if mask is not None:
            new = torch.where(mask, new, h)
        return rebuild(new)

    layer = decoder_layers(model)[index]
    return [layer.register_forward_pre_hook(pre, with_kwargs=True),
            layer.register_forward_hook(post)]


def _as_vector(direction, model, dtype=None) -> torch.Tensor:
    v = torch.as_tensor(direction).detach().flatten()
    width = hidden_size(model)
    if v.numel() != width:
        raise ValueError(f"the direction has width {v.numel()}; the model's hidden size is {width}")
    return v.to(dtype or torch.float32)


def _layer_list(model, layers: int | Sequence[int] | None) -> list[int]:
    n = len(decoder_layers(model))
    if layers is None:
        return list(range(n))
    out = [layers] if isinstance(layers, int) else list(layers)
    for i in out:
        if not 0 <= i < n:
            raise ValueError(f"layer {i} is out of range: the model has layers 0..{n - 1}")
    return out


@contextmanager
def _installed(handles) -> Iterator[None]:
    """Hooks in place for the with-block; removed when it ends, also on an exception."""
    try:
        yield
    finally:
        for hd in handles:
            hd.remove()


@contextmanager
def steer(model, direction, layer: int, scale: float, positions: Positions = "all") -> Iterator[None]:
    """Add ``scale * direction`` to the output of decoder layer ``layer`` at ``positions``.

    The direction is used as given (not normalised): save a unit direction and pass the size as
    ``scale``, or pass a raw difference of means with ``scale=1``.
    """
    _check_positions(positions)
    (i,) = _layer_list(model, layer)
    v = _as_vector(direction, model) * float(scale)

    def edit(h):
        return h + v.to(h.device, h.dtype)

    with _installed(_layer_hook(model, i, edit, positions)):
        yield


@contextmanager
def ablate(model, direction, layers: int | Sequence[int] | None = None,
           positions: Positions = "all") -> Iterator[None]:
    """Project ``direction`` out of the output of ``layers`` (default: every layer):
    ``h - (h . v) v`` with ``v`` the unit direction, so ``h . v == 0`` afterwards."""
    _check_positions(positions)
    v = _as_vector(direction, model)
    norm = v.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError("cannot ablate a zero (or non-finite) direction")
    unit = v / norm

    def edit(h):
        u = unit.to(h.device, torch.float32)
        hf = h.float()
        return (hf - (hf @ u).unsqueeze(-1) * u).to(h.dtype)

    with _installed([hd for i in _layer_list(model, layers)
                     for hd in _layer_hook(model, i, edit, positions)]):
        yield


@contextmanager
def record(model, layers: int | Sequence[int] | None = None) -> Iterator[dict[int, torch.Tensor]]:
    """Capture the output of ``layers`` (default: all) of the next forward call(s): a dict
    layer -> tensor ``[batch, seq, hidden]`` (the last call's, detached)."""
    captured: dict[int, torch.Tensor] = {}
    layer_mods = decoder_layers(model)
    handles = []
    for i in _layer_list(model, layers):
        def hook(_m, _a, output, i=i):
            captured[i] = _split(output)[0].detach()
        handles.append(layer_mods[i].register_forward_hook(hook))
    with _installed(handles):
        yield captured


@contextmanager
def apply_intervention(model, intervention: dict | None) -> Iterator[None]:
    """The intervention of an eval model spec around a block; None does nothing:
    ``{"steer": {vector, layer, scale, positions}}`` or ``{"ablate": {"vectors": {layer:
    vector}}}`` (see emlab.mechanism.directions.intervention_from_spec)."""
    if not intervention:
        yield
        return
    if "steer" in intervention:
        s = intervention["steer"]
        with steer(model, s["vector"], s["layer"], s["scale"], s.get("positions", "all")):
            yield
    else:
        from contextlib import ExitStack
        with ExitStack() as stack:   # each layer its own vector
            for layer, vec in intervention["ablate"]["vectors"].items():
                stack.enter_context(ablate(model, vec, layer))
            yield
