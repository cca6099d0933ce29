"""The policy: a Hugging Face causal LM seen as (last hidden state, logits).

Temperature controllers read the last-layer hidden state and the trainer needs tempered
log-probs, so the policy exposes the two halves of a causal LM separately: ``hidden`` runs
the decoder stack (with an optional KV cache), ``logits`` applies the output head. This
avoids ``output_hidden_states=True`` (which keeps every layer) and lets large-vocabulary
models compute logits in chunks.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    sharded: Any = None  # FSDP root (runtime.fsdp.ShardedForward) once the model is sharded over processes
    system_prompt: str | None = None  # model.system_prompt: how engines format prompts for this model
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)  # model.chat_template_kwargs

    def __post_init__(self) -> None:
        # transformers >= 5.2x names the KV-cache argument `cache`; earlier releases `past_key_values`.
        parameters = inspect.signature(self.model.get_decoder().forward).parameters
        self._cache_kwarg = "cache" if "cache" in parameters else "past_key_values"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def activation_checkpointing(self) -> bool:
        """Whether the model recomputes activations in backward (it then runs without a KV cache)."""
        model = self.model  # transformers >= 5.2x renamed is_gradient_checkpointing
        if hasattr(model, "is_activation_checkpointing"):
            return bool(model.is_activation_checkpointing)
        return bool(model.is_gradient_checkpointing)

    def hidden(
        self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache: Cache | None = None
    ) -> tuple[Tensor, Cache | None]:
        """Last-layer hidden states (B, L, d) and the updated cache."""
        cache_kwarg = self._cache_kwarg
        decoder = self.sharded.hidden if self.sharded is not None else self.model.get_decoder()
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
        head = self.sharded.logits if self.sharded is not None else self.model.get_output_embeddings()
        return head(hidden).float()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ModelLoadError(f"model.device {name!r} is not a torch device") from None


def load_policy(config: ModelConfig, seed: int = 0) -> Policy:
    """Load the policy named by ``config.path`` onto ``config.device``; downloads only a hub id with
    ``config.allow_download``. Adds LoRA adapters (``config.lora_r > 0``) and gradient checkpointing."""
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[config.dtype]
    if config.path == "builtin:random":
        if config.lora_r:
            raise ModelLoadError("model.lora_r > 0 needs a pretrained base; builtin:random has no saved weights")
        tokenizer = build_char_tokenizer()
        model = build_tiny_model(len(tokenizer), config.hidden_size, config.num_layers, config.num_heads, seed)
    else:
        model, tokenizer = _load_any(config, dtype)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.to(device=resolve_device(config.device), dtype=dtype)
    if config.attn_implementation:
        set_attention(model, config.attn_implementation)
    if config.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.lora_r and not hasattr(model, "peft_config"):
        model = add_lora(model, config)
    return Policy(
        model, tokenizer, system_prompt=config.system_prompt, chat_template_kwargs=dict(config.chat_template_kwargs)
    )


def set_attention(model: PreTrainedModel, name: str) -> None:
    """Switch ``model``'s attention kernels (``model.attn_implementation``) through transformers, which checks
    that the kernels exist here (flash-attn installed, a GPU); a refusal becomes one line."""
    try:
        model.set_attn_implementation(name)
    except (ValueError, ImportError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"model.attn_implementation={name!r}: {first_line}") from None


def add_lora(model: PreTrainedModel, config: ModelConfig) -> PreTrainedModel:
    """Wrap ``model`` with trainable LoRA adapters (peft); every base weight is frozen.

    The adapter records where its base lives (a directory or a .gguf file), so a saved
    adapter directory loads on its own as ``model.path``.
    """
    from peft import LoraConfig, get_peft_model

    targets = config.lora_target_modules
    lora = LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets, task_type="CAUSAL_LM",
    )
    try:
        wrapped = get_peft_model(model, lora)
    except ValueError as err:
        raise ModelLoadError(f"cannot add LoRA adapters: {str(err).strip().splitlines()[0]}") from None
    wrapped.peft_config["default"].base_model_name_or_path = _base_reference(config)
    return wrapped


def _base_reference(config: ModelConfig) -> str:
    """The most direct address of the base model: an absolute directory, .gguf file or hub id."""
    if config.path == "builtin":
        return str(BUILTIN_DIR)
    path = Path(config.path).expanduser()
    if not path.exists():
        return config.path  # a hub id
    path = path.resolve()
    return str(path / config.gguf_file) if config.gguf_file else str(path)


def _load_any(config: ModelConfig, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A model directory, a .gguf file, a thermorl LoRA adapter directory, or (if allowed) a hub id."""
    directory = BUILTIN_DIR if config.path == "builtin" else Path(config.path).expanduser()
    gguf_file = config.gguf_file
    if directory.is_file() and directory.suffix == ".gguf" and gguf_file is None:
        directory, gguf_file = directory.parent, directory.name
    if (directory / "adapter_config.json").is_file():
        return _load_adapter(directory, config, dtype)
    if not directory.exists() and config.allow_download:
        return _load_pretrained(config.path, gguf_file, dtype, local_only=False)
    return _load_pretrained(directory, gguf_file, dtype)


