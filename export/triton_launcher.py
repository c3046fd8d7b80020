"""Start, watch and stop a real `tritonserver` process.

Two sources for the binary:
- `tritonserver` on PATH (NGC images), used as it is;
- the build inside the `nvidia-pytriton` wheel, which needs a little preparation to run the Python
  backend (see shared/design/triton-on-cpu.md): the stub matching this interpreter is copied into
  `backends/python/`, the wheel's bundled libraries and this interpreter's libpython go on
  LD_LIBRARY_PATH, and this environment's `bin` goes first on PATH, because the stub runs its embedded
  Python isolated (PYTHONPATH is ignored) and finds site-packages through the `python3` on PATH.

Usage:
    with TritonServer(Path("build/model_repository")) as server:   # free ports, log in a file
        client = tritonclient.grpc.InferenceServerClient(server.grpc_url)

    python -m export.triton_launcher --model-repository DIR        # foreground, Ctrl-C stops it

This module imports no torch: it is used by tests and by the `serve` entry point.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

LOG_TAIL_LINES = 60
_POLL_INTERVAL_S = 0.05


class TritonNotFoundError(RuntimeError):
    pass


class TritonStartError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class TritonBinary:
    path: Path
    # None: the binary's built-in default (/opt/tritonserver/backends in NGC images).
    backend_dir: Path | None
    # Variables to set (not merely add) in the server's environment; built from the current
    # environment, so they already include its PATH / LD_LIBRARY_PATH entries.
    env: Mapping[str, str]


def find_tritonserver() -> TritonBinary:
    on_path = shutil.which("tritonserver")
    if on_path:
        return TritonBinary(path=Path(on_path), backend_dir=None, env={})

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotFoundError(
            "no tritonserver found: none on PATH and the `nvidia-pytriton` package is not installed "
            f"for {sys.executable}. Run `make setup` (installs the `serve` extra), or use an NGC "
            "tritonserver image."
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    server_dir = package_dir / "tritonserver"
    binary = server_dir / "bin" / "tritonserver"
    if not binary.is_file():
        raise TritonNotFoundError(f"the pytriton package at {package_dir} has no {binary}")

    backend_dir = server_dir / "backends"
    _install_python_stub(server_dir, backend_dir / "python")

    # auditwheel puts the bundled libraries beside the package: site-packages/nvidia_pytriton.libs
    bundled_libs = package_dir.parent / "nvidia_pytriton.libs"
    lib_dirs = [str(bundled_libs)]
    python_libdir = sysconfig.get_config_var("LIBDIR")
    if python_libdir:
        # The stub links libpython3.X.so: it must be the one of the interpreter that owns the venv.
        lib_dirs.append(python_libdir)
    env = {
        "LD_LIBRARY_PATH": _prepend_paths(lib_dirs, os.environ.get("LD_LIBRARY_PATH", "")),
        # Not resolved: a venv's python is a symlink, and its bin dir is what locates the venv.
        "PATH": _prepend_paths([os.path.dirname(sys.executable)], os.environ.get("PATH", "")),
    }
    return TritonBinary(path=binary, backend_dir=backend_dir, env=env)


def _install_python_stub(server_dir: Path, python_backend_dir: Path) -> None:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    source = server_dir / "python_backend_stubs" / version / "triton_python_backend_stub"
    target = python_backend_dir / "triton_python_backend_stub"
    if not source.is_file():
        raise TritonNotFoundError(f"pytriton ships no Python backend stub for Python {version} ({source})")
    if target.is_file() and target.stat().st_size == source.stat().st_size and os.access(target, os.X_OK):
        return
    try:
        # Copy beside the target, then rename: a concurrent start never sees a half-written stub.
        fd, tmp_name = tempfile.mkstemp(prefix=".stub-", dir=python_backend_dir)
        os.close(fd)
        try:
            shutil.copyfile(source, tmp_name)
            os.chmod(tmp_name, 0o755)
            os.replace(tmp_name, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
    except OSError as exc:
        raise TritonNotFoundError(
            f"cannot install the Python backend stub into {python_backend_dir} ({exc}); "
            f"copy {source} there by hand"
        ) from exc


def _prepend_paths(first: Sequence[str], existing: str) -> str:
    parts = list(first)
    parts += [p for p in existing.split(os.pathsep) if p and p not in parts]
    return os.pathsep.join(parts)


def pick_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(deque(text.splitlines(), maxlen=lines))


# An error-level line such as:
#   E1125 21:52:39.609758 4023 model_lifecycle.cc:642] "failed to load 'broken' version 1: Internal: ..."
_LOAD_ERROR = re.compile(r"^E\d{4} [^\]]*\] \"?failed to load '[^']*' version", re.MULTILINE)


def model_load_errors(log_text: str) -> list[str]:
    """The model load failures a tritonserver log reports, their escaped newlines restored."""
    errors = []
    for match in _LOAD_ERROR.finditer(log_text):
        line_end = log_text.find("\n", match.start())
        line = log_text[match.start() : line_end if line_end >= 0 else None]
        errors.append(line.replace("\\n", "\n"))
    return errors


# Servers still running when the interpreter exits are stopped, so a crashed test session or a REPL
# does not leave a server holding its ports.
_live_servers: weakref.WeakSet[TritonServer] = weakref.WeakSet()


@atexit.register
def _stop_live_servers() -> None:
    for server in list(_live_servers):
        server.stop(timeout_s=10)


class TritonServer:
    def __init__(
        self,
        model_repository: Path,
        http_port: int = 0,
        grpc_port: int = 0,
        metrics_port: int = 0,
        log_path: Path | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        log_verbose: int = 0,
        *,
        bind_address: str = "127.0.0.1",
        foreground: bool = False,
        binary: TritonBinary | None = None,
    ) -> None:
        self.model_repository = Path(model_repository)
        self._requested_ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        self.ports: dict[str, int] = {}
        self._log_path = Path(log_path) if log_path is not None else None
        self._log_is_temp = False  # a temporary log is removed by stop(), unless the start failed
        self._keep_log = False
        self._log_cache: str | None = None
        self.extra_args = tuple(extra_args)
        self.env = dict(env or {})
        self.log_verbose = log_verbose
        self.bind_address = bind_address
        self.foreground = foreground
        self.binary = binary
        self._proc: subprocess.Popen[bytes] | None = None
        # The Python backend keeps its shared memory in /dev/shm/<prefix><uuid>. A server killed
        # before its clean shutdown (SIGTERM while loading, SIGKILL) leaves them behind; a prefix
        # of our own lets stop() remove exactly this server's regions.
        self._shm_prefix = f"triton_python_backend_shm_region_{uuid.uuid4().hex[:12]}_"

    # endpoints -----------------------------------------------------------------------------------

    def _url(self, kind: str) -> str:
        if kind not in self.ports:
            raise RuntimeError("the server has not been started")
        host = "127.0.0.1" if self.bind_address in ("0.0.0.0", "") else self.bind_address
        return f"{host}:{self.ports[kind]}"

    @property
    def http_url(self) -> str:
        return self._url("http")

    @property
    def grpc_url(self) -> str:
        return self._url("grpc")

    @property
    def metrics_url(self) -> str:
        return self._url("metrics")

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def log_text(self) -> str:
        """The server's stdout+stderr so far ("" in foreground mode, where it goes to the console)."""
        if self._log_cache is not None:
            return self._log_cache
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_text(errors="replace")

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # life cycle ----------------------------------------------------------------------------------

    def command(self) -> list[str]:
        binary = self.binary or find_tritonserver()
        args = [
            str(binary.path),
            f"--model-repository={self.model_repository.resolve()}",
            "--model-control-mode=none",
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--allow-metrics=true",
            f"--http-address={self.bind_address}",
            f"--grpc-address={self.bind_address}",
            f"--metrics-address={self.bind_address}",
            f"--http-port={self.ports['http']}",
            f"--grpc-port={self.ports['grpc']}",
            f"--metrics-port={self.ports['metrics']}",
            f"--log-verbose={self.log_verbose}",
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
        ]
        if binary.backend_dir is not None:
            args.append(f"--backend-directory={binary.backend_dir}")
        return args + list(self.extra_args)

    def start(self, timeout_s: float = 120) -> TritonServer:
        if self.is_running():
            return self
        if not self.model_repository.is_dir():
            raise TritonStartError(f"model repository {self.model_repository} is not a directory")
        if self.binary is None:
            self.binary = find_tritonserver()
        # A free port is only free until the server binds it: with all ports picked here, a start
        # that lost one to another process is retried on new ports.
        attempts = 1 if any(self._requested_ports.values()) else 3
        for attempt in range(1, attempts + 1):
            self.ports = {k: (v or pick_free_port()) for k, v in self._requested_ports.items()}
            try:
                self._launch(timeout_s)
                return self
            except TritonStartError:
                if attempt == attempts or "already in use" not in self.log_text():
                    raise
        raise AssertionError("unreachable")

    def _launch(self, timeout_s: float) -> None:
        assert self.binary is not None
        env = {**os.environ, **self.binary.env, **self.env}
        if self.foreground:
            output = None
        else:
            if self._log_path is None:
                fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
                os.close(fd)
                self._log_path, self._log_is_temp = Path(name), True
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            output = open(self._log_path, "wb")  # the child keeps its own descriptor
        self._log_cache = None
        self._keep_log = False
        try:
            # Own session (so its own process group): stop() signals the server and its stubs
            # together, and a Ctrl-C in the terminal reaches only the launcher, which then stops it.
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT if output else None,
                env=env,
                start_new_session=True,
            )
        finally:
            if output is not None:
                output.close()
        _live_servers.add(self)
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop(timeout_s=10)
            raise

    def _wait_ready(self, timeout_s: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout_s
        log_offset = 0
        while True:
            code = self._proc.poll()
            if code is not None:
                self._fail(f"tritonserver exited with code {code} before it was ready")
            if self._get("/v2/health/ready") == 200:
                return
            # A model that failed to load makes the start fail (--exit-on-error, strict readiness);
            # stop now rather than after the server has unloaded every other model.
            new_text, log_offset = self._read_log_from(log_offset)
            if _LOAD_ERROR.search(new_text):
                self._fail("a model failed to load")
            if time.monotonic() > deadline:
                self._fail(f"tritonserver was not ready after {timeout_s:.0f} s{self._model_states()}")
            time.sleep(_POLL_INTERVAL_S)

    def _read_log_from(self, offset: int) -> tuple[str, int]:
        """Whole lines appended to the log since `offset`, and the offset after them."""
        if self._log_path is None:
            return "", offset
        try:
            with open(self._log_path, "rb") as log:
                log.seek(offset)
                data = log.read()
        except FileNotFoundError:
            return "", offset
        data = data[: data.rfind(b"\n") + 1]
        return data.decode(errors="replace"), offset + len(data)

    def _fail(self, reason: str) -> None:
        self._keep_log = True
        self.stop(timeout_s=10)
        if self.foreground:
            raise TritonStartError(f"{reason}; see its log above")
        text = self.log_text()
        errors = "".join(f"  {e}\n" for e in model_load_errors(text))
        raise TritonStartError(
            f"{reason} (model repository {self.model_repository}).\n"
            + (f"Model load errors:\n{errors}" if errors else "")
            + f"Last {LOG_TAIL_LINES} lines of its log {self._log_path}:\n{_tail(text)}"
        )

    def _get(self, route: str, method: str = "GET") -> int | None:
        request = urllib.request.Request(f"http://{self.http_url}{route}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except (OSError, urllib.error.URLError):
            return None

    def _model_states(self) -> str:
        """Which models are not ready, when the server answers at all (e.g. --exit-on-error=false)."""
        request = urllib.request.Request(f"http://{self.http_url}/v2/repository/index", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                index = json.load(response)
        except (OSError, ValueError):
            return ""
        bad = [f"{m.get('name')}: {m.get('state')} {m.get('reason', '')}".strip() for m in index
               if m.get("state") != "READY"]
        return f"; models not ready: {'; '.join(bad)}" if bad else ""

    def wait(self) -> int:
        """Block until the server exits; Ctrl-C or SIGTERM to this process stops it cleanly."""
        if self._proc is None:
            raise RuntimeError("the server has not been started")

        def on_sigterm(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        in_main_thread = threading.current_thread() is threading.main_thread()
        # SIGINT too: a background job starts with SIGINT ignored, and `kill -INT` must still stop it.
        previous = {}
        if in_main_thread:
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, on_sigterm)
        try:
            return self._proc.wait()
        except KeyboardInterrupt:
            self.stop()
            return self._proc.returncode
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop(self, timeout_s: float = 30) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._signal_group(proc, signal.SIGKILL)
                proc.wait()
        if proc is not None:
            # Stubs orphaned by a crashed server are still in its group.
            self._signal_group(proc, signal.SIGKILL)
            for region in Path("/dev/shm").glob(f"{self._shm_prefix}*"):
                with contextlib.suppress(OSError):
                    region.unlink()
        _live_servers.discard(self)
        if self._log_is_temp and not self._keep_log and self._log_path is not None:
            self._log_cache = self.log_text()
            with contextlib.suppress(FileNotFoundError):
                self._log_path.unlink()

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"TritonServer({self.model_repository}, ports={self.ports}, {state})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export.triton_launcher",
        description="Serve a model repository with tritonserver in the foreground. "
        "Arguments it does not know are passed on to tritonserver.",
    )
    parser.add_argument("--model-repository", type=Path, required=True)
    for kind, default in (("http", 8000), ("grpc", 8001), ("metrics", 8002)):
        env_name = f"TRITON_{kind.upper()}_PORT"
        parser.add_argument(f"--{kind}-port", type=int, default=int(os.environ.get(env_name, default)),
                            help=f"default ${env_name} or {default}; 0 picks a free port")
    parser.add_argument("--bind-address", default=os.environ.get("TRITON_BIND_ADDRESS", "127.0.0.1"),
                        help="default $TRITON_BIND_ADDRESS or 127.0.0.1 (0.0.0.0 in a container)")
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.add_argument("--timeout-s", type=float, default=600, help="how long to wait for readiness")
    args, extra = parser.parse_known_args(argv)

    server = TritonServer(
        args.model_repository,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        extra_args=extra,
        log_verbose=args.log_verbose,
        bind_address=args.bind_address,
        foreground=True,
    )
    try:
        started_s = time.monotonic()
        server.start(timeout_s=args.timeout_s)
    except (TritonStartError, TritonNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        server.stop()
        return 130
    print(
        f"tritonserver ready in {time.monotonic() - started_s:.1f} s: "
        f"HTTP {server.http_url}  gRPC {server.grpc_url}  metrics http://{server.metrics_url}/metrics "
        "(Ctrl-C stops it)",
        flush=True,
    )
    code = server.wait()
    return 0 if code in (0, -signal.SIGTERM) else code


if __name__ == "__main__":
    sys.exit(main())
