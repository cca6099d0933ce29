"""Property-based tests: the config loader fails only with ConfigError, answer parsers never raise,
and a task's own demonstration always earns reward 1."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thermorl.config import field_help, load_config
from thermorl.errors import ConfigError
from thermorl.rewards import extract_boxed
from thermorl.tasks import Arithmetic, Countdown, check_countdown
from thermorl.tasks.base import Problem

FIELDS = [name for name, _, _ in field_help()]
SECTIONS = sorted({name.split(".")[0] for name in FIELDS})
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

yaml_scalars = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.integers().map(lambda n: str(10**400 + n)),  # beyond float range
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["true", "no", "null", "~", ".nan", "-.inf", "1e400", "3e-5", "2020-01-01", "[1, 2]", "{a: 1}",
                     "[", "]", "{", "'", '"', "!!python/object:os.system", "&a [*a]", "*a", "- x", "a: b: c", ""]),
    st.text(max_size=20),
)
override_keys = st.one_of(
    st.sampled_from(FIELDS), st.sampled_from(SECTIONS), st.text(max_size=15),
    st.builds(lambda a, b: f"{a}.{b}", st.sampled_from(SECTIONS), st.text(max_size=8)),
    st.builds(lambda f, b: f"{f}.{b}", st.sampled_from(FIELDS), st.text(max_size=5)),
)
overrides = st.lists(
    st.one_of(st.builds(lambda k, v: f"{k}={v}", override_keys, yaml_scalars), st.text(max_size=20)), max_size=4
)


@FAST
@given(overrides)
def test_random_overrides_fail_only_with_config_error(items):
    try:
        config = load_config(None, items)
    except ConfigError as err:
        assert str(err) and "\n" not in str(err), "a config error is one line"
    else:
        assert config.validate() is config


@FAST
@given(st.sampled_from(FIELDS), yaml_scalars)
def test_any_value_for_any_field_fails_only_with_config_error(field, value):
    test_random_overrides_fail_only_with_config_error.hypothesis.inner_test([f"{field}={value}"])


yaml_documents = st.recursive(
    yaml_scalars | st.sampled_from(FIELDS),
    lambda inner: st.dictionaries(st.sampled_from(SECTIONS + FIELDS) | st.text(max_size=6), inner, max_size=4).map(
        lambda d: "\n".join(f"{k}: {v}" for k, v in d.items())
    ) | st.lists(inner, max_size=3).map(lambda xs: "\n".join(f"- {x}" for x in xs)),
    max_leaves=8,
)


@FAST
@given(st.one_of(yaml_documents, st.text(max_size=200), st.binary(max_size=100).map(lambda b: b.decode("latin-1"))))
def test_random_yaml_files_fail_only_with_config_error(text):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "config.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        try:
            load_config(path)
        except ConfigError as err:
            assert str(err)


any_text = st.one_of(
    st.text(max_size=60),
    st.text(alphabet="0123456789+-*=,. \n", max_size=60),
    st.text(alphabet="0123456789٣٤൬+-*=,", max_size=60),  # non-ASCII digits match \\d too
)


@FAST
@given(st.lists(st.integers(min_value=-(10**6), max_value=10**6), max_size=6), st.integers(), any_text)
def test_check_countdown_never_raises(numbers, target, completion):
    assert check_countdown(numbers, target, completion) in (True, False)


task_shapes = st.tuples(
    st.integers(min_value=2, max_value=5), st.integers(min_value=1, max_value=200),
    st.integers(min_value=10, max_value=9999), st.integers(min_value=0, max_value=10**6),
)


def _problem(task_class, shape) -> tuple[object, Problem]:
    num_operands, max_operand, max_result, seed = shape
    task = task_class(num_operands, max(1, min(max_operand, max_result)), max_result, eval_size=1, eval_seed=0)
    return task, task.generate(random.Random(seed))


@FAST
@given(st.sampled_from([Countdown, Arithmetic]), task_shapes, any_text)
def test_task_rewards_never_raise_on_any_string(task_class, shape, completion):
    task, problem = _problem(task_class, shape)
    assert task.reward(problem, completion) in (0.0, 1.0)


@FAST
@given(st.sampled_from([Countdown, Arithmetic]), task_shapes, st.sampled_from(["", " ", "\n"]))
def test_a_demonstration_always_scores_one(task_class, shape, padding):
    task, problem = _problem(task_class, shape)
    assert task.reward(problem, padding + task.demonstration(problem) + padding) == 1.0


@FAST
@given(st.text(alphabet="\\boxedfbx{} 0123456789a", max_size=60) | st.text(max_size=60))
def test_extract_boxed_never_raises(text):
    extracted = extract_boxed(text)
    assert extracted is None or isinstance(extracted, str)


@FAST
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="{}"), max_size=30))
def test_extract_boxed_returns_the_boxed_answer(answer):
    assert extract_boxed(f"so the answer is \\boxed{{{answer}}}.") == answer.strip()
