"""Wall time and MAP@3 of one ``wavemel reproduce`` study with a candidate recipe, for sizing.

Runs the cpu preset (or another) with overrides that ``wavemel reproduce`` has no flag for, such
as bfloat16 CPU training steps (``--cpu-amp``, ``TrainConfig.cpu_amp``), and prints the wall
time, the user CPU time and Table 1's test MAP@3 per model and length, so that a candidate can be
set side by side with the preset's own run before the preset is changed. Thread choice as the
``wavemel`` command makes it (``configure_threads`` before torch loads). Run on idle cores::

    python benchmarks/study_wall_time.py --data ../shared/data/fsdk18-mini \\
        --out /tmp/study-bf16 --seeds 0 --epochs 24 --val-every 2 --cpu-amp
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True, help="study folder (made by the run)")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--val-every", type=int)
    parser.add_argument("--cpu-amp", action="store_true", help="bfloat16 CPU training steps")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from wavemel._threads import configure_threads

    plan = configure_threads()  # before torch loads, as the CLI does
    from wavemel.study import presets
    from wavemel.study.grid import reproduce

    base = presets.PRESETS[args.preset]
    recipe = {key: dict(value) for key, value in base.recipe.items()}
    if args.cpu_amp:
        for network in ("branches", "cnn-comb"):
            recipe.setdefault(network, {})["cpu_amp"] = True
    presets.PRESETS[args.preset] = replace(base, recipe=recipe)
    config = presets.StudyConfig(
        data=args.data,
        out=args.out,
        preset=args.preset,
        seeds=tuple(args.seeds),
        epochs=args.epochs,
        val_every=args.val_every,
    )
    command = " ".join(["python", "benchmarks/study_wall_time.py", *sys.argv[1:]])
    started, cpu_before = time.perf_counter(), os.times()
    reproduce(config, command=command)
    wall = time.perf_counter() - started
    cpu = os.times()
    user = (cpu.user - cpu_before.user) + (cpu.children_user - cpu_before.children_user)
    results = json.loads((Path(args.out) / "results.json").read_text())
    print(f"\n# {command}\n# threads: {plan.reason}; recipe {recipe or 'none'}")
    print(f"wall {wall / 60:.2f} min, user {user / 60:.2f} min")
    print(f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print("| model | input | test MAP@3 |\n|---|---|---:|")
    for row in results["table1"]:
        length = f"{row['input_seconds']:g} s" if row["input_seconds"] else "whole clip"
        print(f"| {row['model']} | {length} | {row['map3']['mean']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
