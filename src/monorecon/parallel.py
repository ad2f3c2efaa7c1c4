"""Independent jobs on worker processes, results in input order (data synthesis, evaluation, batch reconstruction).

Workers are started with ``spawn`` (a forked torch can deadlock) and run one torch thread each, so ``N`` workers use
about ``N`` cores. With one worker the jobs run in this process, with its threads. While the workers run, SIGTERM
(``kill``, a job scheduler) terminates them too and raises ``SystemExit(143)`` in this process (or what a SIGTERM
handler set before raises).
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

import torch

from .core.checks import check_int

__all__ = ["MAX_WORKERS", "map_in_processes"]

#: Largest number of worker processes accepted.
MAX_WORKERS = 256

Shared = TypeVar("Shared")
Item = TypeVar("Item")
Result = TypeVar("Result")


def map_in_processes(
    function: Callable[[Shared, Item], Result],
    items: Iterable[Item],
    workers: int,
    *,
    shared: Shared = None,
    chunksize: int = 1,
) -> Iterator[Result]:
    """``function(shared, item)`` for each item, in order, lazily like ``map``; on ``workers`` processes when > 1.

    Args:
        function: a module-level function (workers receive it by name).
        items: its inputs (picklable when ``workers > 1``).
        workers: number of processes, in ``[1, MAX_WORKERS]``; 1 runs everything here.
        shared: the same first argument for every item, e.g. a model: sent to each worker once, not with every item.
        chunksize: items sent to a worker at a time.

    Raises:
        ValueError: a bad ``workers`` (at once). A job's exception is raised when its result is reached, the pending
            jobs cancelled; so are they when the iteration stops early.
        SystemExit: SIGTERM, with the workers terminated.
    """
    check_int(workers, "workers", 1, MAX_WORKERS)
    if workers == 1:
        return (function(shared, item) for item in items)
    return _map_in_pool(function, items, workers, shared, chunksize)


def _map_in_pool(
    function: Callable[[Any, Any], Any], items: Iterable[Any], workers: int, shared: Any, chunksize: int
) -> Iterator[Any]:
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(shared,))
    with _terminate_on_sigterm(pool), pool:  # the handler outlives the pool's wait for its running jobs
        try:
            yield from pool.map(functools.partial(_run_job, function), items, chunksize=chunksize)
        except BaseException:  # a failed job, Ctrl-C, SIGTERM, or the caller stopped: do not run the rest first
            pool.shutdown(cancel_futures=True)
            raise


@contextlib.contextmanager
def _terminate_on_sigterm(pool: ProcessPoolExecutor) -> Iterator[None]:
    """While open, SIGTERM terminates the pool's workers, then calls the handler set before (the command line's raises
    its own exception) or else raises ``SystemExit(128 + SIGTERM)`` here.

    SIGTERM's default action kills this process alone: its workers, adopted by init, would go on with their jobs (Ctrl-C
    reaches the whole process group instead). Only the main thread can set a signal handler; elsewhere nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: Any) -> None:
        # Python 3.14 has pool.terminate_workers(); before it the processes are only reachable here.
        for process in list((pool._processes or {}).values()):
            process.terminate()
        if callable(previous):  # the caller's own handler (the command line's, which reports the termination)
            previous(signum, frame)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


# In a worker process: the `shared` argument of the one `map_in_processes` call it serves; whether it got SIGTERM.
_worker_shared: Any = None
_worker_stopping = False


def _start_worker(shared: Any) -> None:
    global _worker_shared
    torch.set_num_threads(1)
    _worker_shared = shared
    signal.signal(signal.SIGTERM, _stop_worker)


def _stop_worker(signum: int, frame: Any) -> None:
    """SIGTERM in a worker (sent by :func:`_terminate_on_sigterm`): its job unwinds as on Ctrl-C, removing what it
    had half written, and the jobs already queued to it do not start."""
    global _worker_stopping
    _worker_stopping = True
    raise SystemExit(128 + signum)


def _run_job(function: Callable[[Any, Any], Any], item: Any) -> Any:
    if _worker_stopping:
        raise SystemExit(128 + signal.SIGTERM)
    return function(_worker_shared, item)
