import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from export.triton_launcher import (
    TritonServer,
    TritonStartError,
    find_tritonserver,
    model_load_errors,
)
from tests.triton_helpers import start_server, stream_infer, write_model

REPO_ROOT = Path(__file__).resolve().parent.parent

VECTOR_IO = """
    input [ { name: "INPUT", data_type: TYPE_FP32, dims: [ -1 ] } ]
    output [ { name: "OUTPUT", data_type: TYPE_FP32, dims: [ -1 ] } ]
    instance_group [ { count: 1, kind: KIND_CPU } ]
"""

ECHO_CONFIG = 'backend: "python"\nmax_batch_size: 0\n' + VECTOR_IO
ECHO_MODEL = """
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", x)]))
            return responses
"""

STREAM_CONFIG = ECHO_CONFIG + "model_transaction_policy { decoupled: true }\n"
# Three responses (INPUT * 1, 2, 3), then the final flag alone.
STREAM_MODEL = """
    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            for request in requests:
                sender = request.get_response_sender()
                x = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
                for k in (1, 2, 3):
                    out = pb_utils.Tensor("OUTPUT", (x * k).astype(np.float32))
                    sender.send(pb_utils.InferenceResponse([out]))
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return None
"""

BROKEN_MODEL = """
    raise RuntimeError("broken-model-import-marker")
"""


def vector_input(values: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("INPUT", list(values.shape), "FP32")
    tensor.set_data_from_numpy(values)
    return tensor


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except OSError:
        return None


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); the launcher reaps its child, so it should not be one.
    return Path(f"/proc/{pid}").exists()


@pytest.fixture(scope="module")
def toy_server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("toy_repo")
    write_model(repo, "echo", ECHO_CONFIG, ECHO_MODEL)
    write_model(repo, "streamer", STREAM_CONFIG, STREAM_MODEL)
    with start_server(repo) as server:
        yield server


def test_find_tritonserver_prepares_the_python_backend():
    binary = find_tritonserver()
    assert binary.path.is_file()
    if binary.backend_dir is not None:  # the pytriton wheel's build
        assert os.access(binary.backend_dir / "python" / "triton_python_backend_stub", os.X_OK)
        assert binary.env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)
        assert "nvidia_pytriton.libs" in binary.env["LD_LIBRARY_PATH"]
        assert find_tritonserver() == binary  # idempotent


def test_model_load_errors_restores_newlines():
    log = (
        'I1125 21:53:10.0 1 model_lifecycle.cc:472] "loading: bad:1"\n'
        "E1125 21:53:10.0 1 model_lifecycle.cc:642] \"failed to load 'bad' version 1: Internal: "
        'ValueError: nope\\n\\nAt:\\n  model.py(1)"\n'
        "I1125 21:53:10.0 1 model_lifecycle.cc:777] \"failed to load 'bad'\"\n"
    )
    (error,) = model_load_errors(log)
    assert "ValueError: nope\n\nAt:\n  model.py(1)" in error


@pytest.mark.integration
def test_echo_unary_and_endpoints(toy_server):
    client = grpcclient.InferenceServerClient(toy_server.grpc_url)
    assert client.is_server_ready()
    assert client.is_model_ready("echo") and client.is_model_ready("streamer")

    x = np.arange(5, dtype=np.float32)
    result = client.infer("echo", [vector_input(x)])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT"), x)

    assert http_status(f"http://{toy_server.http_url}/v2/health/ready") == 200
    with urllib.request.urlopen(f"http://{toy_server.metrics_url}/metrics", timeout=5) as response:
        assert b"nv_inference_request_success" in response.read()


@pytest.mark.integration
def test_decoupled_model_streams_three_responses_then_final(toy_server):
    client = grpcclient.InferenceServerClient(toy_server.grpc_url)
    x = np.array([1.0, -2.0, 0.5], dtype=np.float32)
    results = stream_infer(client, "streamer", [vector_input(x)])
    assert [r.as_numpy("OUTPUT").tolist() for r in results] == [(x * k).tolist() for k in (1, 2, 3)]


@pytest.mark.integration
def test_stop_ends_the_server_and_is_idempotent(tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "echo", ECHO_CONFIG, ECHO_MODEL)
    server = start_server(repo, log_path=tmp_path / "server.log")
    pid, ready_url = server.pid, f"http://{server.http_url}/v2/health/ready"
    assert server.is_running() and http_status(ready_url) == 200

    server.stop()
    assert not server.is_running() and not process_alive(pid)
    assert http_status(ready_url) is None
    assert not list(Path("/dev/shm").glob(f"{server._shm_prefix}*"))
    server.stop()  # a second stop is a no-op
    assert "successfully loaded 'echo'" in server.log_text()


@pytest.mark.integration
def test_model_failing_at_import_fails_start_with_log_tail(tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "echo", ECHO_CONFIG, ECHO_MODEL)
    write_model(repo, "broken", ECHO_CONFIG, BROKEN_MODEL)
    server = TritonServer(repo)
    started = time.monotonic()
    with pytest.raises(TritonStartError) as failure:
        server.start(timeout_s=60)
    assert time.monotonic() - started < 30
    message = str(failure.value)
    assert "broken-model-import-marker" in message
    assert "failed to load 'broken'" in message
    assert not server.is_running() and not process_alive(server.pid)
    assert not list(Path("/dev/shm").glob(f"{server._shm_prefix}*"))
    # The log of a failed start is kept, even a temporary one, so the message can point at it.
    assert server.log_path is not None and server.log_path.exists()
    server.log_path.unlink()


@pytest.mark.integration
def test_cli_serves_in_foreground_until_ctrl_c(tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "echo", ECHO_CONFIG, ECHO_MODEL)
    cli = subprocess.Popen(
        [sys.executable, "-m", "export.triton_launcher", "--model-repository", str(repo),
         "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert cli.stdout is not None
        ready_line = ""
        for line in cli.stdout:
            if line.startswith("tritonserver ready"):
                ready_line = line
                break
        assert ready_line, f"the launcher exited with {cli.wait()} before the server was ready"
        grpc_url = ready_line.split("gRPC ")[1].split()[0]
        assert grpcclient.InferenceServerClient(grpc_url).is_model_ready("echo")

        cli.send_signal(signal.SIGINT)
        rest, _ = cli.communicate(timeout=60)
        assert cli.returncode == 0, rest
        assert "All models are stopped" in rest or "successfully unloaded" in rest
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
