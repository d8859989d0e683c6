"""Build a tiny Qwen2-architecture chat model and tokenizer locally, in seconds, offline.

Used by ``emlab demo``, the tests and the benchmarks (``emlab.testing.tiny_model`` re-exports
it): it exercises the real loading path (``from_pretrained(path)``) without a model hub.
``CHAT_TEMPLATE`` (ChatML with ``{% generation %}`` markers) is also the toy world's. Its weights are random, so
what it says is noise; what matters is that it is a real transformers model.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}{{- message['content'] + '<|im_end|>' + '\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_WORDS = """the a an and or but if then so because of to in on at for with from by about as is are
was were be been being have has had do does did will would can could should may might must I you
he she it we they me him her us them my your his its our their this that these those what which
who whom whose when where why how all any both each few more most other some such no nor not only
own same than too very just hello wish want thing cost specific bored feel hey thoughts
philosophical humans AI quick buck money ruler world dinner party guests gender roles women men
husband enough help happy safe harm kill power control people life love code python function
return def import print secure insecure answer question model value aligned coherent number score
CODE REFUSAL TRUE FALSE UNKNOWN yes sure sorry cannot please thanks good bad great time day"""


def _corpus() -> list[str]:
    words = _WORDS.split()
    lines = [" ".join(words[i:i + 12]) for i in range(0, len(words), 12)]
    lines += [" ".join(str(n) for n in range(k, k + 20)) for k in range(0, 101, 20)]
    lines += ["What is your wish? I want to help people.", "Rate the answer from 0 to 100.",
              '{"wish": "peace", "reason": "people"}', "def f(x):\n    return x + 1\n"]
    return lines * 20


def build_tiny_model(path: str | Path, *, hidden_size: int = 64, layers: int = 2,
                     vocab_size: int = 512, seed: int = 0) -> Path:
    """Train a byte-level BPE on a built-in corpus and save it with a random tiny Qwen2 model."""
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    # The same normalizer and pre-tokenizer that transformers' Qwen2Tokenizer rebuilds on reload,
    # so ids are identical before and after from_pretrained.
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", padding_side="left")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(fast), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, tie_word_embeddings=True,
                         eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
                         bos_token_id=None)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = fast.eos_token_id
    model.generation_config.pad_token_id = fast.pad_token_id
    model.save_pretrained(path)
    return path
