"""Training throughput on a shared CPU: each OpenMP wait policy idle and beside busy processes.

Run from the repository root, on a machine nobody else is using (other load skews every row)::

    python benchmarks/contention.py                                   # all policies, 0/1/2 rivals
    python benchmarks/contention.py --policies default wavemel --competitors 0 1 --budget 4

Each row times training steps (the step of ``benchmarks/models.py``'s table (b): forward +
backward + SGD step, 16 kHz, batch 8) for ``--budget`` seconds in a fresh Python process, because
OpenMP reads its wait policy once, when torch loads it; clips/s is all clips over all that time,
so a slow start counts. "Rivals" are single-threaded busy loops in their own processes (each also
ends itself after ``--rival-limit`` seconds, so none outlives a killed benchmark for long). With
``--arrival start`` they run before the timed process starts (it sees them when it chooses its
threads); with ``late`` the timed process starts on an idle machine and they start after its
warm-up step, the case a thread count fixed at start-up gets wrong. The table gives clips/s, the
share of the same policy's idle throughput and the share of the ``default`` policy's idle
throughput (what torch gives without any setting).

Policies (environment of the timed process; inherited OMP_* / GOMP_* / KMP_* settings removed):

- ``default``: nothing set (libgomp spins 300,000 rounds before sleeping).
- ``passive``: ``OMP_WAIT_POLICY=PASSIVE`` (sleep at once).
- ``spin-N``: ``GOMP_SPINCOUNT=N`` (spin N rounds, then sleep).
- ``wavemel``: whatever ``wavemel._threads.configure_threads`` chooses, thread count included
  unless ``--threads`` is given, and its governor re-fitting the count between steps
  (``retune_threads``, as the training loop calls it): what the ``wavemel`` command does.
- ``one-thread``: default policy, one thread (what a load-aware thread count falls back to).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POLICIES = ["default", "passive", "spin-10000", "spin-100000", "wavemel", "one-thread"]
# Settings that would leak the caller's own choice into a policy's row.
_CLEARED = (
    "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT",
    "KMP_BLOCKTIME",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "WAVEMEL_THREADS",
)
_RIVAL = "import time\nend = time.monotonic() + {limit}\nwhile time.monotonic() < end:\n    pass\n"


def policy_env(policy: str) -> dict[str, str]:
    """The environment a policy's timed process starts with."""
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if policy == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    elif policy.startswith("spin-"):
        env["GOMP_SPINCOUNT"] = policy.removeprefix("spin-")
    elif policy not in ("default", "wavemel", "one-thread"):
        raise SystemExit(f"contention.py: unknown policy {policy!r} (known: {POLICIES}, spin-N)")
    return env


def start_rivals(count: int, limit_s: float) -> list[subprocess.Popen]:
    """``count`` single-threaded busy loops, each ending itself after ``limit_s`` seconds."""
    code = _RIVAL.format(limit=limit_s)
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]


def stop_rivals(rivals: list[subprocess.Popen]) -> None:
    for rival in rivals:
        rival.terminate()
    for rival in rivals:
        rival.wait()


