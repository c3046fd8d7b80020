"""Shared helpers of the benchmark scripts: percentiles, workloads, machine info, the JSON writer.

Every result file is ``<out>/<name>.json`` with the same envelope::

    {"name", "timestamp_utc", "git": {"sha", "dirty"}, "machine": {...}, "config": {...}, "results": {...}}

This module imports no torch at import time (the test and the parent processes stay light).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
SAMPLE_RATE_HZ = 16000

# Read by espeak-ng for the speech workloads; plain English, deterministic output.
SENTENCES = (
    "The quick brown fox jumps over the lazy dog, and then it runs far away into the green forest.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "Six spoons of fresh snow peas, five thick slabs of blue cheese, and maybe a snack for her brother Bob.",
    "We also need a small plastic snake and a big toy frog for the kids.",
    "She can scoop these things into three red bags, and we will go meet her Wednesday at the train station.",
    "When the sunlight strikes raindrops in the air, they act as a prism and form a rainbow.",
    "The rainbow is a division of white light into many beautiful colors.",
    "These take the shape of a long round arch, with its path high above, and its two ends apparently beyond the horizon.",
)


# -- statistics -------------------------------------------------------------------------------------
def percentiles(values: Iterable[float], scale: float = 1.0, digits: int = 3) -> dict[str, float | int]:
    """count, mean, p50, p90, p99, max of ``values * scale`` (e.g. scale=1000 for s -> ms)."""
    a = np.asarray(list(values), dtype=np.float64) * scale
    if a.size == 0:
        return {"count": 0}
    out: dict[str, float | int] = {"count": int(a.size), "mean": float(a.mean())}
    for q in (50, 90, 99):
        out[f"p{q}"] = float(np.percentile(a, q))
    out["max"] = float(a.max())
    return {k: (round(v, digits) if isinstance(v, float) else v) for k, v in out.items()}


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


# -- provenance -------------------------------------------------------------------------------------
def git_info() -> dict[str, object]:
    def run(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        sha = run("rev-parse", "HEAD")
        dirty = bool(run("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}
    return {"sha": sha or None, "dirty": dirty}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def host_speed(repeats: int = 5) -> dict[str, float]:
    """Two single-threaded speed probes of the host (~0.3 s), so runs on different hosts can be compared:
    the VM's name and CPU model can stay the same while the hardware under it does the same work in ~1.8x
    fewer CPU-seconds (seen between two hosts of the same 2-vCPU VM, ``benchmarks/README.md``).
    ``python_mloops_per_s``: million iterations of a small interpreted loop per second (the controller and
    the stubs' bookkeeping); ``numpy_mexp_per_s``: million float32 ``exp`` per second (elementwise kernels).
    Best of ``repeats``: a probe that another process interrupted only reads slower."""
    def loop(n: int) -> int:
        acc = 0
        for i in range(n):
            acc += i & 7
        return acc

    x = np.linspace(-4.0, 4.0, 1 << 20, dtype=np.float32)
    out = np.empty_like(x)
    best_loop = best_exp = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        loop(1_000_000)
        best_loop = min(best_loop, time.perf_counter() - t)
        t = time.perf_counter()
        for _ in range(8):
            np.exp(x, out=out)
        best_exp = min(best_exp, time.perf_counter() - t)
    return {"python_mloops_per_s": round(1.0 / best_loop, 2), "numpy_mexp_per_s": round(8 * x.size / best_exp / 1e6, 1)}


def machine_info(include_torch: bool = True, probe_speed: bool = True) -> dict[str, object]:
    """The machine a result came from; ``probe_speed``: with ``host_speed()`` (~0.3 s of one core)."""
    info: dict[str, object] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "mem_total_gb": _mem_total_gb(),
    }
    torch = sys.modules.get("torch")
    if torch is None and include_torch:
        try:
            import torch
        except ImportError:
            torch = None
    if torch is not None:  # this process's setting (a fresh process defaults to the core count)
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if probe_speed:
        info["host_speed"] = host_speed()
    return info


# -- other load on the machine -----------------------------------------------------------------------
def cpu_busy_s() -> float:
    """CPU seconds all processes have spent busy since boot (every core, from /proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return float("nan")
    ticks = [int(x) for x in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds of this process and its waited-for children."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


class BackgroundLoad:
    """CPU used by *other* processes while a measurement runs: busy time of the machine minus our own.

    with BackgroundLoad() as bg: ...;  bg.result() -> {"other_cpu_s", "other_cpu_share", "wall_s"}
    A share near 0 means the numbers are clean; a large one means something else competed for the cores.
    """

    def start(self) -> BackgroundLoad:
        self._t, self._busy, self._own = time.perf_counter(), cpu_busy_s(), own_cpu_s()
        return self

    def stop(self) -> BackgroundLoad:
        self.wall_s = time.perf_counter() - self._t
        self.other_s = max(0.0, (cpu_busy_s() - self._busy) - (own_cpu_s() - self._own))
        return self

    def __enter__(self) -> BackgroundLoad:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def result(self) -> dict[str, float]:
        cores = os.cpu_count() or 1
        return {"wall_s": round(self.wall_s, 2), "other_cpu_s": round(self.other_s, 2),
                "other_cpu_share": round(self.other_s / (self.wall_s * cores), 3) if self.wall_s else 0.0}


def wait_for_quiet(max_wait_s: float = 0.0, threshold: float = 0.1, window_s: float = 2.0, log=None) -> dict:
    """Wait (up to ``max_wait_s``) until other processes use less than ``threshold`` of the machine's
    CPU over a ``window_s`` window; returns the last window's share and the seconds waited."""
    waited, share = 0.0, None
    while True:
        with BackgroundLoad() as bg:
            time.sleep(window_s)
        share = bg.result()["other_cpu_share"]
        if share < threshold or waited >= max_wait_s:
            break
        if log and waited == 0:
            log(f"  waiting for a quiet machine (others use {100 * share:.0f}% of the CPU) ...")
        waited += window_s
    return {"other_cpu_share_before": share, "waited_s": round(waited, 1)}


def parallel_speedup(loops: int = 10_000_000) -> dict[str, float]:
    """Throughput of two CPU-bound processes over one (2.0: two real cores; ~1.0: they share one).

    Pure-Python loops in fresh interpreters, so no thread pool or library is involved."""
    code = f"for i in range({loops}): pass"

    def run(n: int) -> float:
        t = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]
        for p in procs:
            p.wait()
        return time.perf_counter() - t

    one, two = run(1), run(2)
    return {"one_process_s": round(one, 3), "two_processes_s": round(two, 3), "speedup": round(2 * one / two, 2)}


def write_result(
    name: str, config: dict, results: dict, out_dir: str | Path = RESULTS_DIR, machine: dict | None = None
) -> Path:
    """Write ``<out_dir>/<name>.json`` atomically and return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "name": name,
        "timestamp_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git": git_info(),
        "machine": machine or machine_info(),
        "config": config,
        "results": results,
    }
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=False, default=_json_default) + "\n")
    os.replace(tmp, path)
    return path


def _json_default(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def audio_digest(audio: np.ndarray) -> str:
    """Short fingerprint of a float32 waveform, to tell whether two runs saw the same samples."""
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(audio, dtype=np.float32).tobytes()).hexdigest()[:16]


# -- workloads --------------------------------------------------------------------------------------
def espeak_available() -> bool:
    return bool(shutil.which("espeak-ng") and shutil.which("sox"))


def espeak_version() -> str | None:
    if not shutil.which("espeak-ng"):
        return None
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout
    # "eSpeak NG text-to-speech: 1.51  Data at: ..."
    head, _, rest = out.partition(":")
    return f"{head.strip()} {rest.split()[0]}" if rest.split() else (head.strip() or None)


def espeak_speech(text: str, sample_rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """``text`` read by espeak-ng, resampled by sox, as float32 mono. Needs both tools."""
    import soundfile as sf

    with tempfile.TemporaryDirectory(prefix="bench-espeak-") as tmp:
        raw, out = Path(tmp) / "raw.wav", Path(tmp) / "out.wav"
        subprocess.run(["espeak-ng", "-w", str(raw), text], check=True, capture_output=True)
        # -D: sox dithers by default when it writes 16-bit samples, which would make every run differ.
        subprocess.run(["sox", "-D", str(raw), "-r", str(sample_rate_hz), "-b", "16", str(out)], check=True,
                       capture_output=True)
        audio, sr = sf.read(str(out), dtype="float32", always_2d=False)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    assert sr == sample_rate_hz, sr
    return np.ascontiguousarray(audio, dtype=np.float32)


def synthetic_speech(seconds: float, seed: int = 0, sample_rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """Seeded speech-like signal: voiced 'syllables' (harmonics under moving formant-like resonances,
    a wandering F0), unvoiced noise bursts and short pauses; peak 0.6."""
    rng = np.random.default_rng([seed, 2024])
    n = round(seconds * sample_rate_hz)
    out = np.zeros(n, dtype=np.float64)
    pos = int(0.15 * sample_rate_hz)
    while pos < n:
        dur = int(rng.uniform(0.12, 0.32) * sample_rate_hz)
        seg = np.arange(min(dur, n - pos)) / sample_rate_hz
        if rng.random() < 0.8:  # voiced
            f0 = rng.uniform(90, 220) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(1, 4) * seg))
            phase = 2 * np.pi * np.cumsum(f0) / sample_rate_hz
            formants = rng.uniform([300, 900, 2200], [800, 2000, 3200])
            x = np.zeros_like(seg)
            for k in range(1, 30):
                fk = k * f0
                gain = sum(np.exp(-((fk - f) / 150.0) ** 2) for f in formants) + 0.05
                x += gain * np.sin(k * phase) / k
        else:  # fricative
            x = rng.standard_normal(len(seg)) * 0.3
            x = np.diff(x, prepend=0.0)
        env = np.sin(np.pi * np.arange(len(seg)) / max(len(seg), 1)) ** 0.5
        out[pos : pos + len(seg)] += env * x
        pos += len(seg) + int(rng.choice([0.0, 0.03, 0.25], p=[0.5, 0.35, 0.15]) * sample_rate_hz)
    out += 0.002 * rng.standard_normal(n)
    return (0.6 * out / max(np.abs(out).max(), 1e-9)).astype(np.float32)


def speech_workload(seconds: float, seed: int = 0, use_espeak: bool = True) -> tuple[np.ndarray, str]:
    """``seconds`` of 16 kHz audio and a description of its source.

    espeak-ng sentences (cycled from ``seed``) until long enough, then cut; or, without the tools,
    the seeded synthetic signal.
    """
    n = round(seconds * SAMPLE_RATE_HZ)
    if use_espeak and espeak_available():
        parts, total, i = [], 0, seed
        while total < n:
            part = espeak_speech(SENTENCES[i % len(SENTENCES)])
            parts.append(part)
            total += len(part)
            i += 1
        return np.concatenate(parts)[:n], f"espeak-ng ({espeak_version()}), sentences from #{seed}, sox to 16 kHz"
    return synthetic_speech(seconds, seed), f"synthetic speech-like signal, seed {seed}"


def csv_of(kind):
    """argparse type: a comma-separated list of ``kind`` values ("1,2,4" -> [1, 2, 4])."""
    return lambda s: [kind(x) for x in s.split(",") if x.strip()]


def model_cpu_s(pgid: int | None) -> dict[str, float]:
    """CPU seconds (user + system) so far of the live processes in process group ``pgid`` (tritonserver and
    its Python-backend stubs: the launcher starts it in its own session), by model: the stub's instance name
    ``<model>_<i>_<j>`` on its command line; ``tritonserver`` for the server itself."""
    if not pgid:
        return {}
    out: dict[str, float] = {}
    tck = os.sysconf("SC_CLK_TCK")
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after the name: state ppid pgrp ... utime(11) stime(12)
            if int(fields[2]) != pgid:
                continue
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        name = "tritonserver"
        for a in argv:
            m = re.fullmatch(rb"(\w+?)_\d+_\d+", a)
            if m and b"triton_python_backend_stub" in argv[0]:
                name = m.group(1).decode()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tck
    return out
