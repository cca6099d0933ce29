"""``rollout.engine: hf``: the batched KV-cache sampler, a per-token temperature chosen by a controller.

At every decoding step the controller returns one temperature per active row; the token is
drawn from softmax(logits / temperature) and the sampler records, per token: id, mask,
temperature, tempered log-prob, entropy, and the controller's own typed actions. With top-k / top-p
(``rollout.top_k`` / ``rollout.top_p``) the token is drawn from the truncated distribution and its
log-prob and entropy are that distribution's (``sampling_log_softmax``); the batch records top-k /
top-p so that training scores the same distribution. Rows that emit a stop token (every EOS id of
the tokenizer and of the model's generation config) are dropped from the batch (and from the KV
cache), so finished completions cost nothing.
Prompts are left-padded; position ids skip the padding so every row sees positions 0, 1, ...
Every temperature is clamped to a global range (``RolloutConfig.temperature_min/max``) whatever
the controller returns; NaN/inf logits or temperatures raise ``NonFiniteError``.
"""

from __future__ import annotations

from collections.abc import Sequence
import torch
from torch import Tensor
from transformers import DynamicCache

from thermorl.algorithms.logprobs import (
    gather_logprobs,
    gather_truncated_logprobs,
    sampling_log_softmax,
)
from thermorl.config import RolloutConfig
from thermorl.config.registry import ENGINES
from thermorl.engines.base import RolloutBatch, positions_from_mask
from thermorl.errors import NonFiniteError
from thermorl.models.policy import Policy
from thermorl.temperature.base import StepContext, TemperatureActions, TemperatureController


