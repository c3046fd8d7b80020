"""Helpers for tests against a real tritonserver.

    @pytest.fixture(scope="module")
    def server(tmp_path_factory):
        repo = tmp_path_factory.mktemp("repo")
        write_model(repo, "echo", ECHO_CONFIG, ECHO_MODEL)
        with start_server(repo) as server:
            yield server

TRITON_LOG_VERBOSE=1 in the environment makes every test server log verbosely.
"""

from __future__ import annotations

import os
import queue
import textwrap
from pathlib import Path

import tritonclient.grpc as grpcclient

from export.triton_launcher import TritonServer


def start_server(repo_dir: Path, *, timeout_s: float = 120, **kw) -> TritonServer:
    """A started server on free ports (a context manager: leaving it stops the server)."""
    kw.setdefault("log_verbose", int(os.environ.get("TRITON_LOG_VERBOSE", "0")))
    return TritonServer(Path(repo_dir), **kw).start(timeout_s=timeout_s)


def write_model(repo_dir: Path, name: str, config_pbtxt: str, model_py: str, version: int = 1) -> Path:
    """Writes <repo>/<name>/config.pbtxt and <repo>/<name>/<version>/model.py (dedented)."""
    model_dir = Path(repo_dir) / name
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(textwrap.dedent(config_pbtxt).strip() + "\n")
    (model_dir / str(version) / "model.py").write_text(textwrap.dedent(model_py).lstrip())
    return model_dir


def stream_infer(
    client: grpcclient.InferenceServerClient,
    model_name: str,
    inputs: list[grpcclient.InferInput],
    timeout_s: float = 30,
    **infer_kw,
) -> list[grpcclient.InferResult]:
    """Sends one request to a decoupled model; returns its responses, without the empty final one.

    Raises the first error the stream reports, and TimeoutError when the final flag does not come.
    """
    responses: queue.Queue[tuple[grpcclient.InferResult | None, Exception | None]] = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        client.async_stream_infer(model_name, inputs, enable_empty_final_response=True, **infer_kw)
        results = []
        while True:
            try:
                result, error = responses.get(timeout=timeout_s)
            except queue.Empty:
                raise TimeoutError(f"{model_name}: no final response within {timeout_s} s") from None
            if error is not None:
                raise error
            assert result is not None
            response = result.get_response()
            final = response.parameters["triton_final_response"].bool_param
            if response.outputs:
                results.append(result)
            if final:
                return results
    finally:
        client.stop_stream()
