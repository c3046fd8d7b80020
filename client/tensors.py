"""Triton model and tensor names, dtypes and shapes: the one definition shared by the renderer,
the Python-backend models and the clients (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorSpec:
    name: str
    triton_dtype: str  # as in config.pbtxt, e.g. "TYPE_FP32"
    dims: tuple[int, ...]  # without the batch dimension
    optional: bool = False
    ragged: bool = False

    @property
    def client_dtype(self) -> str:  # as tritonclient names it, e.g. "FP32"
        return {"TYPE_STRING": "BYTES"}.get(self.triton_dtype, self.triton_dtype.removeprefix("TYPE_"))


# -- audio_tokenizer: one whole utterance per request -------------------------------------------
AUDIO_TOKENIZER = "audio_tokenizer"
AUDIO = TensorSpec("audio", "TYPE_FP32", (-1,))  # mono PCM in [-1, 1]
SAMPLE_RATE_HZ = TensorSpec("sample_rate_hz", "TYPE_INT32", (1,))
SEGMENT_MS = TensorSpec("segment_ms", "TYPE_INT32", (1,), optional=True)
NORMALIZATION = TensorSpec("normalization", "TYPE_STRING", (1,), optional=True)
AUDIO_TOKENS = TensorSpec("audio_tokens", "TYPE_INT32", (-1,))  # N of <audio_N>, 5 per 120 ms
AUDIO_TOKEN_STRING = TensorSpec("audio_token_string", "TYPE_STRING", (1,))
# true: tokenize as a TTS voice prompt (the reference's path: 16 kHz, peak normalisation, silence trim)
TTS_PROMPT = TensorSpec("tts_prompt", "TYPE_BOOL", (1,), optional=True)
AUDIO_TOKENIZER_INPUTS = (AUDIO, SAMPLE_RATE_HZ, SEGMENT_MS, NORMALIZATION, TTS_PROMPT)
AUDIO_TOKENIZER_OUTPUTS = (AUDIO_TOKENS, AUDIO_TOKEN_STRING)

# -- audio_tokenizer_stream: a sequence (correlation id) per utterance, chunks as they arrive ----
AUDIO_TOKENIZER_STREAM = "audio_tokenizer_stream"
STREAM_AUDIO = TensorSpec("audio", "TYPE_FP32", (-1,), ragged=True)
STREAM_SAMPLE_RATE_HZ = TensorSpec("sample_rate_hz", "TYPE_INT32", (1,))
STREAM_CANCEL = TensorSpec("cancel", "TYPE_BOOL", (1,), optional=True)  # with END: drop, don't flush
STREAM_INPUTS = (STREAM_AUDIO, STREAM_SAMPLE_RATE_HZ, STREAM_CANCEL)
STREAM_OUTPUTS = (AUDIO_TOKENS, AUDIO_TOKEN_STRING)
# Sequence-batcher control tensors delivered to the model.
CONTROL_START = "START"
CONTROL_END = "END"
CONTROL_CORRID = "CORRID"

# -- chat_llm / tts_lm: decoupled streaming generation (one template, two deployments) ----------
CHAT_LLM = "chat_llm"
TTS_LM = "tts_lm"
PROMPT_IDS = TensorSpec("prompt_ids", "TYPE_INT32", (-1,), optional=True)
MESSAGES_JSON = TensorSpec("messages_json", "TYPE_STRING", (1,), optional=True)  # chat only
MAX_NEW_TOKENS = TensorSpec("max_new_tokens", "TYPE_INT32", (1,), optional=True)
TEMPERATURE = TensorSpec("temperature", "TYPE_FP32", (1,), optional=True)
TOP_K = TensorSpec("top_k", "TYPE_INT32", (1,), optional=True)
TOP_P = TensorSpec("top_p", "TYPE_FP32", (1,), optional=True)
SEED = TensorSpec("seed", "TYPE_INT64", (1,), optional=True)
REQUEST_ID = TensorSpec("request_id", "TYPE_STRING", (1,), optional=True)
# A request holding only this cancels the running request with that request_id (a cancel that arrives
# first is kept for 30 s); it gets one empty final response. It reaches streams started through BLS,
# which Triton 2.51 cannot cancel otherwise.
CANCEL_REQUEST_ID = TensorSpec("cancel_request_id", "TYPE_STRING", (1,), optional=True)
# Responses carry at least this many new ids (the last one may carry fewer): a consumer that works in
# groups (tts pushes 5 speech tokens at a time) asks for them, instead of one IPC round trip per id.
MIN_TOKENS_PER_RESPONSE = TensorSpec("min_tokens_per_response", "TYPE_INT32", (1,), optional=True)
LLM_INPUTS = (PROMPT_IDS, MESSAGES_JSON, MAX_NEW_TOKENS, TEMPERATURE, TOP_K, TOP_P, SEED, REQUEST_ID,
              CANCEL_REQUEST_ID, MIN_TOKENS_PER_RESPONSE)
TOKEN_IDS = TensorSpec("token_ids", "TYPE_INT32", (-1,))  # ids new in this response
TEXT_DELTA = TensorSpec("text_delta", "TYPE_STRING", (1,))  # UTF-8 text new in this response (chat)
FINISH_REASON = TensorSpec("finish_reason", "TYPE_STRING", (1,))  # "" until the last response
PROMPT_TOKENS = TensorSpec("prompt_tokens", "TYPE_INT32", (1,))
COMPLETION_TOKENS = TensorSpec("completion_tokens", "TYPE_INT32", (1,))
CACHED_PROMPT_TOKENS = TensorSpec("cached_prompt_tokens", "TYPE_INT32", (1,))
LLM_OUTPUTS = (TOKEN_IDS, TEXT_DELTA, FINISH_REASON, PROMPT_TOKENS, COMPLETION_TOKENS, CACHED_PROMPT_TOKENS)

# -- tts: text (+ built-in speaker or clone prompt) -> streamed audio (decoupled, BLS over tts_lm) --
TTS = "tts"
TTS_TEXT = TensorSpec("text", "TYPE_STRING", (1,), optional=True)  # required except in a cancel request
TTS_SPEAKER = TensorSpec("speaker", "TYPE_STRING", (1,), optional=True)
CLONE_AUDIO = TensorSpec("clone_audio", "TYPE_FP32", (-1,), optional=True)
CLONE_SAMPLE_RATE_HZ = TensorSpec("clone_sample_rate_hz", "TYPE_INT32", (1,), optional=True)
CLONE_TEXT = TensorSpec("clone_text", "TYPE_STRING", (1,), optional=True)
TTS_STREAM = TensorSpec("stream", "TYPE_BOOL", (1,), optional=True)  # false: one chunk at the end
# Speech tokens before this request's first audio (default: the deployment's token2wav first chunk). A
# larger first chunk means fewer flow runs (each re-reads the voice prompt) but later first audio: worth
# it when the listener already has audio queued, e.g. for a reply's later clauses.
FIRST_CHUNK_TOKENS = TensorSpec("first_chunk_tokens", "TYPE_INT32", (1,), optional=True)
# request_id / cancel_request_id: as for the LLMs; cancelling a tts request also stops its tts_lm stream.
TTS_INPUTS = (TTS_TEXT, TTS_SPEAKER, CLONE_AUDIO, CLONE_SAMPLE_RATE_HZ, CLONE_TEXT, TTS_STREAM, SEED,
              MAX_NEW_TOKENS, TEMPERATURE, REQUEST_ID, CANCEL_REQUEST_ID, FIRST_CHUNK_TOKENS)
AUDIO_OUT = TensorSpec("audio", "TYPE_FP32", (-1,))  # mono PCM in [-1, 1]
AUDIO_SAMPLE_RATE_HZ = TensorSpec("sample_rate_hz", "TYPE_INT32", (1,))
TTS_OUTPUTS = (AUDIO_OUT, AUDIO_SAMPLE_RATE_HZ, FINISH_REASON)

# -- speaker_embedding: CAM++ x-vector of a recording (dynamic batching) --
SPEAKER_EMBEDDING = "speaker_embedding"
SPEAKER_EMBEDDING_INPUTS = (AUDIO, SAMPLE_RATE_HZ)
EMBEDDING = TensorSpec("embedding", "TYPE_FP32", (192,))  # mean-normalised fbank -> campplus.onnx
SPEAKER_EMBEDDING_OUTPUTS = (EMBEDDING,)

# -- token2wav: streaming speech tokens -> audio, one sequence (CORRID) per utterance --
# The START request carries the voice; each request the tokens new since the last; END flushes.
TOKEN2WAV = "token2wav"
FLOW_TOKENS = TensorSpec("flow_tokens", "TYPE_INT32", (-1,), ragged=True)  # N of <audio_N>, 0..5119
DECODER = TensorSpec("decoder", "TYPE_STRING", (1,), optional=True)  # CosyVoice-300M-25Hz[-Music]
PROMPT_FLOW_TOKENS = TensorSpec("prompt_flow_tokens", "TYPE_INT32", (-1,), optional=True, ragged=True)
PROMPT_MEL = TensorSpec("prompt_mel", "TYPE_FP32", (-1,), optional=True, ragged=True)  # (frames * 80,)
PROMPT_EMBEDDING = TensorSpec("prompt_embedding", "TYPE_FP32", (192,), optional=True)
T2W_SEED = TensorSpec("seed", "TYPE_INT64", (1,), optional=True)
# FIRST_CHUNK_TOKENS (START request only): the stream's first chunk, as for tts.
TOKEN2WAV_INPUTS = (FLOW_TOKENS, DECODER, PROMPT_FLOW_TOKENS, PROMPT_MEL, PROMPT_EMBEDDING, T2W_SEED, STREAM_CANCEL,
                    FIRST_CHUNK_TOKENS)
T2W_AUDIO = TensorSpec("audio", "TYPE_FP32", (-1,))  # 22050 Hz; may be empty
TOKEN2WAV_OUTPUTS = (T2W_AUDIO, AUDIO_SAMPLE_RATE_HZ)

# -- asr: one whole utterance -> its transcript (dynamic batching; history text for the controller) --
ASR = "asr"
ASR_AUDIO = TensorSpec("audio", "TYPE_FP32", (-1,), ragged=True)  # mono PCM in [-1, 1]; lengths differ in a batch
ASR_SAMPLE_RATE_HZ = TensorSpec("sample_rate_hz", "TYPE_INT32", (1,))
ASR_TEXT = TensorSpec("text", "TYPE_STRING", (1,))  # UTF-8; "" when nothing was recognised
ASR_INPUTS = (ASR_AUDIO, ASR_SAMPLE_RATE_HZ)
ASR_OUTPUTS = (ASR_TEXT,)
