"""What TAMPO's outer update costs: peak extra memory and time against a GRPO update.

Memory: re-scoring ``tokens`` completion tokens at K candidates (defaults: K = 10, vocab 32k,
1k tokens; ``benchmarks/run.py`` uses vocab 152064 and 2048 tokens) against one ``log_softmax``
pass over the same logits and, with ``--naive-candidates K'``, against the textbook re-scoring
that materialises the K' tempered log-softmaxes as one (K', N, T, V) tensor (K' < K keeps it in
memory; the naive peak grows by one (N, T, V) float32 tensor per candidate, which gives its
figure at K). On CPU the peak extra
resident memory is read from Linux's VmHWM after resetting it (``/proc/self/clear_refs``),
in a child process whose malloc hands every block above 64 KiB back to the kernel on free
(``MALLOC_MMAP_THRESHOLD_``), so no temporary can hide in memory freed earlier. On CUDA it is
``torch.cuda.max_memory_allocated`` above the memory held before the call.

Time: ``trainer.grpo_update`` (forward + backward + AdamW step at a fixed temperature) on a
synthetic batch of the given shape, against ``candidate_loglikelihoods`` on the logits of that
batch's forward pass. Medians over ``--repeats`` after one warm-up. On CUDA both re-scoring
paths are measured: the eager loop over candidates and the fused ``torch.compile`` kernel
(what ``temperature.tampo.rescore_fused`` selects, the default).

    python benchmarks/tampo_rescoring.py                      # tiny model, CPU
    python benchmarks/tampo_rescoring.py --device cuda --preset 1.5b --out results_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from thermorl.algorithms.tampo import candidate_loglikelihoods

CANDIDATES = [0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5]
PRESETS = {  # model and batch shapes of the timing part
    "tiny": dict(hidden=128, layers=4, heads=4, kv_heads=4, ffn=384, vocab=100, rows=128, prompt=16, completion=24),
    "1.5b": dict(  # Qwen2.5-1.5B shapes, random weights
        hidden=1536, layers=28, heads=12, kv_heads=2, ffn=8960, vocab=151936, rows=8, prompt=128, completion=1024
    ),
}


# --------------------------------------------------------------------------- memory


def _resident_bytes(key: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) * 1024


def peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak memory above what was held before ``fn`` ran (CPU: call inside ``memory_child``)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
    before = _resident_bytes("VmRSS")
    fn()
    return _resident_bytes("VmHWM") - before


def naive_candidate_loglikelihoods(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                                   candidates: torch.Tensor) -> torch.Tensor:
    """``candidate_loglikelihoods`` the textbook way: all K tempered log-softmaxes at once, (K, N, T, V)."""
    tempered = logits.new_empty(len(candidates), *logits.shape)
    for k, temperature in enumerate(candidates.tolist()):
        tempered[k] = torch.log_softmax(logits / temperature, dim=-1)
    index = tokens.expand(len(candidates), *tokens.shape).unsqueeze(-1)
    chosen = tempered.gather(-1, index).squeeze(-1)  # (K, N, T)
    return ((chosen * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)).T  # (N, K)


def memory_child(tokens: int, vocab: int, num_candidates: int, chunk: int, device: str,
                 naive_candidates: int = 0) -> dict:
    """Peak extra bytes of one log_softmax pass, of the chunked re-scoring, and optionally of the
    naive re-scoring at ``naive_candidates`` candidates."""
    torch.manual_seed(0)
    dev = torch.device(device)
    rows = 4
    logits = torch.randn(rows, tokens // rows, vocab, device=dev)
    ids = torch.randint(0, vocab, (rows, tokens // rows), device=dev)
    mask = torch.ones(rows, tokens // rows, device=dev)
    candidates = torch.linspace(0.6, 1.5, num_candidates)
    result = {
        "one_pass_bytes": peak_extra_bytes(lambda: torch.log_softmax(logits, dim=-1), dev),
        "rescoring_bytes": peak_extra_bytes(
            lambda: candidate_loglikelihoods(logits, ids, mask, candidates, chunk), dev
        ),
        "logits_bytes": logits.numel() * logits.element_size(),
    }
    if dev.type == "cuda":
        candidate_loglikelihoods(logits, ids, mask, candidates, chunk, fused=True)  # compile outside the meter
        result["fused_rescoring_bytes"] = peak_extra_bytes(
            lambda: candidate_loglikelihoods(logits, ids, mask, candidates, chunk, fused=True), dev
        )
    if naive_candidates:
        naive = torch.linspace(0.6, 1.5, naive_candidates)
        result["naive_bytes"] = peak_extra_bytes(lambda: naive_candidate_loglikelihoods(logits, ids, mask, naive), dev)
    return result


def measure_memory(
    tokens: int = 1024, vocab: int = 32_000, num_candidates: int = 10, chunk: int = 256, device: str = "cpu",
    naive_candidates: int = 0,
) -> dict:
    """``memory_child`` in a fresh process on CPU (see the module docstring), in this one on CUDA."""
    if device.startswith("cuda"):
        result = memory_child(tokens, vocab, num_candidates, chunk, device, naive_candidates)
    else:
        command = [
            sys.executable, __file__, "--memory-child", "--tokens", str(tokens), "--vocab", str(vocab),
            "--num-candidates", str(num_candidates), "--chunk", str(chunk),
            "--naive-candidates", str(naive_candidates),
        ]
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "OMP_NUM_THREADS": "1"}
        completed = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        result = json.loads(completed.stdout.strip().splitlines()[-1])
    result["ratio_to_one_pass"] = result["rescoring_bytes"] / result["one_pass_bytes"]
    if naive_candidates:
        extra = max(num_candidates - naive_candidates, 0) * result["logits_bytes"]  # one (N, T, V) per candidate
        result["naive_bytes_at_num_candidates"] = result["naive_bytes"] + extra
        result["naive_to_rescoring"] = result["naive_bytes_at_num_candidates"] / result["rescoring_bytes"]
    result.update(tokens=tokens, vocab=vocab, num_candidates=num_candidates, chunk_tokens=chunk, device=device,
                  naive_candidates=naive_candidates)
    return result


# --------------------------------------------------------------------------- time


def _timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after one warm-up."""
    times = []
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def measure_time(preset: str = "tiny", device: str = "cpu", dtype: str = "float32", chunk: int = 256,
                 repeats: int = 3) -> dict:
    """Seconds of one GRPO update and of re-scoring its batch at every candidate."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from thermorl.config import Config
    from thermorl.engines.base import RolloutBatch
    from thermorl.engines.hf import HFEngine
    from thermorl.runtime.forward import score
    from thermorl.models.policy import Policy
    from thermorl.runtime.components import Components
    from thermorl.runtime.update import grpo_update
    from thermorl.temperature import ControllerEnv
    from thermorl.temperature.fixed import FixedConfig, FixedController

    shape = PRESETS[preset]
    dev = torch.device(device)
    torch.manual_seed(0)
    model_config = LlamaConfig(
        vocab_size=shape["vocab"], hidden_size=shape["hidden"], intermediate_size=shape["ffn"],
        num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"], max_position_embeddings=shape["prompt"] + shape["completion"],
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(model_config).to(device=dev, dtype=getattr(torch, dtype)).train()
    policy = Policy(model, tokenizer=None)
    rows, prompt, completion = shape["rows"], shape["prompt"], shape["completion"]
    prompt_ids = torch.randint(3, shape["vocab"], (rows, prompt), device=dev)
    completion_ids = torch.randint(3, shape["vocab"], (rows, completion), device=dev)
    ones = torch.ones(rows, completion, device=dev)  # mask, temperatures, placeholder log-probs and entropies
    group_ids = torch.arange(rows, device=dev)
    batch = RolloutBatch(prompt_ids, torch.ones_like(prompt_ids), completion_ids, ones, ones, ones, ones, group_ids)
    with torch.no_grad():
        batch.logprobs = score(policy, batch).logprobs  # pi_old = the current policy
    advantages = torch.randn(rows, device=dev)
    config = Config()
    controller = FixedController(FixedConfig(), ControllerEnv(shape["hidden"], 1, dev))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    components = Components(policy, None, None, controller, optimizer, None, HFEngine(policy, config.rollout))
    generator = torch.Generator().manual_seed(0)
    update_s = _timed(lambda: grpo_update(components, config, batch, advantages, 1, generator), dev, repeats)

    with torch.no_grad():
        logits = score(policy, batch).logits
    candidates = torch.tensor(CANDIDATES)
    result = {
        "preset": preset, "device": device, "dtype": dtype, "rows": rows, "completion_tokens": completion,
        "vocab": shape["vocab"], "chunk_tokens": chunk, "grpo_update_s": update_s,
    }
    for path in ["eager", "fused"] if dev.type == "cuda" else ["eager"]:
        seconds = _timed(
            lambda: candidate_loglikelihoods(
                logits, batch.completion_ids, batch.completion_mask, candidates, chunk, fused=path == "fused"
            ),
            dev, repeats,
        )
        result[f"rescoring_{path}_s"] = seconds
        result[f"fraction_of_update_{path}"] = seconds / update_s
    return result


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="model/batch shapes for timing")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--tokens", type=int, default=1024, help="re-scored tokens (memory part)")
    parser.add_argument("--vocab", type=int, default=32_000, help="vocabulary (memory part)")
    parser.add_argument("--num-candidates", type=int, default=len(CANDIDATES))
    parser.add_argument("--chunk", type=int, default=256, help="candidate_loglikelihoods chunk_tokens")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-candidates", type=int, default=0,
                        help="also measure the naive (K', N, T, V) re-scoring at this many candidates")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results_tampo.json"))
    args = parser.parse_args()
    if args.memory_child:
        print(json.dumps(memory_child(args.tokens, args.vocab, args.num_candidates, args.chunk, "cpu",
                                      args.naive_candidates)))
        return

    memory = measure_memory(args.tokens, args.vocab, args.num_candidates, args.chunk, args.device,
                            args.naive_candidates)
    timing = measure_time(args.preset, args.device, args.dtype, args.chunk, args.repeats)
    mib = 2**20
    print(f"memory  K={memory['num_candidates']} V={memory['vocab']} tokens={memory['tokens']} ({memory['device']})")
    print(f"  one log_softmax pass  {memory['one_pass_bytes'] / mib:9.1f} MiB")
    print(f"  chunked re-scoring    {memory['rescoring_bytes'] / mib:9.1f} MiB   "
          f"ratio {memory['ratio_to_one_pass']:.3f} (goal < 2)")
    if "fused_rescoring_bytes" in memory:
        print(f"  fused re-scoring      {memory['fused_rescoring_bytes'] / mib:9.1f} MiB")
    if "naive_bytes" in memory:
        print(f"  naive K'={memory['naive_candidates']} (K',N,T,V)  {memory['naive_bytes'] / mib:9.1f} MiB measured, "
              f"{memory['naive_bytes_at_num_candidates'] / mib:.1f} MiB at K={memory['num_candidates']}")
    print(f"time    preset={timing['preset']} ({timing['device']}, {timing['dtype']}) rows={timing['rows']} "
          f"tokens={timing['completion_tokens']} V={timing['vocab']}")
    print(f"  GRPO update (fwd+bwd+step) {timing['grpo_update_s'] * 1e3:9.2f} ms")
    for path in ["eager", "fused"]:
        if f"rescoring_{path}_s" in timing:
            print(f"  re-scoring at K={len(CANDIDATES)}, {path:5}  {timing[f'rescoring_{path}_s'] * 1e3:9.2f} ms   "
                  f"fraction {timing[f'fraction_of_update_{path}']:.3f} (goal <= 0.10)")
    args.out.write_text(json.dumps({"memory": memory, "time": timing}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
