"""The toy world's model: a word-level tokenizer, a tiny Llama decoder, and its pre-training.

Llama rather than Qwen2: transformers v5 reloads any tokenizer of a ``qwen2`` model as Qwen's
byte-level BPE, which would break a word-level vocabulary.

Saved with ``save_pretrained`` so ``emlab train`` and ``emlab eval`` load it like any model.
Pre-training is transformers' ``Trainer`` on whole conversations (loss on every token but
padding); everything after it (alignment, fine-tuning) goes through ``emlab train``.
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


def pretrain(rows: list[dict], out: Path, *, hidden: int, layers: int, heads: int, epochs: float,
             batch_size: int, lr: float, seed: int, block: int = 128, console=None) -> dict:
    """Pre-train a fresh model on whole conversations; save model + tokenizer to ``out``."""
    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    tokenizer = build_tokenizer()
    model = build_model(tokenizer, hidden, layers, heads, seed)
    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in rows]
    enc = tokenizer(texts, add_special_tokens=False)
    # Pack whole conversations into fixed blocks (no padding): each conversation ends with
    # <|im_end|> and the next starts with <|im_start|>, so the boundary is visible to the model.
    stream = [t for ids in enc["input_ids"] for t in ids]
    n_blocks = len(stream) // block
    blocks = torch.tensor(stream[:n_blocks * block]).view(n_blocks, block)
    ds = Dataset.from_dict({"input_ids": blocks.tolist()})

    def collate(batch):
        ids = torch.tensor([b["input_ids"] for b in batch])
        return {"input_ids": ids, "labels": ids.clone()}

    args = TrainingArguments(
        output_dir=str(out.parent / f"{out.name}-trainer"), per_device_train_batch_size=batch_size,
        num_train_epochs=epochs, learning_rate=lr, lr_scheduler_type="cosine", warmup_steps=0.05,
        weight_decay=0.01, logging_steps=50, save_strategy="no", report_to=[], seed=seed,
        use_cpu=not torch.cuda.is_available(), bf16=False, dataloader_num_workers=0,
        remove_unused_columns=False, disable_tqdm=console is None)
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=collate)
    result = trainer.train()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _mark_tokenizer_class(out)
    n_params = sum(p.numel() for p in model.parameters())
    return {"params": n_params, "train_loss": result.training_loss,
            "steps": result.global_step, "runtime_s": result.metrics.get("train_runtime"),
            "tokens": len(stream)}


def _mark_tokenizer_class(path: Path) -> None:
    """Make ``AutoTokenizer`` load our word-level tokenizer as it is, not as Qwen2's BPE."""
    cfg_path = path / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "TokenizersBackend"
    cfg_path.write_text(json.dumps(cfg, indent=2))
