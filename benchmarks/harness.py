"""The benchmark harness: the model/task set-ups the benchmarks run on, clocks, interleaved pairs, machine info.

Every ratio is measured side by side in one process: the contenders alternate (A B, B A, A B, ...)
after a warm-up, and the headline is the median over pairs of the per-pair ratio, so slow phases
of a shared machine hit both sides of a pair alike. On CPU the headline clock is the process's CPU
time (one torch thread): wall time on a shared machine mostly measures the other tenants. On CUDA it
is synchronised wall time. Both clocks are always recorded.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import random
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from thermorl.models.policy import Policy
from thermorl.tasks.countdown import Countdown

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Preset:
    """A model and the batch shape of one GRPO step."""

    description: str
    prompts_per_step: int
    group_size: int
    max_new_tokens: int
    model: dict[str, int] | None = None  # a random-init Qwen2 config; None = the shipped tiny model
    dtype: str = "float32"
    mean_length: int = 0  # random models: EOS bias giving completions of about this mean length


PRESETS = {
    "tiny": Preset("the shipped warm-started tiny Llama (0.87M parameters), float32", 16, 8, 24),
    "qwen2-1.5b": Preset(
        "random-init Qwen2-1.5B config (hidden 1536, 28 layers, 12 heads, 2 kv heads, ffn 8960, vocab 151936), bf16",
        4, 8, 256,  # 32 rows: float32 logits of a training pass are 32 x 268 x 151936 x 4 B = 5.2 GB
        model={"hidden": 1536, "layers": 28, "heads": 12, "kv_heads": 2, "ffn": 8960, "vocab": 151936},
        dtype="bfloat16", mean_length=128,
    ),
    "qwen2-smoke": Preset(  # the qwen2-1.5b code path at toy sizes: a CPU smoke test of the GPU script
        "random-init Qwen2 at toy sizes (hidden 64, 2 layers, vocab 8192), bf16", 4, 4, 32,
        model={"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "ffn": 128, "vocab": 8192},
        dtype="bfloat16", mean_length=16,
    ),
}


@dataclass
class Setup:
    """A policy, the countdown task and the batch shape every benchmark of a run shares."""

    name: str
    preset: Preset
    policy: Policy
    task: Countdown

    @property
    def device(self) -> torch.device:
        return self.policy.device

    @property
    def rows(self) -> int:
        return self.preset.prompts_per_step * self.preset.group_size

    def problems(self, steps: int, seed: int = 0) -> list:
        """``steps`` x prompts_per_step training problems (distinct prompts per step)."""
        return self.task.train_problems(random.Random(seed), steps * self.preset.prompts_per_step)


def build_setup(preset_name: str, device: str = "cpu") -> Setup:
    """The shipped tiny model, or a random-init Qwen2 built from its config on ``device`` (no download)."""
    from thermorl.config import load_config
    from thermorl.models.policy import load_policy
    from thermorl.tasks import build_task

    preset = PRESETS[preset_name]
    config = load_config(None, [f"model.device={device}", f"model.dtype={preset.dtype}"])
    task = build_task(config.task)
    if preset.model is None:
        policy = load_policy(config.model)
    else:
        policy = _random_qwen2(preset, torch.device(device))
        _raise_eos(policy, task, preset)
    policy.model.eval()
    return Setup(preset_name, preset, policy, task)


def _random_qwen2(preset: Preset, device: torch.device) -> Policy:
    from transformers import AutoModelForCausalLM, Qwen2Config

    from thermorl.models.tiny import build_char_tokenizer

    shape = preset.model
    tokenizer = build_char_tokenizer()  # ids < 100; the model's extra ids decode to nothing
    config = Qwen2Config(
        vocab_size=shape["vocab"], hidden_size=shape["hidden"], intermediate_size=shape["ffn"],
        num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
        max_position_embeddings=4096, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with device:  # initialise on the accelerator: a 1.5B model initialised on CPU takes minutes
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, preset.dtype))
    return Policy(model, tokenizer)


@torch.no_grad()
def _raise_eos(policy: Policy, task: Countdown, preset: Preset) -> None:
    """Give the output layer a frozen bias on EOS so a random model stops after about
    ``preset.mean_length`` tokens (geometric lengths: rows finish at different times)."""
    from thermorl.engines.base import positions_from_mask
    from thermorl.engines.hf import encode_prompts

    ids, mask = encode_prompts(policy, [p.prompt for p in task.train_problems(random.Random(99), 16)])
    hidden, _ = policy.hidden(ids, mask, positions_from_mask(mask))
    log_normaliser = torch.logsumexp(policy.logits(hidden[:, -1]), dim=-1).mean().item()
    head = policy.model.get_output_embeddings()
    biased = nn.Linear(head.in_features, head.out_features, bias=True, device=head.weight.device,
                       dtype=head.weight.dtype)
    biased.weight = head.weight  # the same (tied) parameter
    biased.bias.zero_()
    biased.bias[policy.tokenizer.eos_token_id] = log_normaliser - math.log(preset.mean_length - 1)
    biased.bias.requires_grad_(False)
    policy.model.set_output_embeddings(biased)


# --------------------------------------------------------------------------- clocks and pairs


@dataclass
class Timing:
    """One timed call: its result, CPU seconds of this process, wall seconds."""

    result: Any
    cpu_s: float
    wall_s: float

    def seconds(self, clock: str) -> float:
        return self.cpu_s if clock == "cpu" else self.wall_s


def timed(fn: Callable[[], Any], device: torch.device) -> Timing:
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn()
    if cuda:
        torch.cuda.synchronize(device)
    return Timing(result, time.process_time() - cpu, time.perf_counter() - wall)


def headline_clock(device: torch.device) -> str:
    return "wall" if device.type == "cuda" else "cpu"


def interleaved(contenders: dict[str, Callable[[int], Timing]], repeats: int, warmup: int) -> dict[str, list[Timing]]:
    """``warmup`` untimed rounds, then ``repeats`` rounds in alternating order; call i gets seed i."""
    for round_ in range(warmup):
        for run in contenders.values():
            run(10_000 + round_)
    timings: dict[str, list[Timing]] = {name: [] for name in contenders}
    for round_ in range(repeats):
        names = list(contenders) if round_ % 2 == 0 else list(reversed(contenders))
        for name in names:
            timings[name].append(contenders[name](round_))
    return timings


def median(values: list[float]) -> float:
    return statistics.median(values)


def verdict(value: float, goal: float, higher_is_better: bool) -> str:
    return "PASS" if (value >= goal if higher_is_better else value <= goal) else "MISS"


# --------------------------------------------------------------------------- machine


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    import transformers

    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": _cpu_model(),
        "load_average_at_start": list(os.getloadavg()),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }
    try:
        import trl

        info["trl"] = trl.__version__
    except ImportError:
        info["trl"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def script_arguments(doc: str, default_out: Path, extra: Callable[[argparse.ArgumentParser], None]) -> argparse.Namespace:
    """The command line every benchmark script shares (device, preset, threads, out) plus its own options;
    applies --threads."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    extra(parser)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def write_result(result: dict, text: str, out: Path) -> None:
    print(text)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def ratio_fields(paired: Callable[[str], list[float]], clock: str, goal: float) -> dict[str, Any]:
    """The headline of a speed comparison: the median paired ratio on ``clock`` (our speed-up, higher
    is better), the same on wall time, every pair's ratio, the goal and the verdict."""
    ratio = median(paired(clock))
    return {
        "ratio": ratio,
        "ratio_wall": median(paired("wall")),
        "paired_ratios": [round(r, 4) for r in paired(clock)],
        "goal": goal, "verdict": verdict(ratio, goal, higher_is_better=True),
    }
