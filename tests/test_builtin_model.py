"""The shipped warm start: it loads offline and scores in the range RL needs."""

import json

from thermorl.config import ModelConfig, RolloutConfig, TaskConfig
from thermorl.engines import build_engine
from thermorl.models import BUILTIN_DIR, load_policy
from thermorl.study.evaluate import greedy_accuracy
from thermorl.tasks import build_task


def test_shipped_checkpoint_is_small_safetensors():
    weights = BUILTIN_DIR / "model.safetensors"
    assert weights.is_file()
    assert sum(p.stat().st_size for p in BUILTIN_DIR.iterdir()) <= 10 * 2**20
    record = json.loads((BUILTIN_DIR / "pretrain.json").read_text())
    assert record["steps"] == 275 and record["seed"] == 0  # what `thermorl pretrain` reproduces by default
    defaults = TaskConfig()
    assert {k: record["task"][k] for k in ("name", "num_operands", "max_operand", "max_result", "operations")} == {
        "name": defaults.name, "num_operands": defaults.num_operands, "max_operand": defaults.max_operand,
        "max_result": defaults.max_result, "operations": defaults.operations,
    }  # trained on the default task


def test_shipped_checkpoint_scores_in_the_useful_range():
    policy = load_policy(ModelConfig(path="builtin"))
    task = build_task(TaskConfig())
    accuracy = greedy_accuracy(build_engine(RolloutConfig(max_new_tokens=24), policy), task, task.eval_problems())
    # the default task's full held-out split (1000 problems), greedy
    assert 0.10 <= accuracy <= 0.50, accuracy
    assert abs(accuracy - json.loads((BUILTIN_DIR / "pretrain.json").read_text())["eval_accuracy"]) < 0.02
