"""Loading real-model formats: local directories, LoRA adapters (peft), gradient checkpointing, no downloads."""

import dataclasses
from pathlib import Path

import pytest
import torch

from thermorl.config import ModelConfig, load_config
from thermorl.engines.hf import encode_prompts, sample
from thermorl.runtime.forward import score
from thermorl.errors import ModelLoadError
from thermorl.models import load_policy
from thermorl.temperature import ControllerEnv, build_controller

TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "device": "cpu"}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny model saved as a Hugging Face directory (safetensors + tokenizer)."""
    path = tmp_path_factory.mktemp("base")
    policy = load_policy(ModelConfig(path="builtin:random", **TINY), seed=3)
    policy.model.save_pretrained(path)
    policy.tokenizer.save_pretrained(path)
    return path


def _batch(policy, controller):
    prompt_ids, prompt_mask = encode_prompts(policy, ["3,7,2>23:", "1,2>3:"] * 2)
    return sample(policy, controller, prompt_ids, prompt_mask, 6, torch.Generator().manual_seed(0))


def test_missing_path_is_a_clear_error_and_a_hub_id_is_not_downloaded():
    with pytest.raises(ModelLoadError, match="model.path /no/such/model is not a directory$"):
        load_policy(ModelConfig(path="/no/such/model", device="cpu"))
    with pytest.raises(ModelLoadError, match="set model.allow_download=true"):
        load_policy(ModelConfig(path="Qwen/Qwen2.5-Math-1.5B", device="cpu"))


def test_lora_trains_adapters_only_and_the_temperature_head_fully(base_dir):
    policy = load_policy(ModelConfig(path=str(base_dir), lora_r=4, **TINY))
    trainable = {name for name, p in policy.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    config = load_config(None, ["temperature.controller=introspective", "temperature.introspective.schedule=joint"])
    controller = build_controller(config.temperature, ControllerEnv(policy.hidden_size, 1, policy.device))
    batch = _batch(policy, controller)
    scored = score(policy, batch)
    head_loss, _ = controller.policy_loss(
        scored.hidden, batch.actions, torch.tensor([1.0, -1.0, 0.5, -0.5]), batch.completion_mask, 1
    )
    (scored.logprobs.sum() + head_loss).backward()
    assert all(p.requires_grad and p.grad is not None for p in controller.module.parameters())
    assert all(p.grad is not None for n, p in policy.model.named_parameters() if "lora_B" in n)
    assert all(p.grad is None for n, p in policy.model.named_parameters() if "lora_" not in n)


def test_lora_adapter_directory_reloads_to_the_same_model(base_dir, tmp_path):
    policy = load_policy(ModelConfig(path=str(base_dir), lora_r=4, **TINY))
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # make the adapter matter
    policy.model.save_pretrained(tmp_path / "adapter")
    policy.tokenizer.save_pretrained(tmp_path / "adapter")
    reloaded = load_policy(ModelConfig(path=str(tmp_path / "adapter"), **TINY))
    ids = torch.tensor([[1, 5, 9, 4]])
    mask, positions = torch.ones_like(ids), torch.arange(4).unsqueeze(0)
    expected = policy.logits(policy.hidden(ids, mask, positions)[0])
    assert torch.allclose(reloaded.logits(reloaded.hidden(ids, mask, positions)[0]), expected, atol=1e-5)
    assert any(p.requires_grad for p in reloaded.model.parameters())  # training can continue from it


def test_gradient_checkpointing_recomputes_layers_and_gives_the_same_gradients(base_dir):
    grads, forward_calls = [], []
    for checkpointing in (False, True):
        policy = load_policy(ModelConfig(path=str(base_dir), gradient_checkpointing=checkpointing, **TINY))
        config = load_config(None, [])
        controller = build_controller(config.temperature, ControllerEnv(policy.hidden_size, 1, policy.device))
        batch = _batch(policy, controller)
        policy.model.train()
        calls = []
        policy.model.get_decoder().layers[0].self_attn.register_forward_hook(lambda *args, calls=calls: calls.append(1))
        score(policy, batch, share_prompts=False).logprobs.sum().backward()  # one pass over prompt + completion
        forward_calls.append(len(calls))
        grads.append(torch.cat([p.grad.reshape(-1) for p in policy.model.parameters() if p.grad is not None]))
    assert forward_calls == [1, 2]  # the checkpointed layer runs again in the backward pass
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_lora_needs_a_saved_base():
    with pytest.raises(ModelLoadError, match="needs a pretrained base"):
        load_policy(dataclasses.replace(ModelConfig(path="builtin:random", **TINY), lora_r=4))


def test_a_lora_run_resumes_from_its_adapter_checkpoint_exactly(base_dir, tmp_path):
    import json
    import shutil

    from thermorl.runtime.trainer import train

    user_rewards = Path(__file__).resolve().parent / "user_rewards.py"
    config = load_config(None, [
        f"model.path={base_dir}", "model.device=cpu", "model.lora_r=4", f"task.reward={user_rewards}:digit_fraction",
        "train.steps=3", "train.checkpoint_every=1", "train.keep_checkpoints=3", "task.eval_size=4",
        "train.eval_avg_problems=2", "train.eval_avg_k=2", "rollout.prompts_per_step=2", "rollout.group_size=2",
        "rollout.max_new_tokens=6", "algorithm.lr=0.01", "log.plot=false", "log.tensorboard=false",
        "log.progress=false",
    ])
    run = tmp_path / "run"
    train(config, run)
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-000003")
    train(config, resumed, resume=True)

    def rows(path):
        lines = (path / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if not k.endswith("_s")} for line in lines]

    assert rows(resumed) == rows(run)


def test_attention_kernels_are_chosen_by_name_and_give_the_same_scores(base_dir):
    """model.attn_implementation reaches transformers (the layers run eager attention), the scores and gradients
    equal the default kernels' (sdpa), and kernels that are not here are one ModelLoadError line."""
    results = {}
    for name in ("", "eager"):
        policy = load_policy(ModelConfig(path=str(base_dir), attn_implementation=name, **TINY))
        assert policy.model.config._attn_implementation == (name or "sdpa")
        config = load_config(None, [])
        controller = build_controller(config.temperature, ControllerEnv(policy.hidden_size, 1, policy.device))
        batch = _batch(policy, controller)
        logprobs = score(policy, batch).logprobs
        logprobs.sum().backward()
        grads = torch.cat([p.grad.reshape(-1) for p in policy.model.parameters() if p.grad is not None])
        results[name] = (logprobs.detach(), grads)
    torch.testing.assert_close(results["eager"][0], results[""][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results["eager"][1], results[""][1], rtol=1e-4, atol=1e-5)
    with pytest.raises(ModelLoadError, match="model.attn_implementation='bogus'"):
        load_policy(ModelConfig(path=str(base_dir), attn_implementation="bogus", **TINY))
    with pytest.raises(ModelLoadError, match="flash_attention_2"):  # flash-attn is not installed here
        load_policy(ModelConfig(path=str(base_dir), attn_implementation="flash_attention_2", **TINY))
