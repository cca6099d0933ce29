"""``rollout.vllm`` is validated on load (no vLLM needed): what engine_kwargs may not set is refused in one line
naming the field."""

import pytest

from thermorl.config import load_config
from thermorl.errors import ConfigError


def test_engine_kwargs_pass_vllms_own_arguments_through():
    config = load_config(None, ["rollout.vllm.engine_kwargs={block_size: 32, num_gpu_blocks_override: 8}"])
    assert config.rollout.vllm.engine_kwargs == {"block_size": 32, "num_gpu_blocks_override": 8}
    assert config.rollout.vllm.max_num_batched_tokens == 4096


@pytest.mark.parametrize("setting, message", [
    ("{logprobs_mode: raw_logprobs}", "may not set logprobs_mode"),
    ("{load_format: auto, seed: 3}", "may not set load_format, seed"),
    ("{tensor_parallel_size: 2}", "engine_kwargs.tensor_parallel_size must be 1"),
])
def test_what_the_engine_needs_for_itself_is_refused(setting, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_config(None, [f"rollout.vllm.engine_kwargs={setting}"])
    assert "\n" not in str(error.value) and "rollout.vllm" in str(error.value)
