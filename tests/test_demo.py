"""`make demo`'s entry point end to end: build, tritonserver + controller, the spoken conversation, clean stop."""

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_demo_holds_the_spoken_conversation_and_stops_cleanly(tiny_checkpoints, tmp_path):
    env = {**os.environ, "CHECKPOINTS": str(tiny_checkpoints), "DEMO_OUTPUT": str(tmp_path / "out")}
    for var in ("TRITON_HTTP_PORT", "TRITON_GRPC_PORT", "TRITON_METRICS_PORT", "CONTROLLER_PORT"):
        env.pop(var, None)
    proc = subprocess.run(
        [sys.executable, "-m", "export", "demo", "--out", str(tmp_path / "repo")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "speculation discarded" in out and "speculation committed" in out  # the pause, the end of turn
    assert "response.done cancelled (turn_detected)" in out and "conversation.item.truncated" in out  # barge-in
    assert out.count("first audio delta of the reply") >= 2 and "user said (asr)" in out
    assert "| order (with a pause) |" in out and "| barge-in |" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir())[:1] == ["reply_1.wav"]
    assert out.rstrip().endswith("[demo] done")


def test_build_cli_reports_errors(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "export", "build", "--checkpoints", str(tmp_path), "--out", str(tmp_path / "r")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2 and "holds none of the servable checkpoint folders" in proc.stderr
