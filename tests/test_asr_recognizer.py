"""The recogniser on the tiny and golden checkpoints (random weights: the text is arbitrary, so the
checks are exactness against FunASR's own decoding, determinism, batching and input errors).

The reference is FunASR's offline Paraformer decoding (``Paraformer.inference``) run on the loaded
model. ``ParaformerStreaming.inference`` is FunASR's chunk-by-chunk streaming decoder, a different
computation; recognition over a whole committed turn is the offline one.
"""

import contextlib
import io

import numpy as np
import pytest
import torch

from export.tiny.tokenizer import probe_signal
from stepaudio.asr.recognizer import Recognizer
from stepaudio.audio.preprocess import AudioInputError
from stepaudio.audio.resample import resample


@pytest.fixture(scope="module")
def recognizer(tiny_checkpoints):
    return Recognizer(tiny_checkpoints / "Step-Audio-Tokenizer")


@pytest.fixture(scope="module")
def signals():
    # Different lengths (0.3 to 4 s) so batches are padded.
    return [probe_signal(s, seed) for seed, s in enumerate((2.5, 0.3, 4.0, 1.37))]


def funasr_offline(rec: Recognizer, waves: list[np.ndarray], with_text: bool) -> list:
    """FunASR's own offline decoding of 16 kHz waveforms: token ids, or texts with its tokenizer."""
    with contextlib.redirect_stdout(io.StringIO()):
        from funasr.models.paraformer.model import Paraformer
        from funasr.tokenizer.char_tokenizer import CharTokenizer

    tokenizer = CharTokenizer(token_list=rec.paraformer.vocab) if with_text else None
    with torch.inference_mode():
        out = Paraformer.inference(rec.model, [torch.from_numpy(w) for w in waves], key=[f"u{i}" for i in range(len(waves))],
                                   tokenizer=tokenizer, frontend=rec.frontend, device="cpu")
    if not out:  # FunASR returns [] when no utterance of the batch has a token
        return ["" if with_text else [] for _ in waves]
    return [r["text"] if with_text else r["token_int"] for r in out[0]]


def test_ids_and_text_equal_funasr_offline_decoding(recognizer, signals):
    for w in signals:
        ids = recognizer.recognize_ids([w])[0]
        assert ids == funasr_offline(recognizer, [w], with_text=False)[0]
        assert recognizer.recognize([w])[0] == funasr_offline(recognizer, [w], with_text=True)[0]
    assert sum(len(recognizer.recognize_ids([w])[0]) for w in signals) > 10  # the check saw real tokens


def test_batch_equals_single_utterances(recognizer, signals):
    # Not FunASR's batched call: it lets padded encoder frames into the CIF predictor, so a short
    # utterance's last token there depends on its batch. Each of ours equals its own FunASR decoding.
    batch = recognizer.recognize_ids(signals)
    assert batch == [funasr_offline(recognizer, [w], with_text=False)[0] for w in signals]
    assert batch == [recognizer.recognize_ids([w])[0] for w in signals]
    assert recognizer.recognize_ids(signals) == batch  # deterministic


def test_long_batches_are_split_and_keep_their_order(tiny_checkpoints, recognizer, signals):
    small = Recognizer(paraformer=recognizer.paraformer, max_batch_audio_s=5.0)
    seen = []
    decode = small._decode
    small._decode = lambda waves: (seen.append(len(waves)), decode(waves))[1]
    assert small.recognize_ids(signals) == recognizer.recognize_ids(signals)
    assert len(seen) > 1 and sum(seen) == len(signals)


def test_transcribe_resamples(recognizer, signals):
    w = signals[0]
    w44 = resample(w, 16000, 44100)
    assert recognizer.transcribe(w44, 44100) == recognizer.recognize([resample(w44, 44100, 16000)])[0]
    assert recognizer.transcribe_batch([(w, 16000), (w44, 44100)])[0] == recognizer.transcribe(w, 16000)


def test_very_short_audio(recognizer):
    for n in (1, 399):  # under one 25 ms fbank window: nothing to recognise
        assert recognizer.transcribe(np.full(n, 0.1, np.float32), 16000) == ""
    for n in (400, 1000):
        w = probe_signal(n / 16000, 3)
        assert recognizer.recognize_ids([w])[0] == funasr_offline(recognizer, [w], with_text=False)[0]


def test_shares_the_tokenizer_model(tiny_tokenizer, recognizer, signals):
    shared = Recognizer(paraformer=tiny_tokenizer.linguistic.paraformer)
    assert shared.model is tiny_tokenizer.linguistic.model
    before = tiny_tokenizer.tokenize(signals[2], 16000).audio_n
    assert shared.recognize_ids(signals) == recognizer.recognize_ids(signals)
    np.testing.assert_array_equal(tiny_tokenizer.tokenize(signals[2], 16000).audio_n, before)


@pytest.mark.parametrize(("audio", "sr", "match"), [
    (np.zeros(0, np.float32), 16000, "empty"),
    (np.array([0.1, np.nan, 0.2], np.float32), 16000, "NaN or inf"),
    (np.array([0.1, np.inf, 0.2], np.float32), 16000, "NaN or inf"),
    (np.zeros(1600, np.int16), 16000, "floating point"),
    (np.zeros((2, 2, 100), np.float32), 16000, "shape"),
    (np.zeros(1600, np.float32), 4000, "outside the supported range"),
    (np.zeros(1600, np.float32), 96000, "outside the supported range"),
    (np.zeros(16000 * 121, np.float32), 16000, "over the maximum of 120 s"),
])
def test_bad_input_names_the_problem(recognizer, audio, sr, match):
    with pytest.raises(AudioInputError, match=match):
        recognizer.transcribe(audio, sr)


def test_bad_item_of_a_batch_is_named(recognizer, signals):
    with pytest.raises(AudioInputError, match="item 1: audio is empty"):
        recognizer.transcribe_batch([(signals[0], 16000), (np.zeros(0, np.float32), 16000)])


def test_needs_a_folder_or_a_model():
    with pytest.raises(ValueError, match="tokenizer_dir"):
        Recognizer()


def test_golden_checkpoint_equals_funasr(golden_tokenizer_dir):
    rec = Recognizer(golden_tokenizer_dir / "Step-Audio-Tokenizer")
    waves = [np.load(golden_tokenizer_dir / f"case{c}_wav16k.npy").astype(np.float32) for c in (1, 2, 3)]
    assert rec.recognize_ids(waves) == [funasr_offline(rec, [w], with_text=False)[0] for w in waves]
    assert rec.recognize(waves) == [funasr_offline(rec, [w], with_text=True)[0] for w in waves]
    assert all(rec.recognize_ids(waves))
