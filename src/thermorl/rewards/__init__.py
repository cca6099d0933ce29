"""Reward functions (math-verify, user TRL-style functions) and the guard that bounds their calls."""

from thermorl.rewards.functions import (
    TaskReward,
    check_rewards,
    extract_boxed,
    load_reward_function,
    math_verify_reward,
)

__all__ = ["TaskReward", "check_rewards", "extract_boxed", "load_reward_function", "math_verify_reward"]
