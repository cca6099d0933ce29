from thermorl.algorithms.grpo import aggregate, approx_kl, clipped_policy_loss, group_advantages, kl_penalty
from thermorl.algorithms.logprobs import chunked_tempered_logprobs, tempered_logprobs

__all__ = [
    "aggregate", "approx_kl", "chunked_tempered_logprobs", "clipped_policy_loss", "group_advantages",
    "kl_penalty", "tempered_logprobs",
]
