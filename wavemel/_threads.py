"""CPU thread count and OpenMP wait policy that behave on a machine shared with other jobs.

OpenMP reads its settings once, when torch loads it, so :func:`configure_threads` must run before
``import torch`` (the ``wavemel`` entry point calls it first). Measured on 2 cores shared with
other jobs (``benchmarks/contention.py``, noisy): with torch's defaults, idle worker threads
spin for ~300,000 rounds before sleeping, which is fastest on idle cores but cut a training
step to between a few percent and a third of its idle speed beside one busy process, because
each parallel region waits for a thread that the spinning keeps off a core. Sleeping at once
(``OMP_WAIT_POLICY=PASSIVE``) softens that but cost ~25% when idle; one thread beside one busy
process kept ~60% of the two-thread idle speed, a fair share. Hence:

- threads: one per core that no other process is using at start-up (at least one), within
  the process's affinity and any container CPU quota;
- wait policy: a short spin (``GOMP_SPINCOUNT``) on an idle machine, which keeps the idle speed
  and limits the loss if other jobs start later, and passive waiting when it is already shared.

What the user sets wins: ``--threads N``, then ``WAVEMEL_THREADS``, then ``OMP_NUM_THREADS`` for
the count; an explicit ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` (``KMP_BLOCKTIME`` for Intel's
OpenMP) leaves the wait policy alone.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path

from wavemel.errors import WavemelError

__all__ = ["ThreadPlan", "busy_cpus", "cgroup_cpu_quota", "configure_threads", "plan_threads"]

# libgomp spin rounds before a waiting thread sleeps (its default is 300,000, i.e. milliseconds):
# 10,000 was within the noise of the default's idle speed on the 2-core machine while spinning
# 30x less when another job takes a core (to be confirmed on a quiet machine).
SHORT_SPINCOUNT = "10000"
# Intel OpenMP's equivalent, in milliseconds (its default is 200).
SHORT_BLOCKTIME_MS = "1"
_WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
# Snapshots of the run queue averaged into one reading: one is noisy, five take ~20 ms.
_SAMPLES = 5
_SAMPLE_GAP_S = 0.005


@dataclass(frozen=True)
class ThreadPlan:
    """What :func:`plan_threads` chose and why.

    Attributes:
        threads: Intra-op threads for torch, or ``None`` to keep ``OMP_NUM_THREADS``.
        env: Variables to set (only ones the user did not set).
        reason: One line for logs, e.g. ``"2 threads (2 CPUs, 0 busy), short spin"``.
    """

    threads: int | None
    env: dict[str, str]
    reason: str


def busy_cpus(read: Callable[[], str] | None = None, samples: int = _SAMPLES) -> float:
    """How many CPUs other processes keep busy now: runnable tasks minus this one.

    Reads the instantaneous run-queue length (4th field of ``/proc/loadavg``, which counts the
    reading process itself) a few times and takes the median; the 1-minute load average lags a
    minute behind and is the fallback where ``/proc`` is missing (macOS).
    """
    read = read or _read_proc_loadavg
    counts = []
    for i in range(samples):
        try:
            counts.append(int(read().split()[3].split("/")[0]) - 1)
        except (OSError, IndexError, ValueError):
            break
        if i + 1 < samples:
            time.sleep(_SAMPLE_GAP_S)
    if counts:
        return max(0.0, statistics.median(counts))
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def _read_proc_loadavg() -> str:
    with open("/proc/loadavg") as handle:
        return handle.read()


def _usable_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a container's CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def cgroup_cpu_quota(root: str = "/sys/fs/cgroup") -> float | None:
    """CPUs allowed by the cgroup CPU quota (``docker --cpus``), ``None`` without a quota.

    A quota leaves the affinity at every core of the host, so without this a 2-CPU container
    on a 64-core host would start 64 threads.
    """
    try:  # cgroup v2: "max 100000" or "200000 100000"
        quota, period = Path(root, "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1: a quota of -1 means none
        quota = int(Path(root, "cpu", "cpu.cfs_quota_us").read_text())
        period = int(Path(root, "cpu", "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def _parse_threads(value: str, name: str) -> int:
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise WavemelError(f"{name}: expected a whole number of threads >= 1, got {value!r}")
    return threads


def plan_threads(
    threads: int | None,
    environ: MutableMapping[str, str],
    *,
    usable_cpus: int,
    machine_cpus: int,
    busy: Callable[[], float],
) -> ThreadPlan:
    """Choose the thread count and wait policy (pure: no environment is changed).

    Args:
        threads: ``--threads`` (``None``: not given).
        environ: The environment to respect (``WAVEMEL_THREADS``, ``OMP_*`` settings).
        usable_cpus: CPUs this process may run on (affinity).
        machine_cpus: CPUs of the whole machine, the ones the run queue is counted over.
        busy: Returns how many CPUs other processes use (called only when needed).

    Raises:
        WavemelError: ``threads`` or ``WAVEMEL_THREADS`` is not a whole number >= 1.
    """
    if threads is not None and threads < 1:
        raise WavemelError(f"--threads: expected a whole number of threads >= 1, got {threads}")
    if threads is None and environ.get("WAVEMEL_THREADS", "").strip():
        threads = _parse_threads(environ["WAVEMEL_THREADS"].strip(), "WAVEMEL_THREADS")
    others = busy()
    free = max(1, min(usable_cpus, int(machine_cpus - others + 0.5)))
    source = "set"
    if threads is None and "OMP_NUM_THREADS" not in environ:
        threads, source = free, f"{usable_cpus} CPUs, {others:g} busy"
    shared = others >= 0.5 or (threads or free) > free
    env: dict[str, str] = {}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    if any(name in environ for name in _WAIT_SETTINGS):
        wait = "wait policy from the environment"
    elif shared:
        env.update(OMP_WAIT_POLICY="PASSIVE", KMP_BLOCKTIME="0")
        wait = "passive wait (machine shared)"
    else:
        env.update(GOMP_SPINCOUNT=SHORT_SPINCOUNT, KMP_BLOCKTIME=SHORT_BLOCKTIME_MS)
        wait = "short spin"
    count = f"{threads} thread(s) ({source})" if threads else "OMP_NUM_THREADS threads"
    return ThreadPlan(threads=threads, env=env, reason=f"{count}, {wait}")


def configure_threads(
    threads: int | None = None, environ: MutableMapping[str, str] | None = None
) -> ThreadPlan:
    """Set the thread count and OpenMP wait policy for this process; call before importing torch.

    Once torch is loaded its OpenMP settings are fixed: then only an explicit count (``threads``
    or ``WAVEMEL_THREADS``) is applied, through ``torch.set_num_threads``, and a program that
    imported torch itself keeps its own choices otherwise.

    Args:
        threads: ``--threads`` (``None``: ``WAVEMEL_THREADS``, ``OMP_NUM_THREADS`` or automatic).
        environ: Defaults to ``os.environ`` (inherited by worker processes too).

    Returns:
        The plan that was applied.

    Raises:
        WavemelError: A thread count that is not a whole number >= 1.
    """
    environ = os.environ if environ is None else environ
    torch = sys.modules.get("torch")
    explicit = threads is not None or bool(environ.get("WAVEMEL_THREADS", "").strip())
    plan = plan_threads(
        threads,
        environ,
        usable_cpus=_usable_cpus(),
        machine_cpus=os.cpu_count() or 1,
        # With torch loaded nothing automatic is applied: skip the ~20 ms reading.
        busy=(lambda: 0.0) if torch is not None else busy_cpus,
    )
    if torch is None:
        environ.update(plan.env)
    elif explicit and plan.threads is not None:
        torch.set_num_threads(plan.threads)
    return plan
