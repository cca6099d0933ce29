"""Reward functions (math-verify, user TRL-style functions), their loader, and the guard every call goes through."""

from thermorl.rewards.functions import (
    NamedRewardFunction,
    build_reward_guard,
    extract_boxed,
    load_reward_function,
    math_verify_reward,
    reward_functions,
)
from thermorl.rewards.guard import RewardFunction, RewardGuard, RewardScores, TrainerState

__all__ = [
    "NamedRewardFunction", "RewardFunction", "RewardGuard", "RewardScores", "TrainerState", "build_reward_guard",
    "extract_boxed", "load_reward_function", "math_verify_reward", "reward_functions",
]
