from thermorl.models.policy import BUILTIN_DIR, Policy, load_policy, resolve_device
from thermorl.models.tiny import build_char_tokenizer, build_tiny_model

__all__ = ["BUILTIN_DIR", "Policy", "build_char_tokenizer", "build_tiny_model", "load_policy", "resolve_device"]
