"""One timing rule for every benchmark pair: same threads, one warm-up call each, then the median of N calls,
the methods interleaved call by call (so a burst of load from other processes hits every method alike)."""
from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run the block with ``threads`` threads (None: leave as is) in torch and in every OpenMP / BLAS runtime
    loaded in the process (pykdtree bundles its own libgomp), via threadpoolctl; yields torch's count."""
    before = torch.get_num_threads()
    limits = contextlib.nullcontext()
    if threads is not None:
        torch.set_num_threads(threads)
        try:
            from threadpoolctl import threadpool_limits  # a scikit-learn dependency
            limits = threadpool_limits(limits=threads)
        except ImportError:
            pass
    try:
        with limits:
            yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def median_ms(fns: dict[str, Callable[[], object]], repeats: int, device="cpu",
              slow_s: float | None = None) -> dict[str, float]:
    """{name: median wall time in ms}: each function is called once to warm up, then ``repeats`` times, in turn.

    slow_s: a function whose warm-up call took longer than this is not repeated (its warm-up time is reported).
    """
    return median_wall_and_cpu_ms(fns, repeats, device, slow_s)[0]


def median_wall_and_cpu_ms(fns: dict[str, Callable[[], object]], repeats: int, device="cpu",
                           slow_s: float | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """:func:`median_ms`, and also the median CPU time of the process per call (all its threads). On a shared
    machine the CPU time of a single-threaded call is the part that does not depend on waiting for a core."""
    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}

    def call(name: str) -> None:
        sync(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        fns[name]()
        sync(device)
        wall.setdefault(name, []).append(time.perf_counter() - start)
        cpu.setdefault(name, []).append(time.process_time() - start_cpu)

    for name in fns:
        call(name)
    timed = [name for name in fns if slow_s is None or wall[name][0] <= slow_s]
    for name in fns:
        if name in timed:
            wall[name].pop()
            cpu[name].pop()
    for _ in range(repeats):
        for name in timed:
            call(name)
    return ({name: 1e3 * statistics.median(times) for name, times in wall.items()},
            {name: 1e3 * statistics.median(times) for name, times in cpu.items()})
