"""``monorecon.parallel.map_in_processes``: the same results, in order, from one process or several."""

from __future__ import annotations

import os

import pytest

from monorecon.parallel import map_in_processes


def _power(exponent: int, base: int) -> tuple[int, int]:
    if base < 0:
        raise ValueError(f"negative base {base}")
    return base**exponent, os.getpid()


@pytest.mark.parametrize("workers", [1, 2])
def test_results_in_order_with_the_shared_argument(workers):
    results = list(map_in_processes(_power, range(7), workers, shared=3))
    assert [value for value, _ in results] == [0, 1, 8, 27, 64, 125, 216]
    processes = {pid for _, pid in results}
    assert (processes == {os.getpid()}) if workers == 1 else (os.getpid() not in processes)


def test_a_failed_job_raises_in_the_caller_and_bad_counts_are_refused():
    results = map_in_processes(_power, [2, -1, 3], 2, shared=2)
    assert next(results)[0] == 4  # lazy: the failure is raised when its result is reached
    with pytest.raises(ValueError, match="negative base -1"):
        next(results)
    for bad in (0, 257, 2.0, True):
        with pytest.raises(ValueError, match="workers must"):
            map_in_processes(_power, [1], bad, shared=2)
