"""Thread count and OpenMP wait policy: choice, user overrides, and the CLI's --threads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wavemel import _threads
from wavemel._threads import (
    SHORT_SPINCOUNT,
    ThreadGovernor,
    busy_cpus,
    cgroup_cpu_quota,
    plan_threads,
)
from wavemel.cli import main
from wavemel.errors import WavemelError

REPO = Path(__file__).resolve().parents[1]


def _plan(threads=None, environ=None, busy=0.0, cpus=2):
    return plan_threads(
        threads, environ or {}, usable_cpus=cpus, machine_cpus=cpus, busy=lambda: busy
    )


def test_idle_machine_uses_every_core_adaptively_with_openmps_own_wait():
    plan = _plan()
    assert plan.threads == 2 and plan.adaptive and plan.max_threads == 2
    assert plan.env["OMP_NUM_THREADS"] == "2"
    # The governor keeps the count at the free cores, so no wait setting is needed.
    assert not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(plan.env)


def test_busy_machine_starts_on_the_free_cores():
    plan = _plan(busy=1.0)
    assert plan.threads == 1 and plan.adaptive and plan.max_threads == 2
    # Never fewer than one thread, however busy.
    assert _plan(busy=9.0).threads == 1
    # Cores beyond this process's affinity are not ours to use.
    big = plan_threads(None, {}, usable_cpus=4, machine_cpus=64, busy=lambda: 3.0)
    assert big.threads == 4 and big.max_threads == 4


def test_a_fixed_count_is_not_adaptive_and_spins_briefly_when_idle():
    plan = _plan(threads=2)
    assert not plan.adaptive and plan.env["GOMP_SPINCOUNT"] == SHORT_SPINCOUNT
    busy = _plan(threads=2, busy=1.0)
    assert not busy.adaptive and busy.env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert not _plan(environ={"OMP_NUM_THREADS": "2"}).adaptive
    assert not _plan(environ={"WAVEMEL_THREADS": "2"}).adaptive


def test_more_threads_than_free_cores_waits_passively():
    plan = _plan(threads=4)
    assert plan.threads == 4 and plan.env["OMP_WAIT_POLICY"] == "PASSIVE"


def test_user_settings_win_in_order():
    env = {"WAVEMEL_THREADS": "3", "OMP_NUM_THREADS": "5"}
    assert _plan(threads=7, environ=env).threads == 7
    assert _plan(environ=env).threads == 3
    kept = _plan(environ={"OMP_NUM_THREADS": "5"})
    assert kept.threads is None and "OMP_NUM_THREADS" not in kept.env
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME"):
        plan = _plan(threads=2, environ={name: "1"}, busy=1.0)
        assert not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME"} & set(plan.env)


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_bad_thread_counts_are_one_line_errors(value):
    with pytest.raises(WavemelError, match=r"^WAVEMEL_THREADS: .*'") as info:
        _plan(environ={"WAVEMEL_THREADS": value})
    assert "\n" not in str(info.value)
    with pytest.raises(WavemelError, match="^--threads"):
        _plan(threads=0)


def test_busy_cpus_reads_the_run_queue_without_counting_itself():
    readings = iter(["0.1 0.2 0.3 3/99 1", "9 9 9 1/99 1", "0 0 0 3/99 1"])
    assert busy_cpus(lambda: next(readings), samples=3) == 2  # median of 2, 0, 2
    assert busy_cpus(lambda: "1 1 1 1/50 7", samples=1) == 0


def test_busy_cpus_falls_back_to_the_load_average():
    def broken() -> str:
        raise OSError("no /proc")

    assert busy_cpus(broken) == pytest.approx(os.getloadavg()[0])


def test_cgroup_cpu_quota_v2_v1_and_none(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(str(v2)) == pytest.approx(1.5)
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(str(v2)) is None
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(str(v1.parent)) == pytest.approx(2.0)
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_quota(str(v1.parent)) is None
    assert cgroup_cpu_quota(str(tmp_path / "absent")) is None


def _fresh_python(code: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_", "KMP_"))}
    clean.pop("WAVEMEL_THREADS", None)
    clean.update(env, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", code], env=clean, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


_REPORT = (
    "import json, os, torch\n"
    "names = ('OMP_NUM_THREADS', 'OMP_WAIT_POLICY', 'GOMP_SPINCOUNT')\n"
    "print(json.dumps({'threads': torch.get_num_threads(),"
    " **{n: os.environ.get(n) for n in names}}))\n"
)


def test_configure_before_torch_sets_what_torch_starts_with():
    code = "from wavemel._threads import configure_threads\nconfigure_threads(1)\n" + _REPORT
    seen = _fresh_python(code)
    assert seen["threads"] == 1 and seen["OMP_NUM_THREADS"] == "1"
    assert seen["OMP_WAIT_POLICY"] == "PASSIVE" or seen["GOMP_SPINCOUNT"] == SHORT_SPINCOUNT
    # An explicit wait policy is the user's: left exactly as given.
    seen = _fresh_python(code, OMP_WAIT_POLICY="ACTIVE")
    assert seen["OMP_WAIT_POLICY"] == "ACTIVE" and seen["GOMP_SPINCOUNT"] is None


def test_cli_threads_option_before_or_after_the_sub_command(tmp_path, capsys):
    before = torch.get_num_threads()
    missing = str(tmp_path / "missing")
    try:
        torch.set_num_threads(2)
        # torch is already loaded here (as in any in-process call): an explicit count still
        # applies, through torch.set_num_threads.
        assert main(["--threads", "1", "data", "inspect", missing]) == 2
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        assert main(["data", "inspect", missing, "--threads", "1"]) == 2
        assert torch.get_num_threads() == 1
        assert "missing" in capsys.readouterr().err
        assert main(["--threads", "0", "data", "inspect", missing]) == 2
        err = capsys.readouterr().err
        assert err.startswith("wavemel: error: --threads:") and err.count("\n") == 1
    finally:
        torch.set_num_threads(before)


def test_cli_parser_does_not_load_torch():
    # The thread settings only take effect if no sub-command module imports torch at import
    # time: OpenMP reads them once, when torch loads.
    code = (
        "import json, sys\nfrom wavemel.cli import build_parser\nbuild_parser()\n"
        "print(json.dumps({'torch': 'torch' in sys.modules}))\n"
    )
    assert _fresh_python(code) == {"torch": False}


class _Machine:
    """A fake machine for the governor: run queue, own threads, clock and applied counts."""

    def __init__(self, runnable: int, own: int):
        self.runnable, self.own, self.now, self.applied = runnable, own, 0.0, []

    def governor(self, threads: int, max_threads: int = 2) -> ThreadGovernor:
        return ThreadGovernor(
            max_threads,
            threads,
            machine_cpus=2,
            interval_s=3.0,
            read_loadavg=lambda: f"0.5 0.5 0.5 {self.runnable}/300 99",
            own_running=lambda: self.own,
            set_threads=self.applied.append,
            clock=lambda: self.now,
        )

    def after(self, seconds: float, governor: ThreadGovernor) -> int:
        self.now += seconds
        return governor.tick()


def test_governor_gives_a_thread_up_at_once_when_a_rival_appears():
    machine = _Machine(runnable=2, own=2)  # our two threads, nothing else
    governor = machine.governor(threads=2)
    assert machine.after(3.0, governor) == 2 and machine.applied == []
    machine.runnable = 3  # a busy rival joins our two running threads
    assert machine.after(1.0, governor) == 2  # not due yet: no reading
    assert machine.after(2.0, governor) == 1
    assert machine.applied == [1]


def test_governor_takes_a_core_back_only_after_two_free_readings():
    machine = _Machine(runnable=2, own=1)  # one own thread, one rival
    governor = machine.governor(threads=1)
    assert machine.after(3.0, governor) == 1
    machine.runnable = 1  # the rival ended
    assert machine.after(3.0, governor) == 1  # one free reading: not yet
    assert machine.after(3.0, governor) == 2
    assert machine.applied == [2]
    # A reading in between that is not free resets the count of free readings.
    machine.runnable, machine.own = 2, 1
    governor = machine.governor(threads=1)
    machine.runnable = 1
    machine.after(3.0, governor)
    machine.runnable = 2
    machine.after(3.0, governor)
    machine.runnable = 1
    assert machine.after(3.0, governor) == 1
    assert machine.after(3.0, governor) == 2


def test_governor_counts_only_other_processes_and_stays_in_bounds():
    # Our own spinning workers are in the run queue too: they are not a rival.
    machine = _Machine(runnable=4, own=4)
    governor = machine.governor(threads=2, max_threads=4)
    assert machine.after(3.0, governor) == 2  # free: 2 CPUs of the machine, not 4
    machine.runnable = 9  # heavily loaded: never below one thread
    assert machine.after(3.0, governor) == 1
    assert governor.used == {1, 2}


def test_governor_ignores_an_unreadable_run_queue():
    def broken() -> str:
        raise OSError("no /proc")

    applied = []
    governor = ThreadGovernor(2, 2, 2, interval_s=0.0, read_loadavg=broken,
                              own_running=lambda: 1, set_threads=applied.append)  # fmt: skip
    assert governor.tick() == 2 and applied == []


def test_own_running_threads_reads_the_task_states(tmp_path):
    for tid, comm, state in [("1", "python", "R"), ("2", "a (b) c", "S"), ("3", "x) R (", "R")]:
        (tmp_path / tid).mkdir()
        (tmp_path / tid / "stat").write_text(f"{tid} ({comm}) {state} 1 1 1\n")
    assert _threads._own_running_threads(str(tmp_path)) == 2
    assert _threads._own_running_threads(str(tmp_path / "absent")) == 1


def test_retune_is_a_no_op_without_a_governor_and_ticks_with_one(monkeypatch):
    monkeypatch.setattr(_threads, "_GOVERNOR", None)
    _threads.retune_threads()  # nothing to do, nothing raised
    assert _threads.thread_summary() is None
    machine = _Machine(runnable=3, own=2)
    governor = machine.governor(threads=2)
    monkeypatch.setattr(_threads, "_GOVERNOR", governor)
    machine.now = 3.0
    _threads.retune_threads()
    assert machine.applied == [1]
    assert _threads.thread_summary() == "adaptive, 1-2 thread(s) used, 1 at the end"


def test_configure_before_torch_starts_a_governor_only_for_an_automatic_count():
    code = (
        "import json\nfrom wavemel import _threads\n"
        "plan = _threads.configure_threads({arg})\n"
        "print(json.dumps({{'governed': _threads._GOVERNOR is not None}}))\n"
    )
    assert _fresh_python(code.format(arg="None")) == {"governed": True}
    assert _fresh_python(code.format(arg="1")) == {"governed": False}
    assert _fresh_python(code.format(arg="None"), OMP_NUM_THREADS="1") == {"governed": False}
