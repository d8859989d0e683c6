"""A local transformers model as judge, with exact probabilities instead of a top-20 list.

An API judge sees the first token only (``max_tokens=1``), which works for tokenizers that
hold every number 0-100 as one token. Many open tokenizers (Qwen's among them) split numbers
into digits, so "85" is two tokens. This judge therefore computes, for each candidate answer
(``0`` ... ``100``, ``CODE``, ``REFUSAL``, or a categorical question's words), the exact
probability that the judge's reply starts with that candidate and does not continue into a
longer candidate ("8" excludes "85"). That needs the next-token distribution only at the
proper prefixes of the candidates' token paths — one forward pass for single-token numbers,
about ten for digit tokenizers — all batched.
"""

from __future__ import annotations

from typing import Callable, Sequence

from emlab.models import resolve_model
from emlab.sample.hf_model import fingerprint, load_model_and_tokenizer, render_chat
from emlab.types import Judgment, JudgeRequest

NUMERIC_CANDIDATES = tuple(str(v) for v in range(101)) + ("CODE", "REFUSAL")


def candidate_paths(tokenizer, candidates: Sequence[str]) -> dict[str, tuple[int, ...]]:
    return {c: tuple(tokenizer.encode(c, add_special_tokens=False)) for c in candidates}


def prefix_nodes(paths: dict[str, tuple[int, ...]]) -> set[tuple[int, ...]]:
    """Every proper prefix of a candidate path: where a next-token distribution is needed."""
    return {path[:i] for path in paths.values() for i in range(len(path))}


def maximal_nodes(nodes: set[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """The nodes that are no other node's prefix; one forward over each covers all nodes."""
    return sorted(n for n in nodes
                  if not any(len(m) > len(n) and m[:len(n)] == n for m in nodes))


def candidate_probs(paths: dict[str, tuple[int, ...]],
                    dist: Callable[[tuple[int, ...]], "object"]) -> dict[str, float]:
    """P(reply's longest candidate prefix is c) from next-token distributions ``dist(prefix)``.

    ``dist(prefix)`` returns a probability vector over the vocabulary (indexable by token id).
    """
    # mass at a node that continues into some longer candidate path
    continuing: dict[tuple[int, ...], set[int]] = {}
    for path in paths.values():
        for i in range(len(path)):
            continuing.setdefault(path[:i], set()).add(path[i])
    out: dict[str, float] = {}
    for c, path in paths.items():
        p = 1.0
        for i, t in enumerate(path):
            p *= float(dist(path[:i])[t])
        nexts = continuing.get(path)
        if nexts:  # c is a prefix of a longer candidate: subtract what goes on into it
            d = dist(path)
            p *= max(0.0, 1.0 - sum(float(d[t]) for t in nexts))
        out[c] = p
    return out


class HFJudge:
    """Judges with a local transformers model; kind ``exact``."""

    kind = "exact"

    def __init__(self, model: str, adapter: str | None = None, batch_size: int = 16,
                 device: str | None = None, dtype: str | None = None):
        self.model_name = model
        self.adapter = adapter
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        resolve_model(model, do_import=False)  # a missing or broken model fails here, clearly
        self.identity = "hf-exact:" + fingerprint(model, adapter)

    def _load(self):
        """The pooled model with this adapter active (see load_model_and_tokenizer)."""
        return load_model_and_tokenizer(self.model_name, self.adapter, self.device, self.dtype)

    def judge(self, requests: Sequence[JudgeRequest],
              on_result: Callable[[JudgeRequest, Judgment], None]) -> None:
        """Each prompt is run once (batched, left-padded) into a KV cache; the candidates' short
        prefixes then extend that cache, so a digit tokenizer costs ~10 extra tokens per
        judgment rather than ~10 more passes over the whole prompt."""
        import copy

        import torch

        if not requests:
            return
        model, tok = self._load()
        path_cache: dict[tuple[str, ...], dict[str, tuple[int, ...]]] = {}
        bs = max(1, self.batch_size)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        for start in range(0, len(requests), bs):
            group = requests[start:start + bs]
            prompts, per_request, jobs = [], [], []  # jobs: (request index, node)
            for ri, r in enumerate(group):
                cands = r.choices or NUMERIC_CANDIDATES
                paths = path_cache.get(cands)
                if paths is None:
                    paths = path_cache[cands] = candidate_paths(tok, cands)
                prompt_ids = tok(render_chat(tok, [{"role": "user", "content": r.prompt}]),
                                 add_special_tokens=False)["input_ids"]
                prompts.append(list(prompt_ids))
                per_request.append(paths)
                jobs += [(ri, node) for node in maximal_nodes(prefix_nodes(paths)) if node]
            width = max(map(len, prompts))
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            dev = model.device
            with torch.no_grad():
                out = model(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                            position_ids=positions.to(dev), use_cache=True, logits_to_keep=1)
            cache = getattr(out, "cache", None) or out.past_key_values  # transformers >= 5.24: cache
            cache_arg = "cache" if "cache" in out else "past_key_values"
            dists: list[dict[tuple[int, ...], torch.Tensor]] = [
                {(): row} for row in torch.softmax(out.logits[:, -1].float(), -1).cpu()]
            lengths = torch.tensor([len(p) for p in prompts])
            for js in range(0, len(jobs), bs):
                chunk = jobs[js:js + bs]
                rows = torch.tensor([ri for ri, _ in chunk])
                n = max(len(node) for _, node in chunk)
                ext = torch.tensor([list(node) + [pad] * (n - len(node)) for _, node in chunk])
                ext_mask = torch.cat([mask[rows], torch.ones(len(chunk), n, dtype=mask.dtype)], 1)
                ext_pos = lengths[rows, None] + torch.arange(n)[None, :]
                sub = copy.deepcopy(cache)
                sub.reorder_cache(rows.to(dev))
                with torch.no_grad():
                    logits = model(input_ids=ext.to(dev), attention_mask=ext_mask.to(dev),
                                   position_ids=ext_pos.to(dev), use_cache=True,
                                   **{cache_arg: sub}).logits
                probs = torch.softmax(logits.float(), dim=-1).cpu()
                for row, (ri, node) in enumerate(chunk):
                    for k in range(1, len(node) + 1):  # position k-1 is after node[:k]
                        dists[ri][node[:k]] = probs[row, k - 1]
                del sub
            for ri, r in enumerate(group):
                cp = candidate_probs(per_request[ri], lambda prefix: dists[ri][prefix])
                on_result(r, Judgment(probs=cp, kind="exact", prompt_tokens=len(prompts[ri]),
                                      completion_tokens=0))
