"""Reward functions a user might write (TRL signature), loaded with --set task.reward=tests/user_rewards.py:NAME."""

import time


def digit_fraction(prompts, completions, **columns):
    """A dense reward: the fraction of digits in the completion (lets a random model learn something)."""
    return [sum(ch.isdigit() for ch in text) / max(len(text), 1) for text in completions]


def raises(prompts, completions, **columns):
    raise ValueError("boom")


def hangs(prompts, completions, **columns):
    time.sleep(30)
    return [0.0] * len(completions)


def wrong_length(prompts, completions, **columns):
    return [0.0] * (len(completions) + 1)


def nan(prompts, completions, **columns):
    return [float("nan")] * len(completions)


def not_a_number(prompts, completions, **columns):
    return ["yes"] * len(completions)


def flaky(prompts, completions, **columns):
    """Raises on every completion containing a digit; a run without fail-fast scores those 0."""
    if any(ch.isdigit() for text in completions for ch in text):
        raise RuntimeError("flaky scorer")
    return [1.0] * len(completions)
