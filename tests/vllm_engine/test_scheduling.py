"""The vLLM engine under scheduler pressure: more prompt tokens than one engine step computes and a KV
cache too small for the batch, so vLLM would chunk prefills (vLLM 0.32 on CPU crashed there with
'CPU Generator does not use offset') and does preempt requests; and an engine failure in a run."""

import random
import subprocess
import sys

import pytest
import torch

from thermorl.config import load_config
from thermorl.engines.hf import encode_prompts
from thermorl.runtime.forward import score

PRESSURE = [  # 8 KV blocks of 32 tokens for 128 requests; 64 tokens per engine step
    "rollout.vllm.max_model_len=64", "rollout.vllm.max_num_batched_tokens=64", "rollout.vllm.max_num_seqs=64",
    "rollout.vllm.engine_kwargs={block_size: 32, num_gpu_blocks_override: 8}",
]


@pytest.fixture(scope="module")
def pressed(vllm_setup):
    """A second engine over the session's policy and introspective head, with the settings above."""
    from thermorl.engines.vllm import VLLMEngine

    _, components, _ = vllm_setup
    config = load_config(None, ["temperature.controller=introspective", "rollout.engine=vllm", *PRESSURE])
    engine = VLLMEngine(components.policy, config.rollout, components.controller)
    scheduler = engine.llm.llm_engine.engine_core.engine_core.scheduler
    preemptions = []
    preempt = scheduler._preempt_request

    def counted(request, *args, **kwargs):  # vLLM's own preemption, counted
        preemptions.append(request.request_id)
        return preempt(request, *args, **kwargs)

    scheduler._preempt_request = counted
    yield engine, preemptions
    engine.close()


def test_a_batch_that_overflows_a_step_and_the_kv_cache_samples_reproducibly(vllm_setup, pressed):
    """128 seeded requests (16 groups of 8) whose prompts hold several times the step's token budget, on a
    KV cache of 8 x 32 tokens: vLLM preempts (and recomputes) requests, nothing crashes, the same seeds give
    the same completions, temperatures and head actions, and the engine's log-probs (LM and head) still
    equal the trainer's at the recorded temperatures."""
    from thermorl.algorithms.hierarchical import temperature_logprob

    _, components, _ = vllm_setup
    engine, preemptions = pressed
    controller = components.controller
    # three countdown prompts per request (~28 tokens): each request fills its first KV block with its prompt
    # and needs a second within a few tokens, so vLLM must preempt however early the warm start ends answers
    problems = components.task.train_problems(random.Random(3), 48)
    texts = ["".join(p.prompt for p in problems[i : i + 3]) for i in range(0, 48, 3)]
    prompt_ids, prompt_mask = encode_prompts(components.policy, [text for text in texts for _ in range(8)])
    assert prompt_mask.sum().item() > 4 * 64  # a chunking scheduler would have split these prefills
    assert prompt_mask.sum(-1).max().item() <= 32  # one block each at admission
    state = controller.generator.get_state()
    first = engine.sample(controller, prompt_ids, prompt_mask, 24, torch.Generator().manual_seed(11), training_step=3)
    assert len(preemptions) > 0
    seen = len(preemptions)
    controller.generator.set_state(state)
    second = engine.sample(controller, prompt_ids, prompt_mask, 24, torch.Generator().manual_seed(11), training_step=3)
    assert len(preemptions) > seen
    mask = first.completion_mask
    assert mask.sum().item() > 128 * 8 and (mask.sum(1) >= 1).all()
    assert torch.equal(first.completion_ids, second.completion_ids)
    assert torch.equal(first.temperatures, second.temperatures)
    assert torch.equal(first.actions.z, second.actions.z) and torch.equal(first.actions.gate, second.actions.gate)
    scored = score(components.policy, first)
    assert ((scored.logprobs - first.logprobs).abs() * mask).max().item() <= 1e-4
    head = temperature_logprob(controller.head(scored.hidden), first.actions.gate, first.actions.z, 1e-3)
    assert ((head - first.actions.logprob).abs() * mask).max().item() <= 1e-4


def test_an_engine_failure_ends_a_run_in_one_line_without_a_run_directory(tmp_path):
    """vLLM failing inside a rollout (here: its own CPU crash, brought back by asking for chunked prefills with
    a 32-token step budget) ends `thermorl train` with exit code 2, one 'error:' line naming the failure, and
    no run directory (the run had no checkpoint yet)."""
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "thermorl.cli", "train", "--steps", "2", "--out", str(out), "--set", "rollout.engine=vllm",
         "--set", "rollout.vllm.max_model_len=64",
         "--set", "rollout.vllm.engine_kwargs={enable_chunked_prefill: true, max_num_batched_tokens: 32, max_num_seqs: 32}"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "vLLM engine failed while sampling" in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr.split(errors[0])[-1]
    assert not out.exists()
