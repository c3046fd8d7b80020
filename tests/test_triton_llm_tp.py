"""A tensor-parallel tts_lm (2 gloo ranks started by the Triton instance) gives the 1-rank tokens."""

from __future__ import annotations

import subprocess

import pytest
import tritonclient.grpc as grpcclient

from client.chat import build_inputs, stream_generate
from export.deploy_config import load_config
from export.render import build_repository
from tests.triton_helpers import start_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _followers() -> list[str]:
    out = subprocess.run(["pgrep", "-f", "stepaudio.llm.tp_worker"], capture_output=True, text=True)
    return out.stdout.split()


def test_tp2_tts_lm_matches_single_rank(tiny_checkpoints, tmp_path):
    from stepaudio.llm.engine import Engine
    from stepaudio.llm.loader import load_step1
    from stepaudio.llm.sampling import SamplingParams

    only_tts = tmp_path / "ckpt"
    only_tts.mkdir()
    (only_tts / "Step-Audio-TTS-3B").symlink_to(tiny_checkpoints / "Step-Audio-TTS-3B")
    cfg = load_config("cpu", only_tts, ["tts_lm.tensor_parallel_size=2"])
    build_repository(cfg, tmp_path / "repo")
    assert "KIND_MODEL" in (tmp_path / "repo" / "tts_lm" / "config.pbtxt").read_text()
    prompt = [1, 4, 385, 15] + [65536 + n for n in range(7, 60, 5)]
    with start_server(tmp_path / "repo", timeout_s=240) as server:
        assert len(_followers()) == 1
        c = grpcclient.InferenceServerClient(server.grpc_url)
        chunks = list(stream_generate(c, "tts_lm", build_inputs(prompt_ids=prompt, max_new_tokens=12,
                                                                temperature=0.0)))
        sampled = [list(stream_generate(c, "tts_lm", build_inputs(prompt_ids=prompt, max_new_tokens=8, seed=5)))
                   for _ in range(2)]
        c.close()
    ids = [t for ch in chunks for t in ch.token_ids]
    local = Engine(load_step1(tiny_checkpoints / "Step-Audio-TTS-3B", dtype="float32"))
    assert ids == local.generate(prompt, SamplingParams(temperature=0, max_new_tokens=12, repetition_window=10))
    a, b = ([t for ch in s for t in ch.token_ids] for s in sampled)
    assert a == b and len(a) == 8  # a seeded request is reproducible across the ranks' lockstep
    assert _followers() == []  # the follower rank left with the server
