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
    times: dict[str, list[float]] = {}
    warm: dict[str, float] = {}
    for name, fn in fns.items():
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        warm[name] = time.perf_counter() - start
    timed = [name for name in fns if slow_s is None or warm[name] <= slow_s]
    for _ in range(repeats):
        for name in timed:
            sync(device)
            start = time.perf_counter()
            fns[name]()
            sync(device)
            times.setdefault(name, []).append(time.perf_counter() - start)
    return {name: 1e3 * (statistics.median(times[name]) if name in times else warm[name]) for name in fns}
