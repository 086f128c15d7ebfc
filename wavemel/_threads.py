"""CPU thread count and OpenMP wait policy that behave on a machine shared with other jobs.

OpenMP reads its wait policy once, when torch loads it, so :func:`configure_threads` must run
before ``import torch`` (the ``wavemel`` entry point calls it first). Measured on 2 cores
(``benchmarks/contention.py``): with torch's defaults, idle worker threads spin for ~300,000
rounds before sleeping, which is fastest on idle cores but cut a training step to between a few
percent and a third of its idle speed beside one busy process, because each parallel region waits
for a thread that the spinning keeps off a core. Sleeping at once (``OMP_WAIT_POLICY=PASSIVE``)
softens that but cost ~25% when idle; one thread beside one busy process kept ~60% of the
two-thread idle speed, a fair share. Hence, when the user sets no thread count:

- threads: one per core that no other process is using (at least one), within the process's
  affinity and any container CPU quota, and **re-fitted while the job runs**
  (:class:`ThreadGovernor`, called between training steps and inference batches through
  :func:`retune_threads`): a study that started beside another job (or had one start beside it)
  takes the cores back when they are free, and gives one up when a rival appears. A count chosen
  once at start-up left a 25-minute study on one of two idle cores.
- wait policy: OpenMP's own, since the thread count already avoids waiting for a busy core.

With a fixed count (``--threads N``, then ``WAVEMEL_THREADS``, then ``OMP_NUM_THREADS``) nothing
is re-fitted, and the wait policy is a short spin (``GOMP_SPINCOUNT``) on an idle machine and
passive waiting when the count exceeds the free cores. An explicit ``OMP_WAIT_POLICY`` or
``GOMP_SPINCOUNT`` (``KMP_BLOCKTIME`` for Intel's OpenMP) always leaves the wait policy alone.
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

__all__ = [
    "ThreadGovernor",
    "ThreadPlan",
    "busy_cpus",
    "cgroup_cpu_quota",
    "configure_threads",
    "plan_threads",
    "retune_threads",
    "thread_summary",
]

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
# The governor reads the machine at most this often (3 snapshots, ~10 ms: ~0.5% of the time).
GOVERN_INTERVAL_S = 2.0
_GOVERN_SAMPLES = 3
# Readings in a row that must find more free cores before a thread is added back (one is enough
# to give one up: waiting beside a busy core is what collapses the speed).
_UP_READINGS = 2


@dataclass(frozen=True)
class ThreadPlan:
    """What :func:`plan_threads` chose and why.

    Attributes:
        threads: Intra-op threads for torch, or ``None`` to keep ``OMP_NUM_THREADS``.
        env: Variables to set (only ones the user did not set).
        reason: One line for logs, e.g. ``"2 threads (2 CPUs, 0 busy), adaptive"``.
        adaptive: The count is automatic, so a :class:`ThreadGovernor` may re-fit it later
            (between 1 and ``max_threads``).
        max_threads: The most threads an adaptive count may use (the usable CPUs).
    """

    threads: int | None
    env: dict[str, str]
    reason: str
    adaptive: bool = False
    max_threads: int | None = None


def busy_cpus(read: Callable[[], str] | None = None, samples: int = _SAMPLES) -> float:
    """How many CPUs other processes keep busy now: runnable tasks minus this one.

    Reads the instantaneous run-queue length (4th field of ``/proc/loadavg``, which counts the
    reading process itself) a few times and takes the median; the 1-minute load average lags a
    minute behind and is the fallback where ``/proc`` is missing (macOS).
    """
    counts = _runnable_others(read or _read_proc_loadavg, lambda: 1, samples)
    if counts:
        return max(0.0, statistics.median(counts))
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def _runnable_others(read: Callable[[], str], own: Callable[[], int], samples: int) -> list[int]:
    """Snapshots of the run queue (``/proc/loadavg``'s 4th field) minus ``own()`` threads.

    ``own`` is called just before and just after each reading and the larger count is taken:
    an OpenMP worker of this process that falls asleep meanwhile is still not another process.
    Stops at the first unreadable snapshot and returns those read until then.
    """
    counts = []
    for i in range(samples):
        before = own()
        try:
            runnable = int(read().split()[3].split("/")[0])
        except (OSError, IndexError, ValueError):
            break
        counts.append(runnable - max(before, own()))
        if i + 1 < samples:
            time.sleep(_SAMPLE_GAP_S)
    return counts


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
    free = _free_cpus(usable_cpus, machine_cpus, others)
    source = "set"
    adaptive = threads is None and "OMP_NUM_THREADS" not in environ
    if adaptive:
        threads, source = free, f"{usable_cpus} CPUs, {others:g} busy"
    shared = others >= 0.5 or (threads or free) > free
    env: dict[str, str] = {}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    if any(name in environ for name in _WAIT_SETTINGS):
        wait = "wait policy from the environment"
    elif adaptive:
        # The governor keeps the count at the free cores, so no thread waits for a busy one and
        # OpenMP's own spinning is the fastest choice (measured: a short spin cost up to ~20%
        # of cnn-spec's idle speed).
        wait = "adaptive"
    elif shared:
        env.update(OMP_WAIT_POLICY="PASSIVE", KMP_BLOCKTIME="0")
        wait = "passive wait (machine shared)"
    else:
        env.update(GOMP_SPINCOUNT=SHORT_SPINCOUNT, KMP_BLOCKTIME=SHORT_BLOCKTIME_MS)
        wait = "short spin"
    count = f"{threads} thread(s) ({source})" if threads else "OMP_NUM_THREADS threads"
    return ThreadPlan(
        threads=threads,
        env=env,
        reason=f"{count}, {wait}",
        adaptive=adaptive,
        max_threads=usable_cpus if adaptive else None,
    )


def _free_cpus(usable_cpus: int, machine_cpus: int, others: float) -> int:
    """Cores left for this process: the machine's minus the busy ones, within its own share."""
    return max(1, min(usable_cpus, int(machine_cpus - others + 0.5)))


def _own_running_threads(task_dir: str = "/proc/self/task") -> int:
    """Threads of this process that are running or runnable now (state ``R``), this one included.

    The run queue in ``/proc/loadavg`` counts threads, so this process's OpenMP workers are in it
    while they spin; they are not "other" load.
    """
    count = 0
    try:
        tasks = list(Path(task_dir).iterdir())
    except OSError:
        return 1
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        # "pid (comm) S ...": the command name may hold spaces and parentheses.
        fields = stat.rpartition(")")[2].split()
        count += bool(fields) and fields[0] == "R"
    return max(1, count)


class ThreadGovernor:
    """Re-fits torch's intra-op thread count to the cores other processes leave free.

    :meth:`tick` is cheap when called often: it reads the machine at most every ``interval_s``
    seconds. A reading is the median over a few snapshots of the run queue minus this process's
    own running threads. One reading that finds fewer free cores than threads lowers the count at
    once; :data:`_UP_READINGS` readings in a row that find more raise it (so a short burst of
    other work does not make the count flap).

    Args:
        max_threads: Upper bound (the usable CPUs).
        threads: The count in force now.
        machine_cpus: CPUs the run queue is counted over.
        interval_s: Least time between two readings.
        read_loadavg, own_running, set_threads, clock: Injected for tests; default to
            ``/proc/loadavg``, ``/proc/self/task``, ``torch.set_num_threads`` and
            ``time.monotonic``.
    """

    def __init__(
        self,
        max_threads: int,
        threads: int,
        machine_cpus: int,
        *,
        interval_s: float = GOVERN_INTERVAL_S,
        read_loadavg: Callable[[], str] | None = None,
        own_running: Callable[[], int] | None = None,
        set_threads: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_threads = max(1, max_threads)
        self.threads = min(max(1, threads), self.max_threads)
        self.machine_cpus = machine_cpus
        self.interval_s = interval_s
        self._read = read_loadavg or _read_proc_loadavg
        self._own = own_running or _own_running_threads
        self._set = set_threads or _set_torch_threads
        self._clock = clock
        self._next = clock() + interval_s
        self._up_votes = 0
        #: Every count used so far, for the run's report.
        self.used = {self.threads}

    def others(self) -> float | None:
        """CPUs kept busy by other processes now, or ``None`` when the run queue is unreadable."""
        counts = _runnable_others(self._read, self._own, _GOVERN_SAMPLES)
        if len(counts) < _GOVERN_SAMPLES:
            return None
        counts = [max(0, count) for count in counts]
        return statistics.median(counts)

    def tick(self) -> int:
        """Re-fit the count if a reading is due; returns the count in force."""
        now = self._clock()
        if now < self._next:
            return self.threads
        self._next = now + self.interval_s
        others = self.others()
        if others is None:
            return self.threads
        target = _free_cpus(self.max_threads, self.machine_cpus, others)
        if target < self.threads:
            self._apply(target)
        elif target > self.threads:
            self._up_votes += 1
            if self._up_votes >= _UP_READINGS:
                self._apply(target)
        else:
            self._up_votes = 0
        return self.threads

    def _apply(self, threads: int) -> None:
        self._up_votes = 0
        self.threads = threads
        self.used.add(threads)
        self._set(threads)


def _set_torch_threads(threads: int) -> None:
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


# The governor of this process, when configure_threads chose an automatic count.
_GOVERNOR: ThreadGovernor | None = None


def retune_threads() -> None:
    """Let this process's :class:`ThreadGovernor` re-fit the thread count (no-op without one).

    Called between training steps and inference batches, never inside a parallel region.
    """
    if _GOVERNOR is not None:
        _GOVERNOR.tick()


def thread_summary() -> str | None:
    """``"adaptive, 1-2 threads"`` when the count was re-fitted during the run, else ``None``."""
    if _GOVERNOR is None:
        return None
    low, high = min(_GOVERNOR.used), max(_GOVERNOR.used)
    span = f"{low}" if low == high else f"{low}-{high}"
    return f"adaptive, {span} thread(s) used, {_GOVERNOR.threads} at the end"


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
    global _GOVERNOR
    environ = os.environ if environ is None else environ
    torch = sys.modules.get("torch")
    explicit = threads is not None or bool(environ.get("WAVEMEL_THREADS", "").strip())
    machine_cpus = os.cpu_count() or 1
    plan = plan_threads(
        threads,
        environ,
        usable_cpus=_usable_cpus(),
        machine_cpus=machine_cpus,
        # With torch loaded nothing automatic is applied: skip the ~20 ms reading.
        busy=(lambda: 0.0) if torch is not None else busy_cpus,
    )
    _GOVERNOR = None
    if torch is None:
        environ.update(plan.env)
        if plan.adaptive and plan.threads is not None and plan.max_threads is not None:
            _GOVERNOR = ThreadGovernor(plan.max_threads, plan.threads, machine_cpus)
    elif explicit and plan.threads is not None:
        torch.set_num_threads(plan.threads)
    return plan
