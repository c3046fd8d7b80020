"""Built-in speakers and voice cloning: prompt preparation as the reference, caching, routing, errors."""

import json
import threading

import numpy as np
import pytest
import soundfile as sf

from export.tiny.speakers import SPEAKERS_INFO, synthetic_voice, write_speakers
from stepaudio.audio.resample import resample
from stepaudio.tokenizer.files import CheckpointError
from stepaudio.tts.mel import MelConfig, PromptMel
from stepaudio.tts.speaker import SpeakerEmbedder
from stepaudio.tts.voices import (
    UnknownSpeakerError,
    VoiceBank,
    VoiceInputError,
    VoicePreparer,
    VoicePrompt,
    clone_key,
)

TEXT = "那等我们到海洋馆之后，给妈妈买个礼物，好不好呀？"


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    from export.tiny.campplus import write_campplus

    root = tmp_path_factory.mktemp("voices")
    return {
        "campplus": write_campplus(root / "CosyVoice-300M-25Hz" / "campplus.onnx", seed=0),
        "speakers": write_speakers(root / "speakers", seed=0),
    }


@pytest.fixture(scope="module")
def preparer(parts, tiny_tokenizer):
    return VoicePreparer(tiny_tokenizer, SpeakerEmbedder(parts["campplus"]), PromptMel())


@pytest.fixture()
def bank(preparer, parts):
    return VoiceBank(preparer, parts["speakers"], cache_size=2)


@pytest.fixture(scope="module")
def wav24k():
    return resample(synthetic_voice(3), 22050, 24000), 24000


def test_clone_prompt_is_built_as_the_reference(bank, preparer, tiny_tokenizer, wav24k):
    audio, sr = wav24k
    v = bank.clone(audio, sr, TEXT)
    assert isinstance(v, VoicePrompt) and v.is_clone and v.speaker == "" and v.prompt_text == TEXT
    # (c) tokens: the tokenizer's TTS-prompt path on the recording at its own rate.
    ids = [int(i) for i in tiny_tokenizer.tokenize_prompt(audio, sr).llm_ids]
    assert v.prompt_llm_ids == ids and all(65536 <= i < 65536 + 5120 for i in ids)
    np.testing.assert_array_equal(v.prompt_flow_tokens, np.asarray(ids) - 65536)
    assert v.prompt_flow_tokens.dtype == np.int64 and v.prompt_token_len == len(ids)
    # (a) embedding from the 16 kHz resampled audio.
    np.testing.assert_array_equal(v.speaker_embedding, preparer.embedder.embed_16k(resample(audio, sr, 16000)))
    assert v.speaker_embedding.shape == (192,) and v.speaker_embedding.dtype == np.float32
    # (b) mel from the 22.05 kHz resampled audio.
    x22 = resample(audio, sr, 22050)
    np.testing.assert_array_equal(v.prompt_mel, preparer.mel(x22))
    assert v.prompt_mel.shape == (MelConfig().num_frames(len(x22)), 80) and v.prompt_mel_len == v.prompt_mel.shape[0]
    for a in (v.prompt_flow_tokens, v.speaker_embedding, v.prompt_mel):
        assert not a.flags.writeable


def test_stereo_is_mixed_to_mono(bank, wav24k):
    audio, sr = wav24k
    mono = bank.clone(audio, sr, TEXT)
    stereo = bank.clone(np.stack([audio, audio]), sr, TEXT)
    assert stereo.key == mono.key  # the mix equals the mono signal, so it is the same cache entry
    with pytest.raises(VoiceInputError, match=r"\(channels, T\)"):
        bank.clone(np.stack([audio, audio], axis=1), sr, TEXT)


def test_clone_cache_hits_and_lru_bound(bank, wav24k):
    audio, sr = wav24k
    a = bank.clone(audio, sr, TEXT)
    assert bank.clone(audio.copy(), sr, TEXT) is a
    b = bank.clone(audio, sr, TEXT + "!")  # another transcript: another entry
    assert b is not a and b.key != a.key
    c = bank.clone(audio[: sr], sr, TEXT)
    assert bank.cache_info()["clones"] == 2  # bounded: a was the least recently used
    assert bank.clone(audio, sr, TEXT) is not a
    assert bank.clone(audio[:sr], sr, TEXT) is c
    info = bank.cache_info()
    assert info["hits"] == 2 and info["misses"] == 4


def test_cache_key_covers_audio_rate_and_text():
    x = np.linspace(-0.5, 0.5, 16000, dtype=np.float32)
    k = clone_key(x, 16000, "a")
    assert k == clone_key(x.copy(), 16000, "a")
    assert len({k, clone_key(x, 22050, "a"), clone_key(x, 16000, "b"), clone_key(x[::-1], 16000, "a")}) == 4


