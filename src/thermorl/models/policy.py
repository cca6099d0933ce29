"""The policy: a Hugging Face causal LM seen as (last hidden state, logits).

Temperature controllers read the last-layer hidden state and the trainer needs tempered
log-probs, so the policy exposes the two halves of a causal LM separately: ``hidden`` runs
the decoder stack (with an optional KV cache), ``logits`` applies the output head. This
avoids ``output_hidden_states=True`` (which keeps every layer) and lets large-vocabulary
models compute logits in chunks.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import Cache

from thermorl.config import ModelConfig
from thermorl.errors import ModelLoadError
from thermorl.models.tiny import build_char_tokenizer, build_tiny_model

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny"


@dataclass
class Policy:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def hidden(
        self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache: Cache | None = None
    ) -> tuple[Tensor, Cache | None]:
        """Last-layer hidden states (B, L, d) and the updated cache."""
        decoder = self.model.get_decoder()
        # transformers >= 5.2x names the KV cache `cache`; earlier releases `past_key_values`.
        cache_kwarg = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
        out = decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=cache is not None,
            **{cache_kwarg: cache},
        )
        return out.last_hidden_state, getattr(out, cache_kwarg, None)

    def logits(self, hidden: Tensor) -> Tensor:
        """Float32 logits from hidden states of any leading shape."""
        return self.model.get_output_embeddings()(hidden).float()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ModelLoadError(f"model.device {name!r} is not a torch device") from None


def load_policy(config: ModelConfig, seed: int = 0) -> Policy:
    """Load the policy named by ``config.path`` onto ``config.device``; never downloads."""
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[config.dtype]
    if config.path == "builtin:random":
        tokenizer = build_char_tokenizer()
        model = build_tiny_model(len(tokenizer), config.hidden_size, config.num_layers, config.num_heads, seed)
    else:
        directory = BUILTIN_DIR if config.path == "builtin" else Path(config.path).expanduser()
        model, tokenizer = _load_pretrained(directory, config.gguf_file, dtype)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.to(device=resolve_device(config.device), dtype=dtype)
    return Policy(model=model, tokenizer=tokenizer)


def _load_pretrained(
    directory: Path, gguf_file: str | None, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if not directory.is_dir():
        hint = " (run `thermorl pretrain` to create the built-in warm start)" if directory == BUILTIN_DIR else ""
        raise ModelLoadError(f"model.path {directory} is not a directory{hint}")
    if gguf_file is not None and not (directory / gguf_file).is_file():
        raise ModelLoadError(f"model.gguf_file {gguf_file} not found in {directory}")
    kwargs = {"local_files_only": True}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"cannot load a causal LM from {directory}: {first_line}") from None
    if model.get_output_embeddings() is None:
        raise ModelLoadError(f"{directory} holds no language-model head")
    if len(tokenizer) > model.get_output_embeddings().weight.shape[0]:
        raise ModelLoadError(
            f"tokenizer in {directory} has {len(tokenizer)} tokens but the model's vocabulary is "
            f"{model.get_output_embeddings().weight.shape[0]}"
        )
    return model, tokenizer
