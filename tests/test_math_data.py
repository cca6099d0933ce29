"""Math data sources (shipped benchmarks, jsonl/json/parquet/datasets with field mapping) and MathTask."""

import json
import random

import pytest

from thermorl.config import load_config
from thermorl.errors import DataError
from thermorl.rewards import build_reward_guard
from thermorl.tasks import build_task
from thermorl.tasks.math import MathTask, math_problem
from thermorl.tasks.math_data import BENCHMARKS, load_math_rows


@pytest.mark.parametrize(
    "name, rows",
    [("math500", 500), ("aime24", 30), ("amc23", 40), ("minerva", 272), ("olympiadbench", 675),
     ("gsm8k_test", 1319), ("gsm8k_train", 7473)],
)
def test_shipped_benchmarks_load_by_name_with_all_rows(name, rows):
    loaded = load_math_rows(name)
    assert len(loaded) == rows
    assert all(isinstance(r["problem"], str) and r["problem"] and isinstance(r["answer"], str) for r in loaded)
    assert set(BENCHMARKS) == {"math500", "aime24", "amc23", "minerva", "olympiadbench", "gsm8k_test", "gsm8k_train"}


def test_math500_rows_keep_their_reference_solution():
    assert all("\\boxed" in row["solution"] for row in load_math_rows("math500"))


def _rows():
    return [{"question": f"What is {i}+{i}?", "final": 2 * i, "source": "synthetic"} for i in range(1, 6)]


def test_local_files_in_every_format_with_a_field_mapping(tmp_path):
    import datasets

    rows = _rows()
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    (tmp_path / "train.json").write_text(json.dumps(rows))
    dataset = datasets.Dataset.from_list(rows)
    dataset.to_parquet(str(tmp_path / "train.parquet"))
    datasets.DatasetDict({"train": dataset}).save_to_disk(str(tmp_path / "saved"))
    for source in ["train.jsonl", "train.json", "train.parquet", "saved"]:
        loaded = load_math_rows(str(tmp_path / source), problem_field="question", answer_field="final")
        assert [r["problem"] for r in loaded] == [r["question"] for r in rows], source
        assert [r["answer"] for r in loaded] == ["2", "4", "6", "8", "10"], source  # numbers become strings
        assert loaded[0]["source"] == "synthetic", source  # other columns are kept


def test_saved_dataset_without_the_split_is_a_data_error(tmp_path):
    import datasets

    datasets.DatasetDict({"validation": datasets.Dataset.from_list(_rows())}).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(DataError, match="has no split 'train' \\(have: validation\\)"):
        load_math_rows(str(tmp_path / "d"), "question", "final")


def test_jsonl_strings_may_contain_unicode_line_separators(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_text(json.dumps({"problem": "a\u2028b", "answer": "1"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert load_math_rows(str(path))[0]["problem"] == "a\u2028b"


def test_math_task_prompts_ask_for_a_boxed_answer_and_reward_with_math_verify():
    config = load_config(
        None, ["task.name=math", "task.dataset=aime24", "task.eval_dataset=amc23", "task.eval_size=10"]
    )
    task = build_task(config.task)
    assert isinstance(task, MathTask)
    assert len(task.eval_problems()) == 10
    problem = task.eval_problems()[0]
    assert problem.prompt.startswith(problem.data["problem"])
    assert problem.prompt.endswith("put your final answer within \\boxed{}.")
    assert task.reward(problem, f"so the answer is \\boxed{{{problem.answer}}}") == 1.0
    assert task.reward(problem, f"the answer is {problem.answer}") == 0.0  # no box, no reward
    batch = task.train_problems(random.Random(0), 30)
    assert len({p.prompt for p in batch}) == 30  # distinct within a step when the data allows


def test_prompt_template_replaces_only_the_problem_placeholder():
    problem = math_problem({"problem": "Compute {x}.", "answer": "1"}, "Q: {problem}\nA: \\boxed{}")
    assert problem.prompt == "Q: Compute {x}.\nA: \\boxed{}"


def test_prompt_template_without_placeholder_is_a_config_error():
    from thermorl.errors import ConfigError

    with pytest.raises(ConfigError, match="task.prompt_template must contain \\{problem\\}"):
        load_config(None, ["task.prompt_template=Solve it"])


def test_custom_reward_receives_the_dataset_columns(tmp_path):
    module = tmp_path / "my_reward.py"
    module.write_text(
        "def uses_solution(prompts, completions, answer, solution, **kwargs):\n"
        "    return [float(a in s and c == 'x') for a, s, c in zip(answer, solution, completions)]\n"
    )
    config = load_config(None, ["task.name=math", "task.eval_dataset=math500", f"task.reward={module}:uses_solution"])
    task = build_task(config.task)
    problem = task.eval_problems()[0]
    guard = build_reward_guard(config.task, task, chat_template=False)
    try:
        assert guard.score([problem, problem], ["x", "y"]).total == [1.0, 0.0]
    finally:
        guard.close()
