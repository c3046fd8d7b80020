import re
import shutil

import pytest

from export.deploy_config import ConfigError, load_config
from export.render import PLACEHOLDER_RE, RenderError, build_repository, render_text


@pytest.fixture
def ckpt(tmp_path):
    (tmp_path / "ckpt" / "Step-Audio-Tokenizer").mkdir(parents=True)
    return tmp_path / "ckpt"


def test_rendered_repository_has_no_placeholders_and_all_values(ckpt, tmp_path):
    cfg = load_config("cpu", ckpt, ["audio_tokenizer_stream.segment_ms=1200", "audio_tokenizer.instances=2"])
    report = build_repository(cfg, tmp_path / "repo")
    assert report.models == ["audio_tokenizer", "audio_tokenizer_stream", "asr"]
    assert set(report.missing_checkpoints) == {"Step-Audio-Chat", "Step-Audio-TTS-3B"}
    for model in report.models:
        text = (tmp_path / "repo" / model / "config.pbtxt").read_text()
        assert not PLACEHOLDER_RE.search(text), text
        assert f'name: "{model}"' in text
        assert (tmp_path / "repo" / model / "1" / "model.py").is_file()
    stream = (tmp_path / "repo" / "audio_tokenizer_stream" / "config.pbtxt").read_text()
    assert re.search(r'key: "segment_ms" value \{ string_value: "1200" \}', stream)
    assert "CONTROL_SEQUENCE_CORRID" in stream and "allow_ragged_batch: true" in stream
    offline = (tmp_path / "repo" / "audio_tokenizer" / "config.pbtxt").read_text()
    assert "count: 2 kind: KIND_CPU" in offline
    assert str(ckpt / "Step-Audio-Tokenizer") in offline
    asr = (tmp_path / "repo" / "asr" / "config.pbtxt").read_text()
    assert "dynamic_batching" in asr and "max_batch_size: 8" in asr and "allow_ragged_batch: true" in asr
    assert re.search(r'name: "text" data_type: TYPE_STRING dims: \[ 1 \]', asr)


def test_every_parameter_a_model_reads_is_rendered(ckpt, tmp_path):
    """Parameters read with p["..."] in each model.py must exist in its rendered config."""
    build_repository(load_config("cpu", ckpt), tmp_path / "repo")
    for model_dir in (tmp_path / "repo").iterdir():
        source = (model_dir / "1" / "model.py").read_text()
        config = (model_dir / "config.pbtxt").read_text()
        for key in re.findall(r'p\["([a-z_]+)"\]', source):
            assert f'key: "{key}"' in config, f"{model_dir.name} reads {key} but its config lacks it"


def test_output_vocab_reaches_tts_lm_only(ckpt):
    from export.render import MODELS

    cfg = load_config("cpu", ckpt, ["tts_lm.output_vocab=audio"])
    params = {m.name: str(m.values(cfg)["parameters"]) for m in MODELS if m.name in ("tts_lm", "chat_llm")}
    key = 'key: "output_vocab" value { string_value: "%s" }'
    assert key % "audio" in params["tts_lm"] and key % "full" in params["chat_llm"]


def test_gpu_preset(ckpt, tmp_path):
    build_repository(load_config("gpu", ckpt), tmp_path / "repo")
    text = (tmp_path / "repo" / "audio_tokenizer_stream" / "config.pbtxt").read_text()
    assert "KIND_GPU" in text and "CUDAExecutionProvider" in text
    asr = (tmp_path / "repo" / "asr" / "config.pbtxt").read_text()
    assert "KIND_GPU" in asr and 'key: "device" value { string_value: "cuda" }' in asr


def test_rebuild_replaces_stale_output(ckpt, tmp_path):
    out = tmp_path / "repo"
    (out / "stale_model").mkdir(parents=True)
    build_repository(load_config("cpu", ckpt), out)
    assert not (out / "stale_model").exists()


def test_strict_rendering():
    with pytest.raises(RenderError, match="no value for placeholder"):
        render_text("a ${x} ${y}", {"x": 1}, "t")
    with pytest.raises(RenderError, match="survived"):
        render_text("a ${x}", {"x": "${z}"}, "t")


@pytest.mark.parametrize(
    "override,match",
    [
        ("audio_tokenizer.nope=1", "unknown field"),
        ("nosection.x=1", "unknown section"),
        ("audio_tokenizer.instances=two", "expected int"),
        ("audio_tokenizer_stream.segment_ms=1000", "multiple of 120"),
        ("audio_tokenizer_stream.normalization=loud", "running"),
        ("audio_tokenizer.device=tpu", "cpu | cuda"),
        ("tts_lm.output_vocab=text", "full | audio"),
        ("chat_llm.output_vocab=audio", "only for tts_lm"),
        ("justtext", "section.field=value"),
    ],
)
def test_bad_overrides_are_named(ckpt, override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("cpu", ckpt, [override])


def test_unknown_preset_and_empty_checkpoints(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("huge", tmp_path)
    with pytest.raises(RenderError, match="holds none"):
        build_repository(load_config("cpu", tmp_path), tmp_path / "repo")


def test_templates_are_untouched(ckpt, tmp_path):
    from export.render import TEMPLATE_ROOT

    before = {p: p.read_bytes() for p in TEMPLATE_ROOT.rglob("*") if p.is_file()}
    build_repository(load_config("cpu", ckpt), tmp_path / "repo")
    after = {p: p.read_bytes() for p in TEMPLATE_ROOT.rglob("*") if p.is_file()}
    assert before == after
    shutil.rmtree(tmp_path / "repo")
