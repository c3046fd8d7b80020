"""Our tokenizer against the reference's outputs on the golden fixtures (exact token ids)."""

import numpy as np
import pytest

from stepaudio.audio.preprocess import peak_normalize
from stepaudio.tokenizer.linguistic import STRIDE_SAMPLES

CASES = [1, 2, 3]


def _case(d, c):
    return np.load(d / f"case{c}.npz"), np.load(d / f"case{c}_wav16k.npy")


@pytest.mark.parametrize("case", CASES)
def test_tokens_match_reference_exactly(golden_tokenizer_dir, golden_tokenizer, case):
    g, wav = _case(golden_tokenizer_dir, case)
    r = golden_tokenizer.tokenize(wav, 16000)
    np.testing.assert_array_equal(r.vq02, g["vq02"])
    np.testing.assert_array_equal(r.vq06, g["vq06"])
    np.testing.assert_array_equal(r.audio_n, g["audio_N"])
    np.testing.assert_array_equal(r.llm_ids, g["llm_ids"])
    expected = (golden_tokenizer_dir / f"case{case}_token_str.txt").read_text().strip()
    assert r.token_string == expected


@pytest.mark.parametrize("case", CASES)
def test_encoder_output_and_chunking_match_reference(golden_tokenizer_dir, golden_tokenizer, case):
    g, wav = _case(golden_tokenizer_dir, case)
    enc_model = golden_tokenizer.linguistic
    state = enc_model.new_state()
    x = peak_normalize(wav)
    n = len(x) // STRIDE_SAMPLES + 1
    outs = [enc_model.encode_stride(state, x[i * STRIDE_SAMPLES : (i + 1) * STRIDE_SAMPLES], i == n - 1)
            for i in range(n)]
    assert [len(o) for o in outs] == g["vq02_chunk_new_frames"].tolist()
    np.testing.assert_allclose(np.concatenate(outs), g["vq02_enc_out"], atol=1e-4)


def test_wav_file_input_matches(golden_tokenizer_dir, golden_tokenizer):
    import soundfile as sf

    audio, sr = sf.read(str(golden_tokenizer_dir / "case2_wav16k.wav"), dtype="float32")
    g = np.load(golden_tokenizer_dir / "case2.npz")
    np.testing.assert_array_equal(golden_tokenizer.tokenize(audio, sr).audio_n, g["audio_N"])


@pytest.mark.parametrize("case", CASES)
def test_tts_prompt_path_matches_reference(golden_tokenizer_dir, golden_tokenizer, case):
    from stepaudio.audio.trim import trim_silence

    g, wav = _case(golden_tokenizer_dir, case)
    trimmed = trim_silence(peak_normalize(wav), 16000)
    assert len(trimmed) == int(g["tts_prompt_out_len"].reshape(-1)[0])
    r = golden_tokenizer.tokenize_prompt(wav, 16000)
    np.testing.assert_array_equal(r.vq02, g["tts_prompt_vq02"])
    np.testing.assert_array_equal(r.vq06, g["tts_prompt_vq06"])
    np.testing.assert_array_equal(r.llm_ids, g["tts_prompt_llm_ids"])
