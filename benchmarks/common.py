"""Shared pieces of the benchmarks: the machine, its measured matmul peak, interleaved timing."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def machine() -> str:
    """One line: CPU model, cores, the instruction sets that matter for fp32/bf16, torch version."""
    cpu, flags = platform.processor() or "unknown CPU", set()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text(encoding="utf-8").splitlines():
            if line.startswith("model name") and cpu in ("unknown CPU", "x86_64", ""):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {torch.get_num_threads()} threads, ISA {'/'.join(isa) or 'n/a'}{gpu}; "
            f"torch {torch.__version__}")


def cpu_has_fast_bf16() -> bool:
    """bf16 matmuls are fast on a CPU only with AVX-512 BF16 or AMX; elsewhere they are emulated."""
    info = Path("/proc/cpuinfo")
    flags = info.read_text(encoding="utf-8") if info.is_file() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 10) -> float:
    """The machine's own dense matmul throughput in FLOP/s: the best of `repeats` n x n products."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2,
                device: torch.device | None = None) -> dict[str, float]:
    """Median seconds per call of each function, calling them in turn (a, b, a, b, ...) so that slow
    drifts of the machine (other processes, clocks) touch all of them alike."""
    device = device or torch.device("cpu")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def timing_cells(seconds: float, tokens: int, reference: float) -> list[str]:
    """ms, tokens/s and the speed ratio against `reference` seconds, formatted for `table`."""
    return [f"{1000 * seconds:.1f}", f"{tokens / seconds:,.0f}", f"{reference / seconds:.2f}x"]


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (printed, and pasted into docs/benchmarks.md)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
