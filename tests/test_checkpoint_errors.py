"""Missing or malformed checkpoint files give errors naming the file and what was expected."""

import shutil

import numpy as np
import pytest

from stepaudio.tokenizer.files import PARAFORMER_SUBDIR, CheckpointError
from stepaudio.tokenizer.tokenizer import AudioTokenizer


@pytest.fixture
def ckpt(tiny_checkpoints, tmp_path):
    dst = tmp_path / "Step-Audio-Tokenizer"
    shutil.copytree(tiny_checkpoints / "Step-Audio-Tokenizer", dst)
    return dst


def test_tiny_checkpoint_loads_and_tokenizes(ckpt, speech_16k):
    r = AudioTokenizer(ckpt).tokenize(speech_16k, 16000)
    assert len(r.audio_n) > 0 and len(set(r.vq02.tolist())) > 5 and len(set(r.vq06.tolist())) > 5


@pytest.mark.parametrize(
    "relpath,match",
    [
        ("linguistic_tokenizer.npy", "linguistic_tokenizer.npy.*k-means"),
        ("speech_tokenizer_v1.onnx", "speech_tokenizer_v1.onnx.*speech tokenizer ONNX"),
        (f"{PARAFORMER_SUBDIR}/model.pt", "model.pt.*state_dict"),
        (f"{PARAFORMER_SUBDIR}/am.mvn", "am.mvn.*CMVN"),
        (f"{PARAFORMER_SUBDIR}/config.yaml", "config.yaml.*config"),
    ],
)
def test_missing_file_is_named(ckpt, relpath, match):
    (ckpt / relpath).unlink()
    with pytest.raises(CheckpointError, match=match):
        AudioTokenizer(ckpt)


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        AudioTokenizer(tmp_path / "nowhere")
    (tmp_path / "Step-Audio-Tokenizer").mkdir()
    with pytest.raises(CheckpointError, match="Paraformer-streaming folder not found"):
        AudioTokenizer(tmp_path / "Step-Audio-Tokenizer")


def test_malformed_files(ckpt):
    np.save(ckpt / "linguistic_tokenizer.npy", np.zeros((512, 7), np.float32))
    with pytest.raises(CheckpointError, match=r"linguistic_tokenizer.npy: expected .*\(1024, 32\)"):
        AudioTokenizer(ckpt)


def test_malformed_yaml_and_model(ckpt, tiny_checkpoints):
    cfg = ckpt / PARAFORMER_SUBDIR / "config.yaml"
    cfg.write_text("model: [unclosed\n")
    with pytest.raises(CheckpointError, match=r"config.yaml: not a valid YAML"):
        AudioTokenizer(ckpt)
    cfg.write_text("model: Whisper\nencoder: x\nencoder_conf: {}\nfrontend_conf: {}\n")
    with pytest.raises(CheckpointError, match="expected 'ParaformerStreaming'"):
        AudioTokenizer(ckpt)
    shutil.copy(tiny_checkpoints / "Step-Audio-Tokenizer" / PARAFORMER_SUBDIR / "config.yaml", cfg)
    (ckpt / PARAFORMER_SUBDIR / "model.pt").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match=r"model.pt: cannot read"):
        AudioTokenizer(ckpt)


def test_bad_onnx(ckpt):
    (ckpt / "speech_tokenizer_v1.onnx").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"speech_tokenizer_v1.onnx: cannot load"):
        AudioTokenizer(ckpt)
