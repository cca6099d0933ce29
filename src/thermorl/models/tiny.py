"""The built-in tiny model: a real transformers Llama and a character-level fast tokenizer.

Both are built offline from code, so the CPU demo needs no download. The tokenizer maps
every printable ASCII character to one token, which keeps arithmetic legible to a small
model and makes per-token temperature traces readable character by character.
"""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]
CHARACTERS = list(string.printable[:95]) + ["\n"]


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """A ``PreTrainedTokenizerFast`` with one token per printable character (vocab 100)."""
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
    )


def build_tiny_model(
    vocab_size: int, hidden_size: int = 128, num_layers: int = 4, num_heads: int = 4, seed: int = 0
) -> LlamaForCausalLM:
    """A randomly initialised Llama of about 0.8M parameters at the defaults."""
    import torch

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=3 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)
