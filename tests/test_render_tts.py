"""Rendering the speech-decoder models from the tiny checkpoints: parameters, ONNX artifacts, fallback."""

from __future__ import annotations

import re

import pytest

from export.deploy_config import load_config
from export.render import RenderError, build_repository

DECODERS = ("CosyVoice-300M-25Hz", "CosyVoice-300M-25Hz-Music")


def test_all_models_render_with_onnx_artifacts_exported_once(tiny_checkpoints, tmp_path, capsys):
    report = build_repository(load_config("cpu", tiny_checkpoints), tmp_path / "a" / "repo")
    assert {"speaker_embedding", "token2wav", "tts", "tts_lm", "chat_llm"} <= set(report.models)
    for model_dir in (tmp_path / "a" / "repo").iterdir():
        source = (model_dir / "1" / "model.py").read_text()
        config = (model_dir / "config.pbtxt").read_text()
        for key in re.findall(r'p\["([a-z_]+)"\]', source):
            assert f'key: "{key}"' in config, f"{model_dir.name} reads {key} but its config lacks it"
    for name in DECODERS:
        onnx = tmp_path / "a" / "repo" / "token2wav" / "1" / "onnx" / name
        assert (onnx / "flow_estimator.onnx").stat().st_size > 0 and (onnx / "hift_decoder.onnx").is_file()
    assert capsys.readouterr().out.count("exporting") == 2
    build_repository(load_config("cpu", tiny_checkpoints), tmp_path / "a" / "repo")  # rebuilt: the cache serves
    assert "exporting" not in capsys.readouterr().out
    assert (tmp_path / "a" / "repo" / "token2wav" / "1" / "onnx" / DECODERS[0] / "flow_estimator.onnx").is_file()


def test_pytorch_fallback_has_no_onnx_and_bad_backend_is_named(tiny_checkpoints, tmp_path):
    build_repository(load_config("cpu", tiny_checkpoints, ["token2wav.backend=torch"]), tmp_path / "repo")
    assert not (tmp_path / "repo" / "token2wav" / "1" / "onnx").exists()
    config = (tmp_path / "repo" / "token2wav" / "config.pbtxt").read_text()
    assert 'key: "backend" value { string_value: "torch" }' in config and "CONTROL_SEQUENCE_START" in config
    with pytest.raises(RenderError, match=r"token2wav\.backend must be onnx or torch"):
        build_repository(load_config("cpu", tiny_checkpoints, ["token2wav.backend=trt"]), tmp_path / "repo2")
