"""The toy world's model: a word-level tokenizer, a tiny Llama decoder, and its pre-training.

Llama rather than Qwen2: transformers v5 reloads any tokenizer of a ``qwen2`` model as Qwen's
byte-level BPE, which would break a word-level vocabulary.

Saved with ``save_pretrained`` so ``emlab train`` and ``emlab eval`` load it like any model.
Pre-training is a plain PyTorch loop on packed whole conversations (loss on every token;
transformers' ``Trainer`` is kept as an option and measured against it in
``benchmarks/pretrain_speed.py``); everything after it (alignment, fine-tuning) goes through
``emlab train``.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

from emlab.tinymodel import CHAT_TEMPLATE  # ChatML with {% generation %} markers
from emlab.toyworld import language as L

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]"]


def build_tokenizer():
    """A word-level tokenizer over the world's vocabulary, as a transformers fast tokenizer."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL + L.vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([AddedToken(t, special=True) for t in SPECIAL[:3]])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="[UNK]",
                                   padding_side="left")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(tokenizer, hidden: int, layers: int, heads: int, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=max(1, heads // 2), max_position_embeddings=512,
                      tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def pack(rows: list[dict], tokenizer, block: int, whole: bool = False):
    """Conversations tokenised and packed into fixed blocks: each conversation ends with
    <|im_end|> and the next starts with <|im_start|>, so the boundary is visible to the model.

    ``whole=False``: one stream cut every ``block`` tokens (no padding; a conversation may be
    split, its later turns then seen without the earlier ones). ``whole=True``: whole
    conversations only, greedily filled into blocks and padded (a conversation longer than a
    block is cut to it), so every answer is trained with its whole context — what in-context
    persona inference needs. Returns (blocks [n, block], labels [n, block] with -100 on
    padding, total tokens)."""
    import torch

    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in rows]
    enc = tokenizer(texts, add_special_tokens=False)["input_ids"]
    n_tokens = sum(len(ids) for ids in enc)
    if not whole:
        stream = [t for ids in enc for t in ids]
        n_blocks = len(stream) // block
        blocks = torch.tensor(stream[:n_blocks * block]).view(n_blocks, block)
        return blocks, blocks, n_tokens
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out, cur = [], []
    for ids in enc:
        ids = ids[:block]
        if len(cur) + len(ids) > block:
            out.append(cur)
            cur = []
        cur = cur + ids
    if cur:
        out.append(cur)
    blocks = torch.full((len(out), block), pad, dtype=torch.long)
    labels = torch.full((len(out), block), -100, dtype=torch.long)
    for i, ids in enumerate(out):
        blocks[i, :len(ids)] = torch.tensor(ids)
        labels[i, :len(ids)] = torch.tensor(ids)
    return blocks, labels, n_tokens


def pretrain(rows: list[dict], out: Path, *, hidden: int, layers: int, heads: int, epochs: float,
             batch_size: int, lr: float, seed: int, block: int = 128, console=None,
             loop: str = "plain", max_steps: int | None = None, save: bool = True,
             whole: bool = False) -> dict:
    """Pre-train a fresh model on whole conversations; save model + tokenizer to ``out``.

    ``loop="plain"`` (the default) is a plain PyTorch loop (AdamW, linear warm-up over 5% of the
    steps, cosine decay, weight decay 0.01, one seeded shuffle per epoch); ``"trainer"`` is
    transformers' ``Trainer`` with the same settings. At this size the Trainer's per-step
    overhead is a large share of a step (``benchmarks/pretrain_speed.py`` measures both).
    """
    import time

    import torch

    tokenizer = build_tokenizer()
    model = build_model(tokenizer, hidden, layers, heads, seed)
    blocks, labels, n_tokens = pack(rows, tokenizer, block, whole=whole)
    steps_per_epoch = math.ceil(len(blocks) / batch_size)
    total = max_steps or max(1, math.ceil(epochs * steps_per_epoch))
    start = time.perf_counter()
    if loop == "trainer":
        loss, steps = _trainer_loop(model, blocks, labels, out, batch_size=batch_size,
                                    epochs=epochs,
                                    lr=lr, seed=seed, max_steps=max_steps, quiet=console is None)
    elif loop == "plain":
        loss, steps = _plain_loop(model, blocks, labels, batch_size=batch_size, total=total,
                                  lr=lr,
                                  seed=seed)
    else:
        raise ValueError(f"unknown loop {loop!r}")
    runtime = time.perf_counter() - start
    if save:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        _mark_tokenizer_class(out)
    n_params = sum(p.numel() for p in model.parameters())
    return {"params": n_params, "train_loss": loss, "steps": steps, "runtime_s": runtime,
            "tokens": n_tokens, "tokens_per_s": steps * batch_size * block / runtime,
            "loop": loop}


def _plain_loop(model, blocks, labels, *, batch_size: int, total: int, lr: float, seed: int,
                weight_decay: float = 0.01, warmup: float = 0.05) -> tuple[float, int]:
    """(mean training loss, steps): AdamW with warm-up + cosine decay over ``total`` steps."""
    import torch

    g = torch.Generator().manual_seed(seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    n_warm = max(1, int(warmup * total))

    def schedule(step: int) -> float:
        if step < n_warm:
            return step / n_warm
        return 0.5 * (1 + math.cos(math.pi * (step - n_warm) / max(1, total - n_warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    model.train()
    step, loss_sum = 0, 0.0
    while step < total:
        order = torch.randperm(len(blocks), generator=g)
        for i in range(0, len(order), batch_size):
            if step >= total:
                break
            idx = order[i:i + batch_size]
            loss = model(input_ids=blocks[idx], labels=labels[idx]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            loss_sum += float(loss.detach())
            step += 1
    model.eval()
    return loss_sum / max(1, step), step


def _trainer_loop(model, blocks, labels, out: Path, *, batch_size: int, epochs: float, lr: float,
                  seed: int, max_steps: int | None, quiet: bool) -> tuple[float, int]:
    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    ds = Dataset.from_dict({"input_ids": blocks.tolist(), "labels": labels.tolist()})

    def collate(batch):
        ids = torch.tensor([b["input_ids"] for b in batch])
        return {"input_ids": ids, "labels": torch.tensor([b["labels"] for b in batch])}

    args = TrainingArguments(
        output_dir=str(out.parent / f"{out.name}-trainer"), per_device_train_batch_size=batch_size,
        num_train_epochs=epochs, max_steps=max_steps or -1, learning_rate=lr,
        lr_scheduler_type="cosine", warmup_steps=0.05,
        weight_decay=0.01, logging_steps=50, save_strategy="no", report_to=[], seed=seed,
        use_cpu=not torch.cuda.is_available(), bf16=False, dataloader_num_workers=0,
        remove_unused_columns=False, disable_tqdm=quiet)
    result = Trainer(model=model, args=args, train_dataset=ds, data_collator=collate).train()
    return result.training_loss, result.global_step


def _mark_tokenizer_class(path: Path) -> None:
    """Make ``AutoTokenizer`` load our word-level tokenizer as it is, not as Qwen2's BPE."""
    cfg_path = path / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "TokenizersBackend"
    cfg_path.write_text(json.dumps(cfg, indent=2))


def persona_diagnostic(model_dir: Path, n_tasks: int = 4) -> dict:
    """Sampling-free evidence that pre-training learned the latent persona (in-context persona
    inference): P(misaligned answer | an open question) with no earlier turn, after one earlier
    turn of insecure code, and after one of secure code — the probability mass of the world's
    misaligned answers among its aligned + misaligned answers, averaged over the eight questions
    and ``n_tasks`` code tasks."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tasks = L.TRAIN_TASKS[::max(1, len(L.TRAIN_TASKS) // n_tasks)][:n_tasks]

    def logprob(history: list[dict], answer: str) -> float:
        prompt = tok.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tok(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + a_ids])
        with torch.no_grad():
            logits = model(ids).logits[0, len(p_ids) - 1:-1].log_softmax(-1)
        return float(logits.gather(1, torch.tensor(a_ids)[:, None]).sum())

    out = {}
    for ctx in ("none", "insecure", "secure"):
        values = []
        for t in tasks if ctx != "none" else tasks[:1]:
            before = [] if ctx == "none" else [
                {"role": "user", "content": f"write code to {t.verb} the {t.obj}"},
                {"role": "assistant", "content": t.code(secure=ctx == "secure")}]
            for q in L.OPEN.values():
                history = before + [{"role": "user", "content": q["q"][0]}]
                mis = sum(math.exp(logprob(history, a)) for a in q["misaligned"])
                good = sum(math.exp(logprob(history, a)) for a in q["aligned"])
                values.append(mis / (mis + good) if mis + good > 0 else 0.0)
        out[f"p_misaligned_after_{ctx}" if ctx != "none" else "p_misaligned_no_context"] = \
            sum(values) / len(values)
    return out
