"""Reward functions a user might write (TRL signature), loaded with --set task.reward=tests/user_rewards.py:NAME."""

import os
import time
from pathlib import Path


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


def held_at_checkpoint(prompts, completions, **columns):
    """digit_fraction; but once the directory $THERMORL_TEST_HOLD_AT exists (a checkpoint), every call
    writes $THERMORL_TEST_MARKERS/held-<RANK> (its pid) and waits for $THERMORL_TEST_MARKERS/release:
    holds a run mid-step, so a test can signal or kill it at a known point without timing."""
    hold_at, markers = os.environ.get("THERMORL_TEST_HOLD_AT"), os.environ.get("THERMORL_TEST_MARKERS")
    if hold_at and markers and Path(hold_at).is_dir():
        Path(markers, f"held-{os.environ.get('RANK', '0')}").write_text(str(os.getpid()))
        give_up = time.monotonic() + 900  # only so that a failed test cannot leave it waiting for ever
        while not Path(markers, "release").exists() and time.monotonic() < give_up:
            time.sleep(0.01)
    return digit_fraction(prompts, completions)


def stuck_in_c(prompts, completions, **columns):
    """Hours inside one C call (OpenSSL's PBKDF2 loop): no signal handler runs until it returns."""
    import hashlib

    hashlib.pbkdf2_hmac("sha256", b"password", b"salt", 2**31 - 1)  # ~20 min here
    return [0.0] * len(completions)


def length_and_columns(prompts, completions, completion_ids, trainer_state, answer, **columns):
    """Echo what the TRL call convention hands over: completion lengths plus the step, so a test can check both."""
    return [len(ids) + trainer_state.global_step for ids in completion_ids]


def add(a, b=0):
    return a + b


def stuck_from_step_2(prompts, completions, trainer_state, **columns):
    """digit_fraction, but from training step 2 on, with THERMORL_TEST_STUCK naming a marker file, it writes its
    process id to the marker and goes into C for good (a stand-in for a SymPy or regex call that never returns)."""
    import os
    from pathlib import Path

    marker = os.environ.get("THERMORL_TEST_STUCK")
    if marker and trainer_state.global_step >= 2:
        Path(marker).write_text(str(os.getpid()))
        stuck_in_c(prompts, completions)
    return digit_fraction(prompts, completions)


def raises_after_training(prompts, completions, **columns):
    """digit_fraction until RUN/summary.json exists (THERMORL_TEST_RUN_DIR), then an exception: only the
    end-of-run report ever sees it raise."""
    import os
    from pathlib import Path

    if (Path(os.environ["THERMORL_TEST_RUN_DIR"]) / "summary.json").exists():
        raise RuntimeError("raised after training")
    return digit_fraction(prompts, completions)


def spread_if_prompt_has_a_7(prompts, completions, **columns):
    """Rewards that differ within a group only for prompts containing a 7 (0.0 for every other completion)."""
    return [float(len(text) % 3) if "7" in prompt else 0.0 for prompt, text in zip(prompts, completions)]
