from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT.parent / "shared" / "golden"
GOLDEN_TOKENIZER = GOLDEN / "tokenizer"


@pytest.fixture(scope="session")
def golden_tokenizer_dir() -> Path:
    if not (GOLDEN_TOKENIZER / "Step-Audio-Tokenizer").is_dir():
        pytest.skip(f"golden fixtures not found at {GOLDEN_TOKENIZER} (CI lays ../shared beside the clone)")
    return GOLDEN_TOKENIZER


@pytest.fixture(scope="session")
def golden_tokenizer(golden_tokenizer_dir):
    from stepaudio.tokenizer.tokenizer import AudioTokenizer

    return AudioTokenizer(golden_tokenizer_dir / "Step-Audio-Tokenizer")


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> Path:
    from export.tiny import write_tiny

    out = tmp_path_factory.mktemp("tiny-checkpoints")
    write_tiny(out, progress=lambda _msg: None)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_checkpoints):
    from stepaudio.tokenizer.tokenizer import AudioTokenizer

    return AudioTokenizer(tiny_checkpoints / "Step-Audio-Tokenizer")


def espeak_wav(text: str, out: Path, sample_rate_hz: int = 16000, pause_ms: int = 0) -> Path:
    """Synthetic speech from espeak-ng (with sox resampling); skips when the tools are missing."""
    import shutil
    import subprocess

    if not shutil.which("espeak-ng") or not shutil.which("sox"):
        pytest.skip("espeak-ng and sox are needed for synthetic speech (.ci/run installs them)")
    raw = out.with_suffix(".raw.wav")
    if pause_ms:
        text = text.replace("|", f' <break time="{pause_ms}ms"/> ')
        subprocess.run(["espeak-ng", "-m", "-w", str(raw), f"<speak>{text}</speak>"], check=True)
    else:
        subprocess.run(["espeak-ng", "-w", str(raw), text], check=True)
    # -D: no dither, so the same text always gives the same samples
    subprocess.run(["sox", str(raw), "-D", "-r", str(sample_rate_hz), "-b", "16", str(out)], check=True)
    raw.unlink()
    return out


@pytest.fixture(scope="session")
def speech_16k(tmp_path_factory) -> np.ndarray:
    import soundfile as sf

    path = espeak_wav(
        "The quick brown fox jumps over the lazy dog, and then it runs far away into the green forest.",
        tmp_path_factory.mktemp("speech") / "speech.wav",
    )
    audio, sr = sf.read(str(path), dtype="float32")
    assert sr == 16000
    return audio


@pytest.fixture(scope="session")
def tiny_server(tiny_checkpoints, tmp_path_factory):
    """One real tritonserver with every model on the tiny checkpoints (chat_llm has one slot, so a
    request can only run once the previous one left the engine: the cancellation test relies on it)."""
    from export.deploy_config import load_config
    from export.render import build_repository
    from tests.triton_helpers import start_server

    cfg = load_config("cpu", tiny_checkpoints, ["chat_llm.max_batch_size=1", "tts_lm.max_batch_size=4"])
    repo = tmp_path_factory.mktemp("tiny-repo") / "model_repository"
    build_repository(cfg, repo)
    # the log stays in pytest's temporary folder (the last three runs are kept) for a failure's post-mortem
    with start_server(repo, timeout_s=300, log_path=repo.parent / "tritonserver.log") as srv:
        yield srv
