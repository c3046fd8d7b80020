"""``make serve`` runs the real-time controller next to tritonserver: ``python -m controller serve`` as a
child process pointed at the server's gRPC port (``CONTROLLER_PORT``, default 8765; ``off`` disables it).

Started as a separate interpreter (not imported): the controller sits above this package.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ControllerSidecar:
    def __init__(self, triton_grpc_url: str, port: int, host: str = "127.0.0.1", extra_args: tuple[str, ...] = (),
                 log_path: Path | None = None):
        self.triton_grpc_url, self.port, self.host = triton_grpc_url, port, host
        self.extra_args, self.log_path = tuple(extra_args), log_path  # log_path: its output there, not ours
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/v1/realtime"

    def start(self, timeout_s: float = 60.0) -> ControllerSidecar:
        cmd = [sys.executable, "-m", "controller", "serve", "--triton", self.triton_grpc_url,
               "--host", self.host, "--port", str(self.port), *self.extra_args]
        out = open(self.log_path, "ab") if self.log_path is not None else None  # the child keeps its own copy
        self.proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT if out else None)
        if out is not None:
            out.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the controller exited with code {self.proc.returncode}")
            try:
                urllib.request.urlopen(f"http://{self.host}:{self.port}/healthz", timeout=2).close()
                return self
            except urllib.error.HTTPError:
                return self  # it answers (503: a model is not ready yet)
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the controller did not answer on port {self.port} within {timeout_s:.0f} s")

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# The embedded tiny checkpoints' random TTS LM rarely ends a clause by itself: the controller's default
# budget (1024 TTS tokens a clause, 256 chat tokens a reply) makes each reply take minutes of CPU there.
TINY_CONTROLLER_ARGS = ("--max-reply-tokens", "24", "--tts-max-new-tokens", "150")


def start_sidecar(triton_grpc_url: str, tiny: bool = False) -> ControllerSidecar | None:
    """The controller for ``make serve``, or None when CONTROLLER_PORT=off or it cannot start.
    ``CONTROLLER_ARGS`` (shell words) replaces the reply limits chosen for the tiny checkpoints."""
    port = os.environ.get("CONTROLLER_PORT", "8765")
    if port.lower() in ("off", "none", ""):
        return None
    extra = os.environ.get("CONTROLLER_ARGS")
    extra_args = tuple(shlex.split(extra)) if extra is not None else TINY_CONTROLLER_ARGS if tiny else ()
    if extra_args:
        print(f"[serve] controller options: {' '.join(extra_args)}", flush=True)
    sidecar = ControllerSidecar(triton_grpc_url, int(port), os.environ.get("CONTROLLER_HOST", "127.0.0.1"),
                                extra_args=extra_args)
    try:
        sidecar.start()
    except RuntimeError as exc:
        print(f"[serve] controller not started: {exc}", flush=True)
        return None
    print(f"[serve] controller: {sidecar.url}  (health http://{sidecar.host}:{sidecar.port}/healthz)", flush=True)
    return sidecar
