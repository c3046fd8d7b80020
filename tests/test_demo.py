"""`make demo`'s entry point end to end: build, real tritonserver, offline + streaming, clean stop."""

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_demo_runs_and_stops_cleanly(tiny_checkpoints, tmp_path):
    env = {**os.environ, "CHECKPOINTS": str(tiny_checkpoints)}
    for var in ("TRITON_HTTP_PORT", "TRITON_GRPC_PORT", "TRITON_METRICS_PORT"):
        env.pop(var, None)
    proc = subprocess.run(
        [sys.executable, "-m", "export", "demo", "--out", str(tmp_path / "repo")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "offline audio_tokenizer:" in out and "<audio_" in out
    assert "streaming audio_tokenizer_stream:" in out
    assert "rendered audio_tokenizer, audio_tokenizer_stream, chat_llm, tts_lm" in out
    assert out.rstrip().endswith("[demo] done")


def test_build_cli_reports_errors(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "export", "build", "--checkpoints", str(tmp_path), "--out", str(tmp_path / "r")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2 and "holds none of the servable checkpoint folders" in proc.stderr