def test_cache_size_zero_and_concurrent_requests(preparer, parts, wav24k):
    audio, sr = wav24k
    off = VoiceBank(preparer, parts["speakers"], cache_size=0)
    assert off.clone(audio, sr, TEXT) is not off.clone(audio, sr, TEXT)
    bank = VoiceBank(preparer, parts["speakers"], cache_size=4)
    out = []
    threads = [threading.Thread(target=lambda: out.append(bank.clone(audio, sr, TEXT))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 4 and all(v is out[0] for v in out)
    assert bank.cache_info()["misses"] == 1


@pytest.mark.parametrize(
    ("audio", "sr", "text", "match"),
    [
        (np.zeros(16000, np.float32) + 0.1, 16000, "", "transcript is empty"),
        (np.zeros(16000, np.float32) + 0.1, 16000, "  \n", "transcript is empty"),
        (np.zeros(0, np.float32), 16000, TEXT, "empty"),
        (np.full(16000, np.nan, np.float32), 16000, TEXT, "NaN"),
        (np.zeros(16000, np.int16), 16000, TEXT, "floating point"),
        (np.zeros(16000, np.float32), 16000, TEXT, "silent"),
        (np.ones(4000, np.float32) * 0.1, 4000, TEXT, "range"),
        (np.ones(96000, np.float32) * 0.1, 96000, TEXT, "range"),
        (np.ones(1600, np.float32) * 0.1, 16000, TEXT, "too short"),
        (np.ones(16000 * 31, np.float32) * 0.1, 16000, TEXT, "too long"),
    ],
)
def test_bad_clone_requests(bank, audio, sr, text, match):
    with pytest.raises(VoiceInputError, match=match):
        bank.clone(audio, sr, text)
    assert bank.cache_info()["misses"] == 0  # rejected before any work


def test_builtin_speakers_and_music_routing(bank):
    assert bank.speaker_ids() == list(SPEAKERS_INFO)
    v = bank.builtin("Tingting")
    assert (v.speaker, v.entry, v.prompt_text, v.is_clone) == ("Tingting", "Tingting", TEXT, False)
    assert bank.builtin("Tingting", "(高兴1)你好") is v  # prepared once, kept
    rap = bank.builtin("Tingting", "(RAP)我们走")
    assert (rap.speaker, rap.entry) == ("Tingting", "TingtingRAP")
    assert rap.prompt_text.startswith("（RAP）")
    hum = bank.builtin("Tingting", "（哼唱）啦啦啦")
    assert (hum.speaker, hum.entry) == ("Tingting", "Tingting哼唱")
    # Only the leading tag counts, as the reference's regex.
    assert bank.entry_for("Tingting", "(高兴1)(RAP)你好") == "Tingting"
    assert bank.entry_for("TingtingRAP", "(RAP)x") == "TingtingRAP"
    # The entries share one recording here, so the prepared audio features agree.
    np.testing.assert_array_equal(rap.speaker_embedding, v.speaker_embedding)
    assert bank.cache_info()["builtin"] == 3 and bank.cache_info()["clones"] == 0


def test_music_tag_without_entry_falls_back(preparer, tmp_path):
    d = tmp_path / "speakers"
    d.mkdir()
    (d / "speakers_info.json").write_text(json.dumps({"Xiaoming": "你好"}, ensure_ascii=False), encoding="utf-8")
    sf.write(str(d / "Xiaoming_prompt.wav"), synthetic_voice(5), 22050, subtype="PCM_16")
    bank = VoiceBank(preparer, d)
    assert bank.entry_for("Xiaoming", "(RAP)哟") == "Xiaoming"
    with pytest.raises(UnknownSpeakerError, match="Xiaoming"):
        bank.builtin("Tingting")


def test_speakers_folder_errors(preparer, tmp_path):
    lazy = VoiceBank(preparer, tmp_path / "nowhere")  # nothing is read until a speaker is asked for
    with pytest.raises(CheckpointError, match=r"speakers_info\.json"):
        lazy.builtin("Tingting")
    d = tmp_path / "speakers"
    d.mkdir()
    (d / "speakers_info.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(CheckpointError, match="JSON"):
        VoiceBank(preparer, d).speaker_ids()
    (d / "speakers_info.json").write_text(json.dumps({"A": "文本"}), encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"A_prompt\.wav"):
        VoiceBank(preparer, d).builtin("A")
    (d / "A_prompt.wav").write_bytes(b"RIFF junk")
    with pytest.raises(CheckpointError, match=r"A_prompt\.wav"):
        VoiceBank(preparer, d).builtin("A")
    with pytest.raises(UnknownSpeakerError):
        VoiceBank(preparer, None).builtin("Tingting")


def test_from_dirs(parts, tiny_checkpoints, tmp_path):
    import shutil

    from .conftest import GOLDEN

    yaml = GOLDEN / "token2wav" / "CosyVoice-300M-25Hz" / "cosyvoice.yaml"
    if not yaml.is_file():
        pytest.skip("golden cosyvoice.yaml not found")
    dec = tmp_path / "CosyVoice-300M-25Hz"
    dec.mkdir()
    shutil.copy(yaml, dec / "cosyvoice.yaml")
    shutil.copy(parts["campplus"], dec / "campplus.onnx")
    bank = VoiceBank.from_dirs(tiny_checkpoints / "Step-Audio-Tokenizer", dec, parts["speakers"])
    assert bank.preparer.mel.cfg == MelConfig() and bank.has_speaker("Tingting")


def test_speakers_writer_is_deterministic(tmp_path):
    a = write_speakers(tmp_path / "a", seed=0)
    b = write_speakers(tmp_path / "b", seed=0)
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(["speakers_info.json", "Tingting_prompt.wav", "TingtingRAP_prompt.wav",
                            "Tingting哼唱_prompt.wav"])
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes()
    info = json.loads((a / "speakers_info.json").read_text(encoding="utf-8"))
    assert info["Tingting"] == TEXT
    assert info["TingtingRAP"].startswith("（RAP）") and info["Tingting哼唱"].startswith("（哼唱）")
    audio, sr = sf.read(str(a / "Tingting_prompt.wav"), dtype="float32")
    assert sr == 22050 and audio.ndim == 1 and 1.4 < len(audio) / sr < 1.6
    assert (write_speakers(tmp_path / "c", seed=1) / "Tingting_prompt.wav").read_bytes() != (
        a / "Tingting_prompt.wav"
    ).read_bytes()