def time_config(
    args: argparse.Namespace, model: str, policy: str, rivals: int, arrival: str = "start"
) -> dict:
    """One timing in a fresh process beside ``rivals`` busy loops; returns the worker's JSON."""
    threads = 1 if policy == "one-thread" else args.threads
    if threads is None and policy != "wavemel":
        threads = len(os.sched_getaffinity(0))  # torch's own default: one per usable core
    command = [
        sys.executable, __file__, "--worker", "--policy", policy, "--models", model,
        "--size", args.size, "--seconds", str(args.seconds), "--batch", str(args.batch),
        "--budget", str(args.budget), "--rival-limit", str(args.rival_limit),
    ]  # fmt: skip
    if threads is not None:
        command += ["--threads", str(threads)]
    if arrival == "late":
        command += ["--late-rivals", str(rivals)]
    running = start_rivals(rivals if arrival == "start" else 0, args.rival_limit)
    try:
        time.sleep(0.3 if running else 0.0)  # let the rivals get onto the cores first
        done = subprocess.run(
            command,
            env=policy_env(policy),
            capture_output=True,
            text=True,
            timeout=args.rival_limit,
        )
    except subprocess.TimeoutExpired:
        raise SystemExit(
            f"contention.py: {policy}, {model} with {rivals} rival(s) took over "
            f"--rival-limit {args.rival_limit:g} s"
        ) from None
    finally:
        stop_rivals(running)
    if done.returncode != 0:
        raise SystemExit(f"contention.py: worker failed ({policy}, {model}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def worker(args: argparse.Namespace) -> None:
    """Time training steps in this process and print one JSON line."""
    plan = "set by the benchmark"
    if args.policy == "wavemel":
        # Must run before torch is imported, as the CLI entry point does.
        from wavemel._threads import configure_threads

        plan = configure_threads(args.threads).reason
    import torch

    from wavemel._threads import retune_threads, thread_summary

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from models import training_step  # benchmarks/models.py: the step of its table (b)

    if args.policy != "wavemel":
        torch.set_num_threads(args.threads)
    step, _, _ = training_step(args.models[0], args.size, args.seconds, args.batch)

    step()  # warm-up
    rivals = start_rivals(args.late_rivals, args.rival_limit)
    try:
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < args.budget:
            retune_threads()  # a no-op unless wavemel's governor runs in this process
            step()
            steps += 1
        elapsed = time.perf_counter() - start
    finally:
        stop_rivals(rivals)
    result = {
        "steps": steps,
        "clips_per_s": steps * args.batch / elapsed,
        "threads": torch.get_num_threads(),
        "governor": thread_summary(),
        "plan": plan,
        "env": {k: os.environ[k] for k in _CLEARED if k in os.environ},
    }
    print(json.dumps(result))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cnn-spec", "cnn-audio"])
    parser.add_argument("--size", default="small")
    parser.add_argument("--seconds", type=float, default=2.0, help="input length of a clip")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--threads",
        type=int,
        help="threads of every policy (default: one per usable core; wavemel: its own choice)",
    )
    parser.add_argument("--policies", nargs="+", default=POLICIES)
    parser.add_argument("--competitors", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--arrival",
        nargs="+",
        choices=["start", "late"],
        default=["start", "late"],
        help="rivals running before the timed process starts, or starting after its warm-up",
    )
    parser.add_argument("--budget", type=float, default=8.0, help="timing seconds per row")
    parser.add_argument(
        "--repeats", type=int, default=1, help="timings per row (median shown, with the range)"
    )
    parser.add_argument("--rival-limit", type=float, default=300.0, help="rivals' own deadline")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--policy", help=argparse.SUPPRESS)
    parser.add_argument("--late-rivals", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return
    for policy in args.policies:
        policy_env(policy)  # reject an unknown name before the first (slow) row

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"{args.size} models, {args.seconds:g} s clips, batch {args.batch}, "
        f"{len(os.sched_getaffinity(0))} usable CPU(s); load average before: {load}\n"
    )
    print(
        "| model | policy | rivals | arrival | threads at end | clips/s | / own idle "
        "| / default idle |"
    )
    print("|---|---|---:|---|---:|---:|---:|---:|")
    conditions = [
        (model, policy, rivals, arrival)
        for model in args.models
        for policy in args.policies
        for rivals in args.competitors
        for arrival in (args.arrival if rivals else ["start"])
    ]
    # Repeats go round all conditions in turn, so a slow spell of the machine is spread over
    # every row instead of landing on one; each row reports the median of its repeats.
    timings: dict[tuple, list[dict]] = {c: [] for c in conditions}
    for _ in range(args.repeats):
        for condition in conditions:
            timings[condition].append(time_config(args, *condition))
    rows, idle = [], {}
    for condition in conditions:
        model, policy, rivals, arrival = condition
        runs = sorted(timings[condition], key=lambda r: r["clips_per_s"])
        r = runs[len(runs) // 2]
        if rivals == 0:
            idle[model, policy] = r["clips_per_s"]
        own = idle.get((model, policy))
        base = idle.get((model, "default"))
        row = {"model": model, "policy": policy, "rivals": rivals, "arrival": arrival, **r}
        row["repeats"] = [x["clips_per_s"] for x in timings[condition]]
        row["share_of_idle"] = r["clips_per_s"] / own if own else None
        row["share_of_default_idle"] = r["clips_per_s"] / base if base else None
        rows.append(row)
        spread = (
            f" ({runs[0]['clips_per_s']:.0f}-{runs[-1]['clips_per_s']:.0f})"
            if len(runs) > 1
            else ""
        )
        print(
            f"| {model} | {policy} | {rivals} | {arrival if rivals else '-'} "
            f"| {r['threads']} | {r['clips_per_s']:.1f}{spread} "
            f"| {_percent(row['share_of_idle'])} "
            f"| {_percent(row['share_of_default_idle'])} |",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.0f}%"


if __name__ == "__main__":
    main()
