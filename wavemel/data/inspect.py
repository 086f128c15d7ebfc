"""Dataset report behind ``wavemel data inspect``: counts, durations, labels and problems.

Durations come from file headers (``audio_info``), never from decoding, so a report on the full
FSDKaggle2018 takes seconds.
"""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from wavemel._paths import display_path
from wavemel.audio import audio_info
from wavemel.data.records import DatasetIndex, Problem
from wavemel.errors import AudioError

__all__ = ["inspect_dataset", "format_report"]


def inspect_dataset(index: DatasetIndex, *, durations: bool = True) -> dict[str, Any]:
    """Summarise a loaded dataset as a JSON-able dict.

    Args:
        index: The dataset, from :func:`~wavemel.data.adapters.load_dataset`.
        durations: Read every file's header for duration and sample-rate statistics. Files that
            cannot be read are added to ``problems`` as ``unreadable``.

    Returns:
        A dict with keys ``format``, ``root``, ``clips`` ({split: n, "total": n}), ``labelled``
        ({split: n}), ``classes`` (count), ``labels``, ``per_class`` ({label: {split: n}}),
        ``durations`` ({split: {n, min, median, mean, max, total}} in seconds, or ``None``),
        ``sample_rates`` ({split: {rate: n}}), ``verified`` ({split: {verified, known, ratio}}),
        ``verified_ratio`` (over all clips whose flag is known, else ``None``), ``usage``
        ({split: {usage: n}}), ``groups`` ({"count", "per_group"} or ``None``), ``problems``
        (list of {path, kind, message}) and ``problem_counts`` ({kind: n}).
    """
    splits = index.splits
    by_split = {name: index.split(name) for name in splits}
    problems = list(index.problems)

    per_class: dict[str, dict[str, int]] = {
        label: dict.fromkeys(splits, 0) for label in index.labels
    }
    for record in index.records:
        for label in record.labels:
            per_class.setdefault(label, dict.fromkeys(splits, 0))[record.split] += 1

    verified: dict[str, dict[str, Any]] = {}
    for name, records in by_split.items():
        known = [r.manually_verified for r in records if r.manually_verified is not None]
        if known:
            count = sum(known)
            verified[name] = {"verified": count, "known": len(known), "ratio": count / len(known)}
    n_known = sum(v["known"] for v in verified.values())
    verified_ratio = sum(v["verified"] for v in verified.values()) / n_known if n_known else None

    usage = {}
    for name, records in by_split.items():
        counts = Counter(r.usage for r in records if r.usage is not None)
        if counts:
            usage[name] = dict(sorted(counts.items()))

    groups = None
    group_counts = Counter(r.group for r in index.records if r.group is not None)
    if group_counts:
        groups = {"count": len(group_counts), "per_group": dict(sorted(group_counts.items()))}

    duration_stats = None
    sample_rates: dict[str, dict[int, int]] = {}
    if durations:
        duration_stats, sample_rates = _durations(by_split, problems)

    return {
        "format": index.format,
        "root": display_path(index.root),
        "clips": {
            **{name: len(records) for name, records in by_split.items()},
            "total": len(index.records),
        },
        "labelled": {
            name: sum(1 for r in records if r.labels) for name, records in by_split.items()
        },
        "classes": len(index.labels),
        "labels": list(index.labels),
        "per_class": per_class,
        "durations": duration_stats,
        "sample_rates": sample_rates,
        "verified": verified,
        "verified_ratio": verified_ratio,
        "usage": usage,
        "groups": groups,
        "problems": [p.to_dict() for p in problems],
        "problem_counts": dict(sorted(Counter(p.kind for p in problems).items())),
    }


def _durations(by_split, problems: list[Problem]):
    reported = {p.path for p in problems if p.kind in ("unreadable", "missing", "not_a_file")}
    stats = {}
    rates: dict[str, dict[int, int]] = {}
    for name, records in by_split.items():
        seconds = []
        rate_counts: Counter[int] = Counter()
        for record in records:
            try:
                info = audio_info(record.path)
            except AudioError as exc:
                if record.path not in reported:
                    reported.add(record.path)
                    reason = str(exc).removeprefix(f"{display_path(record.path)}: ")
                    problems.append(Problem(record.path, "unreadable", reason))
                continue
            seconds.append(info.duration)
            rate_counts[info.sample_rate] += 1
        if seconds:
            stats[name] = {
                "n": len(seconds),
                "min": min(seconds),
                "median": statistics.median(seconds),
                "mean": statistics.fmean(seconds),
                "max": max(seconds),
                "total": sum(seconds),
            }
        rates[name] = {rate: n for rate, n in sorted(rate_counts.items())}
    return stats, rates


def format_report(report: dict[str, Any], *, max_problems: int = 20) -> str:
    """Human-readable text of an :func:`inspect_dataset` report."""
    splits = [name for name in report["clips"] if name != "total"]
    lines = [f"dataset   {report['root']}", f"format    {report['format']}"]
    per_split = ", ".join(f"{name} {report['clips'][name]}" for name in splits)
    lines.append(f"clips     {report['clips']['total']}" + (f" ({per_split})" if splits else ""))
    if splits:
        labelled = ", ".join(f"{name} {report['labelled'][name]}" for name in splits)
        lines.append(f"labelled  {labelled}")
    lines.append(f"classes   {report['classes']}")
    for name, v in report["verified"].items():
        lines.append(f"verified  {name}: {v['verified']} of {v['known']} ({100 * v['ratio']:.1f}%)")
    for name, counts in report["usage"].items():
        lines.append(f"usage     {name}: " + ", ".join(f"{k} {n}" for k, n in counts.items()))
    if report["groups"]:
        per_group = ", ".join(f"{g} {n}" for g, n in report["groups"]["per_group"].items())
        lines.append(f"groups    {report['groups']['count']}: {per_group}")
    if report["durations"]:
        lines.append("")
        lines.append("durations (s)  " + _row(["n", "min", "median", "mean", "max", "total"]))
        for name, d in report["durations"].items():
            values = [str(d["n"])] + [
                f"{d[key]:.2f}" for key in ("min", "median", "mean", "max", "total")
            ]
            lines.append(f"  {name:<12} " + _row(values))
        for name, rates in report["sample_rates"].items():
            if rates:
                lines.append(
                    f"  sample rates {name}: " + ", ".join(f"{r} Hz x{n}" for r, n in rates.items())
                )
    if report["per_class"] and splits:
        lines.append("")
        width = max(12, *(len(label) for label in report["per_class"]))
        lines.append(f"{'class':<{width}} " + _row(splits))
        for label, counts in report["per_class"].items():
            lines.append(f"{label:<{width}} " + _row([str(counts.get(s, 0)) for s in splits]))
    lines.append("")
    problems = report["problems"]
    if not problems:
        lines.append("problems  none")
    else:
        kinds = ", ".join(f"{kind} {n}" for kind, n in report["problem_counts"].items())
        lines.append(f"problems  {len(problems)} ({kinds})")
        for p in problems[:max_problems]:
            lines.append(f"  [{p['kind']}] {p['path']}: {p['message']}")
        if len(problems) > max_problems:
            lines.append(f"  ... {len(problems) - max_problems} more (use --json for all)")
    return "\n".join(lines)


def _row(cells: list[str]) -> str:
    return " ".join(f"{cell:>8}" for cell in cells)
