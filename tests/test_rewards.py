"""math_verify_reward (TRL signature), answer extraction, user reward functions, and the pass@k estimator."""

import math
import random
import time

import pytest

from thermorl.rewards import extract_boxed, math_verify_reward
from thermorl.rewards import functions as rewards
from thermorl.study.evaluate import pass_at_k
from thermorl.tasks.math_data import load_math_rows


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{42}.", "42"),
        ("first \\boxed{1}, finally \\boxed{\\frac{a}{b^{2}}}", "\\frac{a}{b^{2}}"),
        ("\\fbox{7}", "7"),
        ("\\boxed {x+1}", "x+1"),
        ("no box here", None),
        ("broken \\boxed{1", None),
        ("\\boxed{2} then a bare \\boxed", "2"),
    ],
)
def test_extract_boxed_takes_the_last_balanced_box(text, expected):
    assert extract_boxed(text) == expected


def test_math_verify_reward_accepts_equivalent_forms_and_rejects_wrong_ones():
    completions = [
        "... = \\boxed{\\frac{1}{2}}", "\\boxed{0.5}", "\\boxed{\\dfrac12}", "\\boxed{1/3}", "the answer is 1/2",
        [{"role": "assistant", "content": "\\boxed{\\frac{2}{4}}"}],  # TRL conversational completion
    ]
    scores = math_verify_reward(None, completions, ["\\frac{1}{2}"] * len(completions))
    assert scores == [1.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    assert math_verify_reward(["p"], ["the answer is 1/2"], ["1/2"], extractor="full") == [1.0]


def test_each_verification_is_bounded_by_its_timeout(monkeypatch):
    def hang(*args):
        time.sleep(30)

    monkeypatch.setattr(rewards, "verify_answer", hang)
    started = time.time()
    assert math_verify_reward(None, ["\\boxed{1}", "\\boxed{2}"], ["1", "2"], timeout_s=0.2) == [0.0, 0.0]
    assert time.time() - started < 5


def test_math500_reference_solutions_score_right_and_shuffled_answers_wrong():
    rows = load_math_rows("math500")
    solutions = [row["solution"] for row in rows]
    answers = [row["answer"] for row in rows]
    correct = math_verify_reward(None, solutions, answers)
    assert sum(correct) / len(rows) >= 0.97
    shuffled = answers[:]
    random.Random(0).shuffle(shuffled)
    wrong = math_verify_reward(None, solutions, shuffled)
    assert sum(wrong) / len(rows) <= 0.03


def _codex_pass_at_k(n: int, c: int, k: int) -> float:
    """The estimator exactly as written in Chen et al. (2021): 1 - C(n-c, k) / C(n, k)."""
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def test_pass_at_k_matches_the_codex_estimator():
    rng = random.Random(0)
    for _ in range(2000):
        n = rng.randint(1, 200)
        c = rng.randint(0, n)
        k = rng.randint(1, n)
        assert abs(pass_at_k(n, c, k) - _codex_pass_at_k(n, c, k)) <= 1e-9, (n, c, k)
