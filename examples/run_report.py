"""Before/after numbers of one finished run, as docs/SMOLLM2.md reports them: held-out greedy accuracy and
avg@k at the first and last evaluation with 95% intervals, their paired gain over the same problems, the
training reward's trend, the wall time and where a step's time went.

    python examples/run_report.py runs/smollm2            # prints markdown, writes runs/smollm2/report.json

Reads only the run directory: metrics.jsonl, eval_problems.jsonl (every evaluation's per-problem scores),
summary.json and, for controllers with a temperature report, temperature_summary.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from thermorl.runtime.tracking import read_jsonl
from thermorl.study.stats import mean_ci, paired_gain, wilson_interval

PARTS = ("step_time_rollout_s", "step_time_update_s", "step_time_sync_s")


def report(run: Path) -> dict:
    """The run's before/after numbers (see the module docstring)."""
    metrics = read_jsonl(run / "metrics.jsonl")
    evaluations = read_jsonl(run / "eval_problems.jsonl")
    if len(evaluations) < 2:
        raise SystemExit(f"{run}: eval_problems.jsonl has {len(evaluations)} evaluation(s); a report needs two")
    first, last = evaluations[0], evaluations[-1]
    out: dict = {"run": str(run), "first_step": first["step"], "last_step": last["step"]}
    for name in ("greedy", "avg_at_k"):
        before, after = first[name], last[name]
        if name == "greedy":
            scores = {"before": wilson_interval(int(sum(before)), len(before)),
                      "after": wilson_interval(int(sum(after)), len(after))}
        else:  # a mean over problems of k-sample means: t interval over problems
            scores = {label: tuple(m + s * h for s in (-1, 1)) for label, (m, h) in
                      (("before", mean_ci(before)), ("after", mean_ci(after)))}
        out[name] = {
            "problems": len(before), "before": sum(before) / len(before), "after": sum(after) / len(after),
            "before_ci95": scores["before"], "after_ci95": scores["after"], "paired_gain": paired_gain(before, after),
        }
    steps = [row for row in metrics if "reward_mean" in row]
    fifth = max(1, len(steps) // 5)
    out["training_reward"] = {
        "first_fifth": sum(r["reward_mean"] for r in steps[:fifth]) / fifth,
        "last_fifth": sum(r["reward_mean"] for r in steps[-fifth:]) / fifth,
        "steps": len(steps),
    }
    out["step_costs_s"] = {
        part: sum(r.get(part, 0.0) for r in steps) / len(steps) for part in ("step_time_s", *PARTS)
    }
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    out["wall_time_s"], out["train_time_s"] = summary.get("wall_time_s"), summary.get("train_time_s")
    if (run / "temperature_summary.json").is_file():
        out["temperature_by_class"] = json.loads((run / "temperature_summary.json").read_text())
    return out


def markdown(result: dict) -> str:
    """The report as markdown tables."""
    lines = [f"Run `{result['run']}`: step {result['first_step']} -> step {result['last_step']}.", "",
             "| held-out metric | problems | before (95% CI) | after (95% CI) | paired gain (95% CI) | improved / worsened |",
             "|---|---|---|---|---|---|"]
    for name, label in (("greedy", "greedy accuracy"), ("avg_at_k", "avg@k")):
        r = result[name]
        gain = r["paired_gain"]
        lines.append(
            f"| {label} | {r['problems']} | {r['before']:.3f} [{r['before_ci95'][0]:.3f}, {r['before_ci95'][1]:.3f}] "
            f"| {r['after']:.3f} [{r['after_ci95'][0]:.3f}, {r['after_ci95'][1]:.3f}] "
            f"| {gain['gain']:+.3f} [{gain['low']:+.3f}, {gain['high']:+.3f}] | {gain['improved']} / {gain['worsened']} |"
        )
    reward, costs = result["training_reward"], result["step_costs_s"]
    lines += ["", f"Training reward: {reward['first_fifth']:.3f} over the first fifth of {reward['steps']} steps, "
              f"{reward['last_fifth']:.3f} over the last fifth.", "",
              "| per step (mean s) | whole step | rollout + reward | update | weight sync |", "|---|---|---|---|---|",
              "| | " + " | ".join(f"{costs[k]:.1f}" for k in ("step_time_s", *PARTS)) + " |"]
    if result.get("wall_time_s") is not None:
        lines.append(f"\nWall time {result['wall_time_s'] / 60:.1f} min, of which training steps "
                     f"{result['train_time_s'] / 60:.1f} min (the rest: model load, evaluations, reports).")
    if "temperature_by_class" in result:
        lines += ["", "| token class | mean temperature | std | tokens |", "|---|---|---|---|"]
        lines += [f"| {cls} | {s['mean']:.3f} | {s['std']:.3f} | {s['count']} |"
                  for cls, s in result["temperature_by_class"].items()]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python examples/run_report.py RUN_DIRECTORY")
    run = Path(sys.argv[1])
    result = report(run)
    (run / "report.json").write_text(json.dumps(result, indent=2))
    print(markdown(result))


if __name__ == "__main__":
    main()