def _load_adapter(
    directory: Path, config: ModelConfig, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Base model + the LoRA adapter saved in ``directory`` (trainable, so training can continue)."""
    from peft import PeftModel

    try:
        base_reference = json.loads((directory / "adapter_config.json").read_text())["base_model_name_or_path"]
    except (OSError, ValueError, KeyError):
        raise ModelLoadError(f"{directory / 'adapter_config.json'} names no base model") from None
    if not base_reference:
        raise ModelLoadError(f"{directory / 'adapter_config.json'} names no base model")
    base_config = dataclasses.replace(config, path=base_reference, gguf_file=None, lora_r=0)
    model, tokenizer = _load_any(base_config, dtype)
    if (directory / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    try:
        model = PeftModel.from_pretrained(model, directory, is_trainable=True)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"cannot load the LoRA adapter in {directory}: {detail}") from None
    return model, tokenizer


def _load_pretrained(
    directory: Path | str, gguf_file: str | None, dtype: torch.dtype, local_only: bool = True
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if local_only and not Path(directory).is_dir():
        hint = " (run `thermorl pretrain` to create the built-in warm start)" if directory == BUILTIN_DIR else ""
        if not hint and _looks_like_hub_id(str(directory)):
            hint = " (to download the hub model of that name, set model.allow_download=true)"
        raise ModelLoadError(f"model.path {directory} is not a directory{hint}")
    if local_only and gguf_file is not None and not (Path(directory) / gguf_file).is_file():
        raise ModelLoadError(f"model.gguf_file {gguf_file} not found in {directory}")
    kwargs: dict[str, Any] = {"local_files_only": local_only}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, **kwargs, **_dense_gguf(gguf_file))
    except (OSError, ValueError, KeyError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"cannot load a causal LM from {directory}: {first_line}") from None
    if gguf_file is not None:
        _forget_gguf_quantizer(model, gguf_file)
    if model.get_output_embeddings() is None:
        raise ModelLoadError(f"{directory} holds no language-model head")
    if len(tokenizer) > model.get_output_embeddings().weight.shape[0]:
        raise ModelLoadError(
            f"tokenizer in {directory} has {len(tokenizer)} tokens but the model's vocabulary is "
            f"{model.get_output_embeddings().weight.shape[0]}"
        )
    return model, tokenizer


def _dense_gguf(gguf_file: str | None) -> dict[str, Any]:
    """Ask transformers to unpack GGUF blocks into plain float weights (the ones RL trains)."""
    if gguf_file is None:
        return {}
    try:
        from transformers.utils.quantization_config import GgufConfig
    except ImportError:  # transformers < 5 always dequantizes GGUF files
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _forget_gguf_quantizer(model: PreTrainedModel, gguf_file: str) -> None:
    """A dequantized GGUF model is an ordinary dense model; drop the quantizer that transformers
    attaches so it trains, casts and saves (as safetensors) like one."""
    if any(not p.is_floating_point() for p in model.parameters()):
        raise ModelLoadError(f"{gguf_file}: weights stayed in packed GGUF blocks, which cannot be trained")
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _looks_like_hub_id(name: str) -> bool:
    """'owner/name' with no path-like parts (e.g. 'Qwen/Qwen2.5-Math-1.5B')."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~")) and "\\" not in name
