"""``monorecon.parallel.map_in_processes``: the same results, in order, from one process or several."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from monorecon.parallel import MAX_WORKERS, map_in_processes


def _power(exponent: int, base: int) -> tuple[int, int]:
    if base < 0:
        raise ValueError(f"negative base {base}")
    return base**exponent, os.getpid()


def test_one_worker_runs_in_order_in_this_process_with_the_shared_argument():
    results = list(map_in_processes(_power, range(7), 1, shared=3))
    assert [value for value, _ in results] == [0, 1, 8, 27, 64, 125, 216]
    assert {pid for _, pid in results} == {os.getpid()}


def test_a_failed_job_raises_in_the_caller_and_bad_counts_are_refused():
    results = map_in_processes(_power, [2, -1, 3], 2, shared=2)
    assert next(results)[0] == 4  # lazy: the failure is raised when its result is reached
    with pytest.raises(ValueError, match="negative base -1"):
        next(results)
    for bad in (0, 257, 2.0, True):
        with pytest.raises(ValueError, match="workers must"):
            map_in_processes(_power, [1], bad, shared=2)


# Set at run time in the test process only: a spawned worker imports this module afresh and sees the default.
_MARK = "as imported"


def _sleep_then_report(shared: int, item: tuple[int, float]) -> tuple[int, str, int, int]:
    time.sleep(item[1])
    return item[0] ** shared, _MARK, torch.get_num_threads(), os.getpid()


def _record(folder: str, item: int) -> int:
    if item < 0:
        raise ValueError(f"job {item} failed")
    time.sleep(0.1)
    (Path(folder) / f"{item}.done").touch()
    return item


def test_results_follow_the_input_order_from_fresh_single_threaded_workers(monkeypatch):
    """The first items take longest: they finish last but still come first. Each worker is spawned (a forked one
    would copy the value set here in the parent) and runs one torch thread."""
    monkeypatch.setattr(sys.modules[__name__], "_MARK", "set in the parent")
    items = [(i, 0.6 - 0.1 * i) for i in range(6)]
    results = list(map_in_processes(_sleep_then_report, items, 3, shared=3))
    assert [result[:3] for result in results] == [(i**3, "as imported", 1) for i in range(6)]
    assert os.getpid() not in {result[3] for result in results}


def test_the_largest_worker_count_is_accepted():
    assert list(map_in_processes(_power, [], MAX_WORKERS, shared=2)) == []


def test_one_worker_is_lazy_too():
    calls = []

    def job(shared, item):
        calls.append(item)
        return _power(shared, item)

    results = map_in_processes(job, [2, -1, 3], 1, shared=2)
    assert calls == []  # nothing runs before the first result is asked for
    assert next(results)[0] == 4
    with pytest.raises(ValueError, match="negative base -1"):
        next(results)
    assert calls == [2, -1]


@pytest.mark.parametrize("stop", ["failure", "caller"])
def test_pending_jobs_are_cancelled_when_a_job_fails_or_the_caller_stops(tmp_path, stop):
    """After a failed job (or the caller closing the iterator) the jobs not yet started are dropped: 60 jobs of 0.1 s
    on 2 workers would take 3 s and leave 60 files."""
    items = [-1, *range(60)] if stop == "failure" else list(range(60))
    results = map_in_processes(_record, items, 2, shared=str(tmp_path))
    if stop == "failure":
        with pytest.raises(ValueError, match="job -1 failed"):
            next(results)
    else:
        assert next(results) == 0
        results.close()
    assert len(list(tmp_path.glob("*.done"))) < 20


def _record_worker(folder: str, item: int) -> int:
    (Path(folder) / f"{os.getpid()}.pid").touch()
    time.sleep(0.5)
    (Path(folder) / f"{item}.done").touch()
    return item


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (one left unreaped by init counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_sigterm_terminates_the_workers_too(tmp_path):
    """SIGTERM (kill, a job scheduler) used to kill the parent alone: its workers, adopted by init, went on."""
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); from test_parallel import _record_worker\n"
        "from monorecon.parallel import map_in_processes\n"
        "for _ in map_in_processes(_record_worker, range(40), 2, shared=sys.argv[2]): pass\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script, str(Path(__file__).parent), str(tmp_path)])
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("*.pid"))) < 2:  # both workers busy
        assert parent.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=60) == 128 + signal.SIGTERM  # exited through Python's cleanup, not killed outright
    workers = [int(p.stem) for p in tmp_path.glob("*.pid")]
    time.sleep(1.0)
    assert not [pid for pid in workers if _running(pid)]
    assert len(list(tmp_path.glob("*.done"))) < 40
