"""Text -> speech, streaming, as plain Python: voice prompt -> TTS prompt ids -> LM tokens ->
token2wav chunks. The Triton ``tts`` model drives the same steps with ``tts_lm`` behind BLS.

Only audio ids (65536..70655) of the LM output reach the flow: a text id, which a random or
misbehaving LM can emit, is dropped here rather than clamped into a wrong codebook entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from stepaudio.llm.prompts import TtsPrompt, build_tts_prompt
from stepaudio.llm.text_tokenizer import TextTokenizer
from stepaudio.tts.chunking import ChunkPolicy, plan_chunks
from stepaudio.tts.token2wav import PromptVoice, Token2Wav
from stepaudio.tts.voices import VoicePrompt

AUDIO_ID_OFFSET = 65536
N_AUDIO_IDS = 5120
OUTPUT_SAMPLE_RATE_HZ = 22050
MAX_TEXT_CHARS = 2000


class TtsInputError(ValueError):
    """Bad synthesis input; the message names the problem."""


def flow_tokens(llm_ids: Iterable[int]) -> list[int]:
    """LLM ids -> flow ids (N of <audio_N>), keeping audio ids only."""
    return [i - AUDIO_ID_OFFSET for i in llm_ids if AUDIO_ID_OFFSET <= i < AUDIO_ID_OFFSET + N_AUDIO_IDS]


def prompt_voice(voice: VoicePrompt) -> PromptVoice:
    return PromptVoice.of(voice.prompt_flow_tokens, voice.prompt_mel, voice.speaker_embedding)


@dataclass
class TtsPlan:
    prompt: TtsPrompt
    voice: VoicePrompt


def plan(tokenizer: TextTokenizer, text: str, voice: VoicePrompt) -> TtsPlan:
    if not text or not text.strip():
        raise TtsInputError("text is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise TtsInputError(f"text is {len(text)} characters, over the maximum of {MAX_TEXT_CHARS}")
    prompt = build_tts_prompt(tokenizer, text, voice.prompt_text, voice.prompt_llm_ids, voice.speaker or None)
    return TtsPlan(prompt, voice)


def stream_audio(
    t2w: Token2Wav, voice: VoicePrompt, llm_token_stream: Iterable[Iterable[int]], seed: int = 0,
    policy: ChunkPolicy | None = None,
) -> Iterator[np.ndarray]:
    """Feed LM outputs (batches of ids as they arrive) to a token2wav session; yield audio chunks."""
    session = t2w.session(prompt_voice(voice), seed=seed, policy=policy)
    try:
        for ids in llm_token_stream:
            yield from session.push(flow_tokens(ids))
        yield from session.finish()
    finally:
        session.close()


def token2wav_pushes(llm_token_stream: Iterable[Iterable[int]], push_tokens: int = 5,
                     policy: ChunkPolicy | None = None) -> Iterator[tuple[list[int], bool]]:
    """Groups streamed LM output into pushes for a token2wav stream: ``(flow tokens, is_last)``.

    With the stream's chunk ``policy`` a push leaves exactly when the tokens gathered so far let the
    stream release a chunk (``plan_chunks``), so the chunks, and when each can start, are the same as
    with a push per token group, in a few round trips instead (a 50-token clause: 2 pushes, not 11).
    Without it a push leaves once ``push_tokens`` flow tokens are gathered. The last push
    (``is_last``) carries the rest, possibly nothing, once the LM stream ends.
    """
    if push_tokens < 1:
        raise ValueError(f"push_tokens must be >= 1, got {push_tokens}")
    held: list[int] = []
    sent = released = 0  # tokens pushed; tokens the stream has released in chunks (as it will count them)
    for ids in llm_token_stream:
        held += flow_tokens(ids)
        if policy is None:
            due = len(held) >= push_tokens
        else:
            due = plan_chunks(sent + len(held), released, False, policy) is not None
        if due and held:
            sent += len(held)
            yield held, False
            held = []
            while policy is not None and (size := plan_chunks(sent, released, False, policy)) is not None:
                released += size
    yield held, True