def uses_chat_template(tokenizer: object) -> bool:
    """Whether ``encode_prompts`` formats prompts with the tokenizer's chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def stop_token_ids(policy: Policy) -> list[int]:
    """Every id that ends a completion: the tokenizer's EOS and each EOS id of the model's generation config
    (Llama-3-style chat models end a turn with <|eot_id|>, which is not the tokenizer's eos_token_id)."""
    ids = [policy.tokenizer.eos_token_id]
    config_ids = getattr(getattr(policy.model, "generation_config", None), "eos_token_id", None)
    ids += config_ids if isinstance(config_ids, (list, tuple)) else [config_ids]
    return list(dict.fromkeys(i for i in ids if i is not None))


def encode_prompts(policy: Policy, prompts: list[str]) -> tuple[Tensor, Tensor]:
    """Left-padded prompt ids and mask. With a chat template, each prompt is a user message after the
    optional ``model.system_prompt``, rendered with ``model.chat_template_kwargs``; without one, the
    system prompt (if any) and a newline precede the prompt text."""
    tokenizer = policy.tokenizer
    if uses_chat_template(tokenizer):
        system = [{"role": "system", "content": policy.system_prompt}] if policy.system_prompt else []
        texts = [
            tokenizer.apply_chat_template(
                [*system, {"role": "user", "content": p}], tokenize=False, add_generation_prompt=True,
                **policy.chat_template_kwargs,
            )
            for p in prompts
        ]
        encoded = tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
    else:
        bos = (tokenizer.bos_token or "") + (f"{policy.system_prompt}\n" if policy.system_prompt else "")
        encoded = tokenizer([bos + p for p in prompts], padding=True, return_tensors="pt", add_special_tokens=False)
    return encoded["input_ids"].to(policy.device), encoded["attention_mask"].to(policy.device)


def distinct_prompts(prompt_ids: Tensor, prompt_mask: Tensor) -> tuple[Tensor, Tensor]:
    """The distinct rows of (ids | mask) side by side, and each row's index among them (a GRPO group's rows
    share one): what ``prompt_pass`` runs once each."""
    return torch.unique(torch.cat([prompt_ids, prompt_mask.to(prompt_ids.dtype)], dim=1), dim=0, return_inverse=True)


def prompt_pass(policy: Policy, prompt_ids: Tensor, prompt_mask: Tensor) -> tuple[Tensor, DynamicCache]:
    """Run each distinct prompt once; copy its KV cache to every row that repeats it (a GRPO group).

    Returns the last prompt position's hidden state per row (N, d) and the per-row cache. The copy
    is an index, so gradients flow back to the shared pass exactly as from N separate passes.
    """
    distinct, row_prompt = distinct_prompts(prompt_ids, prompt_mask)
    ids, mask = distinct.split(prompt_ids.shape[1], dim=1)
    mask = mask.to(prompt_mask.dtype)
    hidden, cache = policy.hidden(ids, mask, positions_from_mask(mask), DynamicCache())
    cache.batch_select_indices(row_prompt)  # also undoes unique's sorting
    return hidden[row_prompt, -1], cache


@torch.no_grad()
def sample(
    policy: Policy,
    controller: TemperatureController,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    max_new_tokens: int,
    generator: torch.Generator | None = None,
    greedy: bool = False,
    training_step: int = 0,
    temperature_range: tuple[float, float] = (RolloutConfig.temperature_min, RolloutConfig.temperature_max),
    group_ids: Tensor | None = None,
    top_k: int = 0,
    top_p: float = 1.0,
) -> RolloutBatch:
    """Generate one completion per prompt row; ``greedy`` takes the argmax (temperature ignored);
    ``top_k`` > 0 / ``top_p`` < 1 truncate the tempered distribution (``sampling_log_softmax``).

    ``temperature_range`` is the clamp of every temperature (callers pass their run's ``RolloutConfig``
    range: :class:`HFEngine` does); ``group_ids`` (N,) names each row's group (default: its own).

    Rows with the same prompt (a GRPO group) share one prompt pass (``prompt_pass``). The (N, T)
    fields end at the longest completion (T <= ``max_new_tokens``): no column is padding in every row.
    Raises ``NonFiniteError`` on NaN/inf logits or temperatures (the trainer skips such a step).
    """
    num_rows, device = prompt_ids.shape[0], prompt_ids.device
    stop_ids, pad_id = torch.tensor(stop_token_ids(policy), device=device), policy.tokenizer.pad_token_id
    truncates = top_k > 0 or top_p < 1.0
    tokens = torch.full((num_rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros(num_rows, max_new_tokens, device=device)
    temperatures = torch.ones(num_rows, max_new_tokens, device=device)
    logprobs = torch.zeros(num_rows, max_new_tokens, device=device)
    entropies = torch.zeros(num_rows, max_new_tokens, device=device)
    actions: dict[str, Tensor] = {}  # TemperatureActions fields, (N, max_new_tokens) each

    controller.start(num_rows, training_step)
    hidden, cache = prompt_pass(policy, prompt_ids, prompt_mask)
    attention = prompt_mask
    next_position = positions_from_mask(prompt_mask)[:, -1] + 1
    rows = torch.arange(num_rows, device=device)

    generated = 0  # the longest completion so far
    for t in range(max_new_tokens):
        generated = t + 1
        logits = policy.logits(hidden)
        tau, step_actions = controller.choose(StepContext(logits, hidden, t, rows, training_step, tokens[rows, :t]))
        if not torch.isfinite(logits).all():
            raise NonFiniteError(f"non-finite logits at completion token {t}")
        if not torch.isfinite(tau).all():
            raise NonFiniteError(f"non-finite temperature from the {controller.name} controller at token {t}")
        tau = tau.clamp(*temperature_range)
        logp = sampling_log_softmax(logits, tau, top_k, top_p)
        if greedy:
            token = logits.argmax(-1)
        else:
            token = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
        token_logp, entropy = (gather_truncated_logprobs if truncates else gather_logprobs)(logp, token)

        tokens[rows, t] = token
        mask[rows, t] = 1.0
        temperatures[rows, t] = tau
        logprobs[rows, t] = token_logp
        entropies[rows, t] = entropy
        for name, value in step_actions.present().items():
            if name not in actions:
                actions[name] = torch.zeros(num_rows, max_new_tokens, dtype=value.dtype, device=device)
            actions[name][rows, t] = value

        alive = ~torch.isin(token, stop_ids)
        if not alive.any() or t == max_new_tokens - 1:
            break
        if not alive.all():
            keep = alive.nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            rows, token, attention, next_position = rows[keep], token[keep], attention[keep], next_position[keep]
        attention = torch.cat([attention, attention.new_ones(len(rows), 1)], dim=1)
        hidden, cache = policy.hidden(token.unsqueeze(-1), attention, next_position.unsqueeze(-1), cache)
        hidden = hidden[:, -1]
        next_position = next_position + 1

    completion = slice(0, generated)
    if group_ids is None:
        group_ids = torch.arange(num_rows, device=device)
    return RolloutBatch(
        prompt_ids, prompt_mask, tokens[:, completion], mask[:, completion], temperatures[:, completion],
        logprobs[:, completion], entropies[:, completion], group_ids.to(device),
        TemperatureActions(**{name: v[:, completion] for name, v in actions.items()}), top_k=top_k, top_p=top_p,
    )


@ENGINES.register("hf")
class HFEngine:
    """The in-process sampler over the training model itself (``rollout.engine: hf``).

    It reads the policy's live parameters, so ``sync_weights`` has nothing to copy. Sampling settings
    (``max_new_tokens``, the temperature clamp, top-k / top-p) come from the run's ``RolloutConfig`` and
    nowhere else.
    """

    name = "hf"
    owns_weights = False  # samples from the policy's live parameters (gathered under FSDP while it samples)

    def __init__(self, policy: Policy, config: RolloutConfig, controller: TemperatureController | None = None) -> None:
        """``controller`` is accepted as every engine is built (``build_engine``); this sampler asks the
        controller at each step instead of building it in."""
        self.policy = policy
        self.config = config

    @property
    def temperature_range(self) -> tuple[float, float]:
        return self.config.temperature_min, self.config.temperature_max

    def generate(
        self,
        prompts: Sequence[str],
        controller: TemperatureController,
        generator: torch.Generator | None,
        *,
        group_ids: Tensor | None = None,
        training_step: int = 0,
        greedy: bool = False,
    ) -> RolloutBatch:
        prompt_ids, prompt_mask = encode_prompts(self.policy, list(prompts))
        was_training = self.policy.model.training
        self.policy.model.eval()
        try:
            return sample(
                self.policy, controller, prompt_ids, prompt_mask, self.config.max_new_tokens, generator, greedy,
                training_step, self.temperature_range, group_ids, self.config.top_k, self.config.top_p,
            )
        finally:
            self.policy.model.train(was_training)

    def decode(self, batch: RolloutBatch) -> list[str]:
        return decode_completions(self.policy, batch)

    def sync_weights(self) -> None:
        """Nothing to do: sampling uses the training model's own parameters."""

    def sleep(self) -> None:
        """Nothing to free: the sampler holds no memory of its own between rollouts."""


def decode_completions(policy: Policy, batch: RolloutBatch) -> list[str]:
    """Completion texts without stop tokens and padding."""
    stop_ids = set(stop_token_ids(policy))
    texts = []
    for ids, row_mask in zip(batch.completion_ids.tolist(), batch.completion_mask.tolist()):
        kept = [i for i, m in zip(ids, row_mask) if m and i not in stop_ids]
        texts.append(policy.tokenizer.decode(kept, skip_special_tokens=True))
    return texts


def truncated_completions(policy: Policy, batch: RolloutBatch, max_new_tokens: int) -> Tensor:
    """(N,) bool: completions cut at ``max_new_tokens`` without a stop token (DAPO's overlong samples)."""
    lengths = batch.completion_mask.sum(-1).long()
    last = batch.completion_ids.gather(1, (lengths - 1).clamp_min(0).unsqueeze(1)).squeeze(1)
    stop_ids = torch.tensor(stop_token_ids(policy), device=last.device)
    return (lengths >= max_new_tokens) & ~torch.isin(last, stop_ids)

