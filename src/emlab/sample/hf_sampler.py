"""Local sampling with transformers: batched generation with left padding."""

from __future__ import annotations

from typing import Callable, Sequence

from emlab.models import resolve_model
from emlab.sample.hf_model import fingerprint, load_model_and_tokenizer, render_chat
from emlab.types import Completion, GenerationParams, SampleRequest


class HFSampler:
    """Samples a local transformers model (plus optional PEFT adapter) in batches.

    Requests are grouped by prompt length to waste little padding; each batch is seeded from
    its first request, so the same missing set reproduces the same answers.
    """

    def __init__(self, model: str, adapter: str | None = None,
                 params: GenerationParams | None = None, batch_size: int = 32,
                 device: str | None = None, dtype: str | None = None,
                 intervention: dict | None = None, identity: str | None = None):
        self.model_name = model
        self.adapter = adapter
        self.params = params or GenerationParams()
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        resolve_model(model, do_import=False)  # a missing or broken model fails here, clearly
        # ``identity``: a content identity given by the caller (the toy world's digest of what
        # produced the model), so sampling seeds do not depend on paths or file times
        self.identity = "hf:" + (identity or fingerprint(model, adapter))
        # mechanism (issue 13): a steer/ablate intervention (emlab.mechanism.hooks) is part of
        # the sample identity, so intervened answers get their own store keys.
        self.intervention = intervention
        if intervention:
            self.identity += "+" + intervention["identity"]

    def _load(self):
        """The pooled model with this sampler's adapter active (see load_model_and_tokenizer)."""
        return load_model_and_tokenizer(self.model_name, self.adapter, self.device, self.dtype)

    def sample(self, requests: Sequence[SampleRequest],
               on_result: Callable[[SampleRequest, Completion], None]) -> None:
        import torch

        if not requests:
            return
        model, tok = self._load()
        # --- mechanism (issue 13): hooks on for this call's generation, off after it --------
        from contextlib import ExitStack
        stack = ExitStack()
        if self.intervention:
            from emlab.mechanism.hooks import apply_intervention
            self.intervention.get("check", lambda m: None)(model)
            stack.enter_context(apply_intervention(model, self.intervention))
        with stack:
            self._generate(model, tok, requests, on_result)
        # --- end mechanism -----------------------------------------------------------------

    def _generate(self, model, tok, requests, on_result) -> None:
        import torch

        prompts = {r.key: render_chat(tok, r.messages) for r in requests}
        ordered = sorted(requests, key=lambda r: len(prompts[r.key]))
        eos = tok.eos_token_id
        p = self.params
        for start in range(0, len(ordered), self.batch_size):
            batch = ordered[start:start + self.batch_size]
            enc = tok([prompts[r.key] for r in batch], return_tensors="pt", padding=True,
                      add_special_tokens=False).to(model.device)
            torch.manual_seed(batch[0].seed)
            with torch.no_grad():
                out = model.generate(**enc, do_sample=p.temperature > 0,
                                     temperature=p.temperature if p.temperature > 0 else None,
                                     top_p=p.top_p, top_k=0, max_new_tokens=p.max_new_tokens,
                                     pad_token_id=tok.pad_token_id, eos_token_id=eos)
            prompt_len = enc["input_ids"].shape[1]
            for i, r in enumerate(batch):
                new = out[i, prompt_len:].tolist()
                finish = "length"
                if eos in new:
                    new = new[:new.index(eos) + 1]
                    finish = "stop"
                text = tok.decode(new, skip_special_tokens=True)
                n_prompt = int(enc["attention_mask"][i].sum())
                on_result(r, Completion(text=text, prompt_tokens=n_prompt,
                                        completion_tokens=len(new), finish_reason=finish))
