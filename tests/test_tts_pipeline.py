"""Text to streamed audio through the core modules on the tiny checkpoints (no Triton)."""

import numpy as np
import pytest

from stepaudio.tts.pipeline import TtsInputError, flow_tokens, plan, prompt_voice, stream_audio


@pytest.fixture(scope="module")
def parts(tiny_checkpoints):
    from stepaudio.llm.engine import Engine
    from stepaudio.llm.loader import load_step1
    from stepaudio.llm.text_tokenizer import TextTokenizer
    from stepaudio.tts.flow import load_flow
    from stepaudio.tts.hift import load_hift
    from stepaudio.tts.token2wav import Token2Wav
    from stepaudio.tts.voices import VoiceBank

    tts = tiny_checkpoints / "Step-Audio-TTS-3B"
    decoder = tts / "CosyVoice-300M-25Hz"
    bank = VoiceBank.from_dirs(tiny_checkpoints / "Step-Audio-Tokenizer", decoder, tiny_checkpoints / "speakers")
    return {
        "tok": TextTokenizer(tts), "engine": Engine(load_step1(tts, dtype="float32")), "bank": bank,
        "t2w": Token2Wav(load_flow(decoder), load_hift(decoder)),
    }


def test_flow_tokens_keep_audio_ids_only():
    assert flow_tokens([65536, 70655, 70656, 3, 100, 66560]) == [0, 5119, 1024]


def test_text_to_streamed_audio(parts):
    from stepaudio.llm.sampling import SamplingParams

    voice = parts["bank"].builtin("Tingting", "(高兴1)你好")
    p = plan(parts["tok"], "(高兴1)你好，今天天气很好。", voice)
    assert p.prompt.sys_prompt_kind == "with_spk" and p.prompt.decoder == "CosyVoice-300M-25Hz"
    ids = parts["engine"].generate(p.prompt.ids, SamplingParams.for_tts(seed=1, max_new_tokens=60, stop_ids=()))
    # the random tiny LM emits text ids too; keep the run meaningful with audio ids of the prompt voice
    audio_ids = [i for i in ids if 65536 <= i < 70656] or list(voice.prompt_llm_ids)
    batches = [audio_ids[i : i + 7] for i in range(0, len(audio_ids), 7)]
    chunks = list(stream_audio(parts["t2w"], voice, batches, seed=2))
    wav = np.concatenate(chunks)
    offline = parts["t2w"].offline(flow_tokens(audio_ids), prompt_voice(voice), seed=2)
    assert len(wav) == len(offline) > 0 and np.isfinite(wav).all()


@pytest.mark.parametrize("text,match", [("", "empty"), ("   ", "empty"), ("x" * 2001, "maximum")])
def test_bad_text(parts, text, match):
    voice = parts["bank"].builtin("Tingting")
    with pytest.raises(TtsInputError, match=match):
        plan(parts["tok"], text, voice)


def test_token2wav_pushes_groups_audio_ids_and_ends_with_the_rest():
    from stepaudio.tts.pipeline import token2wav_pushes

    a = 65536
    batches = [[a + 1], [a + 2, 7], [a + 3], [a + 4, a + 5], [a + 6], [70656]]  # 7 and 70656: not audio ids
    assert list(token2wav_pushes(batches, push_tokens=2)) == [([1, 2], False), ([3, 4, 5], False), ([6], True)]
    assert list(token2wav_pushes([], push_tokens=5)) == [([], True)]
    with pytest.raises(ValueError, match="push_tokens"):
        list(token2wav_pushes([], push_tokens=0))


def _releases(pushes, policy):
    """(LM batch index, chunk size) for every chunk a token2wav stream with ``policy`` releases when fed
    ``pushes`` (an iterator of token2wav_pushes over numbered batches; the index is read as each push leaves)."""
    from stepaudio.tts.chunking import plan_chunks

    out, have, released = [], 0, 0
    for (tokens, last), batch in pushes:
        have += len(tokens)
        while (size := plan_chunks(have, released, last, policy)) is not None:
            released += size
            out.append((batch, size))
    return out


@pytest.mark.parametrize("first", [None, 50, 3])
def test_aligned_pushes_release_the_same_chunks_at_the_same_lm_position(first):
    from stepaudio.tts.chunking import ChunkPolicy
    from stepaudio.tts.pipeline import token2wav_pushes

    a = 65536
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 8, 60)  # LM responses of 1..7 ids, some not audio
    batches = [[a + int(x) if x % 9 else 7 for x in rng.integers(0, 5000, n)] for n in sizes]
    policy = ChunkPolicy().with_first(first)
    pos = {"i": -1}

    def lm():
        for i, b in enumerate(batches):
            pos["i"] = i
            yield b

    def tagged(pushes):
        for push in pushes:
            yield push, pos["i"]

    every_group = _releases(tagged(token2wav_pushes(lm(), 5)), policy)
    one_per_push = _releases(tagged(token2wav_pushes(lm(), 1)), policy)
    aligned_pushes = list(token2wav_pushes(lm(), 5, policy))
    aligned = _releases(tagged(token2wav_pushes(lm(), 5, policy)), policy)
    assert aligned == one_per_push  # every chunk as early as the finest pushing releases it
    assert [s for _, s in aligned] == [s for _, s in every_group]
    assert sum(len(t) for t, _ in aligned_pushes) == sum(len(t) for t, _ in token2wav_pushes(lm(), 5))
    assert len(aligned_pushes) <= len(aligned) + 1 < len(list(token2wav_pushes(lm(), 5)))


def test_cancel_board_flags_running_and_early_cancels():
    from stepaudio.serving_utils import CancelBoard

    now = [0.0]
    board = CancelBoard(early_ttl_s=10, clock=lambda: now[0])
    flag = board.register("a")
    assert board.cancel("a") and flag.is_set()
    with pytest.raises(ValueError, match="already active"):
        board.register("a")
    board.release("a")
    assert not board.cancel("b")  # before its request: kept
    assert board.register("b").is_set()
    board.cancel("c")
    now[0] = 11.0
    assert not board.register("c").is_set()  # expired
    assert len(board) == 2


def test_graveyard_holds_objects_for_its_time_then_lets_go():
    import gc
    import weakref

    from stepaudio.serving_utils import Graveyard

    class Thing:
        pass

    now = [0.0]
    yard = Graveyard(hold_s=30, clock=lambda: now[0])
    first = Thing()
    ref = weakref.ref(first)
    assert yard.bury(first) is first
    del first
    gc.collect()
    assert ref() is not None  # held although nobody else refers to it
    now[0] = 29.0
    yard.bury(Thing())
    assert ref() is not None and len(yard) == 2
    now[0] = 31.0
    yard.bury(Thing())  # the first is past its time: dropped here, by this thread
    assert ref() is None and len(yard) == 2
    yard.clear()
    assert len(yard) == 0
