"""Independent jobs on worker processes, results in input order (data synthesis, evaluation).

Workers are started with ``spawn`` (a forked torch can deadlock) and run one torch thread each, so ``N`` workers use
about ``N`` cores. With one worker the jobs run in this process, with its threads.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

import torch

from .core.checks import check_int

__all__ = ["MAX_WORKERS", "map_in_processes"]

#: Largest number of worker processes accepted.
MAX_WORKERS = 256

Item = TypeVar("Item")
Result = TypeVar("Result")


def map_in_processes(
    function: Callable[[Item], Result],
    items: Sequence[Item],
    workers: int,
    *,
    progress: Callable[[Iterator[Result]], Iterable[Result]] = iter,
    chunksize: int = 1,
    initializer: Callable[..., None] | None = None,
    initargs: tuple[Any, ...] = (),
) -> list[Result]:
    """``[function(item) for item in items]``, on ``workers`` processes when ``workers > 1``.

    Args:
        function, items: a picklable module-level function and its inputs (picklable too when ``workers > 1``).
        workers: number of processes, in ``[1, MAX_WORKERS]``; 1 runs everything here.
        progress: wraps the iterator of results, e.g. a ``tqdm`` with the total.
        chunksize: items sent to a worker at a time.
        initializer, initargs: called once in each worker (and once here when ``workers == 1``), e.g. to hand it a
            large object once instead of with every item.

    Raises:
        ValueError: a bad ``workers``. A job's exception is raised here, the pending jobs cancelled.
    """
    check_int(workers, "workers", 1, MAX_WORKERS)
    if workers == 1:
        if initializer is not None:
            initializer(*initargs)
        return list(progress(map(function, items)))
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_start_worker, initargs=(initializer, initargs)
    ) as pool:
        try:
            return list(progress(pool.map(function, items, chunksize=chunksize)))
        except BaseException:  # a failed job or Ctrl-C: do not run the rest first
            pool.shutdown(cancel_futures=True)
            raise


def _start_worker(initializer: Callable[..., None] | None, initargs: tuple[Any, ...]) -> None:
    torch.set_num_threads(1)
    if initializer is not None:
        initializer(*initargs)
