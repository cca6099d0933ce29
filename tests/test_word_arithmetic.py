"""The word-arithmetic task (the SmolLM2-135M recipe's task): stories, answers, parser, held-out split, knobs."""

import random
import re
from pathlib import Path

import pytest

from thermorl.config import dump_config, load_config
from thermorl.errors import ConfigError
from thermorl.tasks import build_task
from thermorl.tasks.word_arithmetic import last_number

pytestmark = pytest.mark.fast  # unit tests: no process, no run


def task_of(*overrides, eval_size=200):
    return build_task(load_config(None, ["task.name=word_arithmetic", f"task.eval_size={eval_size}", *overrides]).task)


def answer_read_from_the_story(prompt: str) -> int:
    """An independent reading of a story: the first sentence's count, then each sentence's change."""
    sentences = re.split(r"(?<=[.?])\s+", prompt)
    value = int(re.search(r"has (\d+)", sentences[0])[1])
    for sentence in sentences[1:]:
        if sentence.startswith("How many"):
            return value
        if "doubles" in sentence:
            value *= 2
        elif "triples" in sentence:
            value *= 3
        elif " more " in sentence:
            value += int(re.search(r"\d+", sentence)[0])
        else:
            value -= int(re.search(r"\d+", sentence)[0])
    raise AssertionError(f"no question in {prompt!r}")


def test_last_number_by_hand():
    assert last_number("Tom has 3 + 5 = 8 apples.") == 8
    assert last_number("So the answer is 1,234.") == 1234
    assert last_number("She has 9.0 now") == 9
    assert last_number("-4 left") == -4
    assert last_number("no digits here") is None
    assert last_number("") is None


@pytest.mark.parametrize("overrides", [
    (), ("task.word_arithmetic.steps=3", "task.word_arithmetic.operations=+-*"),
    ("task.word_arithmetic.max_number=50", "task.word_arithmetic.max_answer=500"),
])
def test_the_answer_is_what_the_story_says_and_only_it_is_rewarded(overrides):
    task = task_of(*overrides)
    for problem in task.train_problems(random.Random(0), 300):
        assert int(problem.answer) == answer_read_from_the_story(problem.prompt), problem.prompt
        assert task.reward(problem, task.demonstration(problem)) == 1.0
        assert task.reward(problem, f"The answer is {int(problem.answer) + 1}.") == 0.0
        assert task.reward(problem, f"{problem.answer} was the start, now it is {int(problem.answer) - 1}") == 0.0
        assert task.reward(problem, "__import__('os').system('true')") == 0.0


def test_math_verify_on_the_whole_text_agrees_with_the_parser_on_prose_answers():
    from thermorl.rewards import math_verify_reward

    task = task_of()
    problems = task.train_problems(random.Random(2), 20)
    right = [f"{p.data['solution'][-1]}. So {p.prompt.split()[0]} has {p.answer} now." for p in problems]
    wrong = [f"{p.data['solution'][-1]}. So the answer is {int(p.answer) + 2}." for p in problems]
    for texts, expected in ((right, 1.0), (wrong, 0.0)):
        parsed = [task.reward(p, t) for p, t in zip(problems, texts)]
        verified = math_verify_reward(None, texts, [p.answer for p in problems], extractor="full")
        assert parsed == verified == [expected] * len(problems)


def test_held_out_split_has_500_distinct_prompts_disjoint_from_training_and_fixed():
    task = task_of(eval_size=500)
    held_out = {p.prompt for p in task.eval_problems()}
    assert len(held_out) == 500
    assert {p.prompt for p in task_of(eval_size=500).eval_problems()} == held_out
    assert not held_out & {p.prompt for p in task.train_problems(random.Random(1), 3000)}


