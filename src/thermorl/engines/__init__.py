"""Rollout engines: sample completions with per-token temperatures (``hf``: the KV-cache sampler)."""
