"""Timing statistics, peak FLOP/s and peak memory shared by the benchmarks."""

from __future__ import annotations

import resource
import statistics
import sys
import time
from dataclasses import dataclass

import torch

# Dense matrix throughput in TFLOP/s by (device name fragment, dtype); first match wins.
# H100/H200 bf16: the anchor (about 790 reached in dense bf16 matmul; the spec sheet's
# figure is 989). A100: the spec sheet. Anything else needs --peak-tflops.
PEAK_TFLOPS: tuple[tuple[str, str, float], ...] = (
    ("H200", "bfloat16", 790.0),
    ("H100", "bfloat16", 790.0),
    ("H200", "float16", 790.0),
    ("H100", "float16", 790.0),
    ("A100", "bfloat16", 312.0),
    ("A100", "float16", 312.0),
    ("A100", "float32", 156.0),  # TF32
)


@dataclass(frozen=True)
class Spread:
    """Median and spread (min, max, interquartile range) of repeated timings, in seconds."""

    median: float
    minimum: float
    maximum: float
    iqr: float
    count: int

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        if not values:
            raise ValueError("no timings: raise --steps")
        quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
        iqr = quartiles[2] - quartiles[0]
        return cls(statistics.median(values), min(values), max(values), iqr, len(values))


CLOCKS = ("wall", "process")


def clock(kind: str):
    """A seconds counter: `wall` (perf_counter), or `process`: this process's CPU time divided by
    torch's thread count, about the wall time it would take on idle cores. On a shared CPU the
    process clock does not count time other programs take (workers' CPU time is not counted)."""
    if kind == "wall":
        return time.perf_counter
    if kind == "process":
        threads = torch.get_num_threads()
        return lambda: time.process_time() / threads
    raise ValueError(f"--clock {kind!r}: choose one of {CLOCKS}")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measured_cpu_peak_tflops(dtype: torch.dtype, size: int = 1024, repeats: int = 5,
                             clock_kind: str = "wall") -> float:
    """Best throughput of a (size × size) @ (size × size) matmul on this CPU, timed with the
    benchmark's clock: an approximate peak."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    now = clock(clock_kind)
    best = float("inf")
    for _ in range(repeats):
        start = now()
        a @ b
        best = min(best, now() - start)
    return 2 * size**3 / best / 1e12


def peak_tflops(device: torch.device, dtype: torch.dtype, given: float | None,
                clock_kind: str = "wall") -> tuple[float, str]:
    """(peak TFLOP/s, where it came from): `given`, the table for a known GPU, or a CPU matmul."""
    if given is not None:
        if given <= 0:
            raise ValueError(f"--peak-tflops must be positive, got {given}")
        return given, "--peak-tflops"
    if device.type == "cpu":
        peak = measured_cpu_peak_tflops(dtype, clock_kind=clock_kind)
        return peak, f"measured 1024x1024 matmul on this CPU, {clock_kind} clock (approximate)"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    dtype_name = str(dtype).removeprefix("torch.")
    for fragment, table_dtype, value in PEAK_TFLOPS:
        if fragment in name and table_dtype == dtype_name:
            return value, f"table entry {fragment} {table_dtype}"
    raise ValueError(f"no peak FLOP/s known for {name} in {dtype_name}: give --peak-tflops")


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> tuple[int, str]:
    """(bytes, what they are): CUDA's peak allocation since the last reset, or on CPU the
    process's peak resident set (all methods together: the CPU has no per-phase peak)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024, "process peak RSS"
