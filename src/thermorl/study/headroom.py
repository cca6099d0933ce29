"""Where a per-token temperature can pay: the headroom of a testbed, from a ``thermorl compare`` study.

A testbed has headroom when the temperature matters (the spread among fixed temperatures) and a
per-class split beats the best single one (the best ``by_class`` arm against the best fixed arm,
paired by seed). ``class_temperatures`` reads, from a run's logged samples, the mean temperature each
token class of the task ended with (the oracle's split beside what a learned policy found).

``python -m thermorl.study.headroom STUDY_DIR... [--doc FILE]`` writes the map of several studies
(one per testbed) as one table, into FILE's ``<!-- compare:headroom:begin/end -->`` block.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from thermorl.study import stats
from thermorl.tasks.base import TokenClassRule


def completion_pieces(row: dict) -> list[str] | None:
    """The text of each token of a logged sample, for the character-level tiny tokenizer (one character per
    token, plus the end token when the row ended); None when the lengths do not agree (another tokenizer)."""
    pieces = list(row["completion"])
    if row.get("classes") and row["classes"][-1] == "end":
        pieces.append("")
    return pieces if len(pieces) == len(row["temperatures"]) else None


def class_temperatures(samples: list[dict], rule: TokenClassRule, last: int = 50) -> dict[str, float]:
    """Task class -> mean sampling temperature of its logged tokens over the last ``last`` steps."""
    if not samples:
        return {}
    final = max(row["step"] for row in samples)
    sums: dict[str, list[float]] = {}
    for row in samples:
        pieces = completion_pieces(row) if row["step"] > final - last else None
        if pieces is None:
            continue
        for t, tau in enumerate(row["temperatures"]):
            entry = sums.setdefault(rule.classify("".join(pieces[:t])), [0.0, 0])
            entry[0] += tau
            entry[1] += 1
    return {name: total / count for name, (total, count) in sorted(sums.items())}


def headroom(table: dict, labels: list[str], seeds: int) -> dict | None:
    """Best by_class arm vs best fixed arm (paired), the spread among fixed arms, and the seeds a 3-point
    resolution of that comparison would need; None without complete fixed and by_class arms."""
    def complete(prefix: str) -> list[str]:
        return [a for a in labels if a.startswith(prefix) and len(table[a].get("seeds", [])) == seeds
                and "final_eval_accuracy" in table[a]]

    fixed, by_class = complete("fixed:"), complete("by_class")
    if not fixed or not by_class:
        return None
    mean = {a: table[a]["final_eval_accuracy"]["mean"] for a in fixed + by_class}
    best_fixed, best_class = max(fixed, key=mean.get), max(by_class, key=mean.get)
    a, b = table[best_class]["final_eval_accuracy"]["values"], table[best_fixed]["final_eval_accuracy"]["values"]
    result = {
        "best_fixed": best_fixed, "best_fixed_accuracy": mean[best_fixed],
        "best_by_class": best_class, "best_by_class_accuracy": mean[best_class],
        "fixed_spread": max(mean[f] for f in fixed) - min(mean[f] for f in fixed),
        "worst_fixed": min(fixed, key=mean.get),
    }
    if seeds >= 2:
        paired = stats.paired_test(a, b)
        diffs_sd = stats.sd([x - y for x, y in zip(a, b)])
        result.update(paired=paired, diffs_sd=diffs_sd, seeds_for_3_points=stats.seeds_for_resolution(diffs_sd, 0.03))
    return result


def headroom_line(h: dict) -> str:
    line = (f"Headroom: best by_class `{h['best_by_class']}` {h['best_by_class_accuracy']:.3f} vs best fixed "
            f"`{h['best_fixed']}` {h['best_fixed_accuracy']:.3f}")
    if "paired" in h:
        p = h["paired"]
        line += (f": paired difference {p['mean_difference']:+.3f} +- {p['ci95']:.3f} (p {p['p_value']:.2g}, "
                 f"n = {p['n']}); a 3-point resolution of this pair needs "
                 f"{h['seeds_for_3_points'] or '> 10000'} seeds (s_d {h['diffs_sd']:.3f})")
    return line + f". Spread among fixed temperatures: {h['fixed_spread']:.3f} ({h['worst_fixed']} lowest)."


def map_table(studies: list[tuple[str, dict]]) -> str:
    """One row per testbed: its best fixed and best by_class arms and their paired difference."""
    lines = [
        "| testbed | seeds | held-out | warm start | fixed arms: spread | best fixed | best by_class | "
        "by_class - fixed (paired, 95% CI) | seeds for 3 points |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, result in studies:
        h = result.get("headroom")
        if not h:
            lines.append(f"| {name} | {result['seeds']} | {result['eval_problems']} | "
                         f"{result['warm_start_accuracy']:.3f} | - | - | - | incomplete | - |")
            continue
        p = h.get("paired")
        diff = f"{p['mean_difference']:+.3f} +- {p['ci95']:.3f} (p {p['p_value']:.2g})" if p else "-"
        lines.append(
            f"| {name} | {result['seeds']} | {result['eval_problems']} | {result['warm_start_accuracy']:.3f} | "
            f"{h['fixed_spread']:.3f} | `{h['best_fixed']}` {h['best_fixed_accuracy']:.3f} | "
            f"`{h['best_by_class']}` {h['best_by_class_accuracy']:.3f} | {diff} | {h.get('seeds_for_3_points', '-')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m thermorl.study.headroom", description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", nargs="+", help="NAME=STUDY_DIR: a finished or running `thermorl compare` --out")
    parser.add_argument("--doc", type=Path, help="write the table into this file's compare:headroom block")
    args = parser.parse_args(argv)
    studies = []
    for item in args.studies:
        name, _, directory = item.rpartition("=")
        path = Path(directory) / "compare.json"
        if not path.is_file():
            print(f"error: {path} does not exist (run thermorl compare first)", file=sys.stderr)
            return 1
        studies.append((name or directory, json.loads(path.read_text())))
    text = map_table(studies)
    if args.doc is not None:
        from thermorl.study.compare import replace_block

        replace_block(args.doc, "headroom", f"Generated by `python -m thermorl.study.headroom "
                      f"{' '.join(args.studies)} --doc {args.doc}`.\n\n{text}")
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
