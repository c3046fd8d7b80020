"""Reproduces the Python-backend stub crash that Triton 2.51 (python_backend before b771f4f) suffers under
concurrent streaming, and shows that this project's workarounds remove it.

    .venv/bin/python tools/stub_gil_repro/stress.py --target lm [--fixed] [--minutes 4] [--streams 16]

``--target lm``: clients stream from ``lm`` asking only for TOKEN_IDS; the stub prunes the other five
outputs of every response without the GIL (``--fixed``: the model builds only the requested outputs).
``--target front``: clients stream from ``front``, which streams from ``lm`` over BLS; the stub's C++
thread destroys finished BLS iterators without the GIL, and ``lm`` prunes what ``front`` did not ask for
(``--fixed``: iterators kept in a Graveyard, only requested outputs built).
A dead stub (or no response for 20 s) counts as a crash; the server is then restarted and the run goes
on until ``--minutes`` are spent. Prints one JSON line: crashes, requests, responses.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
from export.triton_launcher import TritonServer  # noqa: E402


def stub_alive(server_pid: int) -> bool:
    """Every stub child of the server is running (a dead one is a zombie or gone)."""
    import subprocess

    out = subprocess.run(["ps", "-o", "stat=,args=", "--ppid", str(server_pid)], capture_output=True,
                         text=True).stdout
    stubs = [line for line in out.splitlines() if "triton_python_backend_stub" in line or "<defunct>" in line]
    return len(stubs) == 2 and not any(line.lstrip().startswith("Z") for line in stubs)


def stream_forever(url: str, target: str, n: int, stop: threading.Event, counts: dict) -> None:
    client = grpcclient.InferenceServerClient(url)
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        while not stop.is_set():
            inputs = [grpcclient.InferInput("N", [1], "INT32")]
            inputs[0].set_data_from_numpy(np.array([n], np.int32))
            outputs = None
            if target == "lm":
                rid = grpcclient.InferInput("REQUEST_ID", [1], "BYTES")
                rid.set_data_from_numpy(np.array([b"r"], np.object_))
                inputs.append(rid)
                outputs = [grpcclient.InferRequestedOutput("TOKEN_IDS")]
            client.async_stream_infer(target, inputs, outputs=outputs, enable_empty_final_response=True)
            counts["requests"] += 1
            while True:
                result, error = answers.get(timeout=20)
                if error is not None:
                    counts["errors"] += 1
                    return
                counts["responses"] += 1
                if result.get_response().parameters["triton_final_response"].bool_param:
                    break
    except queue.Empty:
        counts["errors"] += 1
    finally:
        try:
            client.stop_stream()
            client.close()
        except Exception:
            pass


def one_server(args, deadline: float, counts: dict, log_dir: Path, run: int) -> dict | None:
    """Serves until the deadline or a crash; returns the crash (None if the time ran out)."""
    env = {"REPRO_FIXED": "1" if args.fixed else "0"}
    server = TritonServer(HERE / "models", env=env, log_path=log_dir / f"tritonserver-{run}.log").start(timeout_s=120)
    stop, threads, t0 = threading.Event(), [], time.monotonic()
    last, last_t, crash = -1, t0, None
    try:
        while time.monotonic() < deadline and crash is None:
            threads = [t for t in threads if t.is_alive()]
            while len(threads) < args.streams:  # a client whose stream failed is replaced
                t = threading.Thread(target=stream_forever, args=(server.grpc_url, args.target, args.n, stop, counts),
                                     daemon=True)
                t.start()
                threads.append(t)
            time.sleep(0.5)
            if counts["responses"] != last:
                last, last_t = counts["responses"], time.monotonic()
            dead, stalled = not stub_alive(server.pid), time.monotonic() - last_t > 20
            if dead or stalled:
                crash = {"after_s": round(time.monotonic() - t0, 1), "stub_died": dead, "stalled": stalled}
    finally:
        stop.set()
        server.stop(timeout_s=20)
        for t in threads:
            t.join(timeout=2)
    return crash


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", choices=("lm", "front"), required=True)
    p.add_argument("--fixed", action="store_true", help="the models use this project's workarounds")
    p.add_argument("--minutes", type=float, default=4.0)
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--n", type=int, default=60, help="responses per request")
    args = p.parse_args()
    counts = {"requests": 0, "responses": 0, "errors": 0}
    crashes, deadline, run = [], time.monotonic() + args.minutes * 60, 0
    with tempfile.TemporaryDirectory(prefix="stub-gil-") as tmp:
        while time.monotonic() < deadline - 10:
            crash = one_server(args, deadline, counts, Path(tmp), run)
            run += 1
            if crash is not None:
                crashes.append(crash)
                print(f"crash: {crash}", file=sys.stderr, flush=True)
    print(json.dumps({"target": args.target, "fixed": args.fixed, "minutes": args.minutes, "streams": args.streams,
                      "crashes": len(crashes), "crash_details": crashes, "server_runs": run, **counts}))


if __name__ == "__main__":
    main()
