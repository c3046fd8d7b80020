"""``make demo``: the whole stack on the embedded default, holding a scripted spoken conversation.

Generates the tiny checkpoints (first run), renders the model repository, starts tritonserver and the
controller, then runs ``client.demo_conversation`` through the unmodified ``openai`` SDK: a pause that
triggers a speculative reply, a committed speculation, a barge-in. Prints the timeline and a latency
table, writes the replies to ``demo-output/``, and stops everything (also on Ctrl-C).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

from export.triton_launcher import pick_free_port

OUTPUT_DIR = Path(os.environ.get("DEMO_OUTPUT", Path(__file__).resolve().parent.parent / "demo-output"))
# Small replies keep the tiny models' CPU time short; the random weights make them noise anyway.
CONTROLLER_ARGS = ("--seed", "0", "--max-reply-tokens", "24", "--tts-max-new-tokens", "150", "--pause-ms", "200",
                   "--log-level", "WARNING")


def _say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


class _Ticker:
    """Prints elapsed time every few seconds while a long step runs, so progress stays visible."""

    def __init__(self, what: str, every_s: float = 5.0):
        self.what, self.every_s, self._stop = what, every_s, threading.Event()

    def __enter__(self) -> _Ticker:
        self.t0 = time.perf_counter()
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            _say(f"  ... {self.what} ({time.perf_counter() - self.t0:.0f} s)")

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


def _report(result) -> None:
    from client.demo_conversation import latency_table

    _say("latency (from the end of each utterance):\n")
    print(latency_table(result))
    spec = result.speculation
    print(f"\nspeculation: {spec.get('started', 0):.0f} started, {spec.get('committed', 0):.0f} committed, "
          f"{spec.get('discarded', 0):.0f} discarded")
    print(f"replies written to {OUTPUT_DIR}/ (24 kHz WAV)\n")
    print("The tiny preset's random weights make the replies noise-like audio and arbitrary text; the timing,\n"
          "streaming and turn-taking are real. Serve the official checkpoints with CHECKPOINTS=DIR (README).\n"
          "DEMO_STAY=1 make demo keeps the stack up afterwards for the browser demo.", flush=True)


def run_demo(checkpoints: Path, out: Path, preset: str, overrides: list[str]) -> int:
    from client.demo_conversation import run
    from export.__main__ import build
    from export.controller_sidecar import ControllerSidecar
    from export.triton_launcher import TritonServer

    _say("step 1/4: rendering the model repository")
    report = build(checkpoints, out, preset, overrides)
    logs = Path(tempfile.mkdtemp(prefix="stepaudio-demo-"))
    _say(f"step 2/4: starting tritonserver with {len(report.models)} models (log: {logs / 'tritonserver.log'})")
    t0 = time.perf_counter()
    port = int(os.environ.get("CONTROLLER_PORT", 0)) or pick_free_port()
    with TritonServer(out, http_port=int(os.environ.get("TRITON_HTTP_PORT", 0)),
                      grpc_port=int(os.environ.get("TRITON_GRPC_PORT", 0)),
                      metrics_port=int(os.environ.get("TRITON_METRICS_PORT", 0)),
                      log_path=logs / "tritonserver.log") as server:
        with _Ticker("loading models"):
            server.start(timeout_s=600)
        _say(f"  ready in {time.perf_counter() - t0:.0f} s: gRPC {server.grpc_url}")
        _say(f"step 3/4: starting the controller (log: {logs / 'controller.log'})")
        controller = ControllerSidecar(server.grpc_url, port, extra_args=CONTROLLER_ARGS,
                                       log_path=logs / "controller.log")
        try:
            controller.start()
            base = f"http://{controller.host}:{controller.port}"
            _say(f"  Realtime endpoint {controller.url}; browser demo at {base}/ (while this runs)")
            _say("step 4/4: a spoken conversation through the openai SDK's Realtime client\n")
            result = run(controller.url, f"{base}/metrics", OUTPUT_DIR, print_line=lambda s: print(s, flush=True))
            _report(result)
            if os.environ.get("DEMO_STAY", "0") not in ("0", ""):
                _say(f"DEMO_STAY: serving on until Ctrl-C; open {base}/ for the browser demo")
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    pass
        finally:
            controller.stop()
        _say("stopping tritonserver")
    _say("done")
    return 0
