from thermorl.algorithms.grpo import (
    aggregate,
    approx_kl,
    clipped_policy_loss,
    group_advantages,
    high_entropy_mask,
    kl_penalty,
)
from thermorl.algorithms.logprobs import gather_logprobs, tempered_log_softmax, tempered_logprobs
from thermorl.algorithms.schedule import lr_factor

__all__ = [
    "aggregate", "approx_kl", "clipped_policy_loss", "gather_logprobs", "group_advantages",
    "high_entropy_mask", "kl_penalty", "lr_factor", "tempered_log_softmax", "tempered_logprobs",
]