def test_difficulty_knobs_change_the_problems():
    one = task_of("task.word_arithmetic.max_number=5").train_problems(random.Random(0), 200)
    assert all(len(re.split(r"(?<=[.?])\s+", p.prompt)) == 4 for p in one)  # count, change, question, instruction
    assert max(int(n) for p in one for n in re.findall(r"\d+", p.prompt)) <= 5 + 5
    three = task_of("task.word_arithmetic.steps=3").train_problems(random.Random(0), 50)
    assert all(p.prompt.count("Then") == 2 and len(p.data["solution"]) == 3 for p in three)
    gains = task_of("task.word_arithmetic.operations=+", "task.word_arithmetic.steps=2").train_problems(
        random.Random(0), 100)
    assert all(p.prompt.count(" more ") == 2 for p in gains)
    capped = task_of("task.word_arithmetic.steps=3", "task.word_arithmetic.operations=+*",
                     "task.word_arithmetic.max_answer=30").train_problems(random.Random(0), 200)
    assert all(int(s.split("= ")[1]) <= 30 for p in capped for s in p.data["solution"])
    bare = task_of("task.word_arithmetic.instruction=").train_problems(random.Random(0), 5)
    assert all(p.prompt.endswith("now?") for p in bare)


@pytest.mark.parametrize("override,message", [
    ("task.word_arithmetic.operations=+/", "task.word_arithmetic.operations must be distinct characters"),
    ("task.word_arithmetic.steps=0", "task.word_arithmetic.steps must be > 0"),
    ("task.word_arithmetic.max_number=2", "task.word_arithmetic.max_number must be >= 3"),
    ("task.word_arithmetic.max_number=200", "task.word_arithmetic.max_number must be <= max_answer"),
    ("task.word_arithmetic.level=2", "unknown config key task.word_arithmetic.level"),
])
def test_bad_knobs_name_the_field(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, ["task.name=word_arithmetic", override])


def test_the_task_section_round_trips_through_the_run_config(tmp_path):
    config = load_config(None, ["task.name=word_arithmetic", "task.word_arithmetic.steps=2"])
    dump_config(config, tmp_path / "config.yaml")
    assert "word_arithmetic:" in (tmp_path / "config.yaml").read_text()
    assert load_config(tmp_path / "config.yaml").task.word_arithmetic.steps == 2


def test_the_smollm2_recipe_loads_and_names_this_task():
    recipe = Path(__file__).resolve().parents[1] / "examples" / "smollm2_cpu.yaml"
    config = load_config(recipe, ["model.path=SmolLM2-135M-Instruct.Q4_1.gguf"])
    assert config.task.name == "word_arithmetic" and config.task.eval_size >= 500
    assert len(build_task(config.task).eval_problems()) == config.task.eval_size


def test_text_token_classes_by_hand():
    """Each class of a prose answer, on hand-split pieces: the last number is the final answer, earlier
    numbers are numbers, 'So' is a connective, a sentence's first word is a step start, EOS is end."""
    from thermorl.tasks.base import text_token_classes

    pieces = ["Mia", " has", " 7", " +", " 5", " =", " 12", ".", " So", " she", " has", " 1", "2", ".", "Then",
              " she", " stops", "</s>"]
    classes = text_token_classes(pieces, [False] * 17 + [True])
    assert classes == [
        "step start", "other", "number", "operator", "number", "operator", "number", "other", "connective",
        "other", "other", "final answer", "final answer", "other", "connective", "other", "other", "end",
    ]
    after_newline = text_token_classes(["Answer", ":", "\n", "Total", " is", " 3"], [False] * 6)
    assert after_newline == ["connective", "other", "other", "connective", "other", "final answer"]
    assert text_token_classes(["The", " sum", "\n", "Add", " them"], [False] * 5)[3] == "step start"
    assert text_token_classes(["no", " digits"], [False, False]) == ["step start", "other"]


def test_prose_tasks_report_text_classes_and_synthetic_tasks_their_symbols():
    """The temperature reports ask the task: word arithmetic classes prose, the synthetic tasks symbols."""
    pieces, ends = [" Mia", " has", " 12", "."], [False] * 4
    assert task_of().report_token_classes(pieces, ends) == ["step start", "other", "final answer", "other"]
    arithmetic = build_task(load_config(None, ["task.name=arithmetic"]).task)
    assert arithmetic.report_token_classes(["3", "+", "4", "=", "7"], [False] * 5) == [
        "digit", "operator", "digit", "separator", "final answer"]
