"""TritonBackend's tokenizer stream over a scripted gRPC client: what reaches Triton, and in how many requests."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from controller.backend import BackendError
from controller.triton_backend import TOKENIZER_STRIDE_SAMPLES, TritonBackend
from tests.controller_fakes import FakeBackend, Harness, silence, speech


class _Result:
    def __init__(self, tokens: np.ndarray):
        self.tokens = tokens

    def as_numpy(self, name: str) -> np.ndarray:
        return self.tokens.reshape(1, -1)


class ScriptedClient:
    """Records each audio_tokenizer_stream request; answers one token per 1920 samples it completes."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self._n = 0
        self.fail: set[int] = set()  # these requests (by index) get an error

    async def infer(self, model, inputs, sequence_id, sequence_start, sequence_end):
        audio = np.frombuffer(inputs[0]._get_content(), np.float32)
        cancel = any(i.name() == "cancel" for i in inputs)
        self.requests.append({"audio": audio.copy(), "start": sequence_start, "end": sequence_end, "cancel": cancel,
                              "id": sequence_id})
        await asyncio.sleep(0)
        if len(self.requests) - 1 in self.fail:
            raise RuntimeError("refused")
        done = (self._n + len(audio)) // 1920 - self._n // 1920
        self._n += len(audio)
        return _Result(np.arange(done, dtype=np.int32))


def _backend() -> tuple[TritonBackend, ScriptedClient]:
    backend = TritonBackend("127.0.0.1:1")  # never connected: the client is replaced
    backend.client = client = ScriptedClient()
    return backend, client


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_appends_go_out_a_stride_at_a_time_and_all_of_them_at_the_end():
    async def go():
        backend, client = _backend()
        stream = backend.open_tokenizer_stream()
        x = np.random.default_rng(0).standard_normal(16000 + 123).astype(np.float32)
        for i in range(0, len(x), 1600):  # 100 ms appends
            stream.push(x[i:i + 1600])
            await _settle()
        tokens = await stream.finish()
        sent = np.concatenate([r["audio"] for r in client.requests])
        np.testing.assert_array_equal(sent, x)
        assert len(client.requests) == len(x) // TOKENIZER_STRIDE_SAMPLES + 1  # one per stride, and the end
        assert client.requests[0]["start"] and client.requests[-1]["end"]
        assert not any(r["end"] for r in client.requests[:-1])
        # every request but the last completes a stride the one before it did not
        total = 0
        for r in client.requests[:-1]:
            assert (total + len(r["audio"])) // TOKENIZER_STRIDE_SAMPLES > total // TOKENIZER_STRIDE_SAMPLES
            total += len(r["audio"])
        assert len(tokens) == len(x) // 1920
        assert backend.open_streams() == 0

    asyncio.run(go())


def test_cancel_before_a_stride_sends_nothing_and_after_one_closes_the_sequence():
    async def go():
        backend, client = _backend()
        stream = backend.open_tokenizer_stream()
        stream.push(np.zeros(1600, np.float32))
        await _settle()
        await stream.cancel()
        assert client.requests == []  # no sequence was started in Triton
        stream = backend.open_tokenizer_stream()
        stream.push(np.zeros(TOKENIZER_STRIDE_SAMPLES + 10, np.float32))
        await _settle()
        stream.push(np.zeros(100, np.float32))
        await stream.cancel()
        assert [(r["start"], r["end"], r["cancel"]) for r in client.requests] == [(True, False, False),
                                                                                 (False, True, True)]
        assert backend.open_streams() == 0

    asyncio.run(go())


def test_cancel_by_id_sends_the_cancel_request_and_waits_for_the_empty_final_response():
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    from controller.triton_backend import CANCEL_INPUT, _str_input

    seen = []

    class Server(pb_grpc.GRPCInferenceServiceServicer):
        async def ModelStreamInfer(self, requests, context):
            async for request in requests:
                seen.append(request)
                response = pb.ModelInferResponse(model_name=request.model_name)
                if request.parameters["triton_enable_empty_final_response"].bool_param:
                    response.parameters["triton_final_response"].bool_param = True  # empty and final
                    yield pb.ModelStreamInferResponse(infer_response=response)

    async def go():
        server = grpc.aio.server()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(Server(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            backend = TritonBackend(f"127.0.0.1:{port}")
            await asyncio.wait_for(backend.cancel_by_id("tts", "reply_1-tts0"), 10)
            await asyncio.wait_for(backend.cancel_by_id("chat_llm", "reply_2-chat"), 10)  # the channel again
            await backend.close()
        finally:
            await server.stop(None)

    asyncio.run(go())
    assert [r.model_name for r in seen] == ["tts", "chat_llm"]
    assert all(r.parameters["triton_enable_empty_final_response"].bool_param for r in seen)
    (tensor,) = seen[0].inputs
    expected = _str_input(CANCEL_INPUT, "reply_1-tts0")  # as tritonclient builds it
    assert (tensor.name, tensor.datatype, list(tensor.shape)) == (expected.name(), "BYTES", expected.shape())
    assert seen[0].raw_input_contents == [expected._get_content()]


def test_a_failed_first_request_still_ends_the_sequence():
    """The server saw the START even though it answered with an error: the sequence is ended (cancelled), not
    left to Triton's idle timeout."""
    async def go():
        backend, client = _backend()
        client.fail = {0}
        stream = backend.open_tokenizer_stream()
        stream.push(np.zeros(TOKENIZER_STRIDE_SAMPLES, np.float32))
        await _settle()
        with pytest.raises(BackendError, match="refused"):
            await stream.finish()
        assert [(r["start"], r["end"], r["cancel"]) for r in client.requests] == [(True, False, False),
                                                                                 (False, True, True)]
        assert backend.open_streams() == 0

    asyncio.run(go())


class _TritonTokenizerBackend(FakeBackend):
    """The fake backend, but user speech goes through the real TritonTokenizerStream to a scripted client."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.triton, self.client = _backend()

    def open_tokenizer_stream(self):
        return self.triton.open_tokenizer_stream()


def _open_sequences(client: ScriptedClient) -> set:
    started = {r["id"] for r in client.requests if r["start"]}
    return started - {r["id"] for r in client.requests if r["end"]}


async def _timeline(h: Harness, name: str) -> None:
    vad_off = {"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}}}
    if name == "manual":
        await h.send(vad_off)
    if name == "barge_in":
        h.backend.tts_gate = asyncio.Event()  # the reply is still playing when the user speaks again
    await h.audio(speech(1500))
    if name in ("paused", "resumed", "barge_in", "next_turn"):
        await h.audio(silence(300 if name in ("paused", "resumed") else 800))
    if name in ("resumed", "barge_in", "next_turn"):
        await h.audio(speech(800))
    if name == "cleared":
        await h.send({"type": "input_audio_buffer.clear"})
        await h.audio(speech(800))
    if name == "to_manual":
        await h.send(vad_off)
        await h.audio(speech(600))


@pytest.mark.parametrize("name", ["speaking", "paused", "resumed", "barge_in", "next_turn", "cleared", "manual",
                                  "to_manual"])
def test_every_tokenizer_sequence_a_session_starts_is_ended_when_it_closes(name):
    """Sessions closed (as on a client's disconnect) in each state a speech run can be in: no sequence stays
    open in the tokenizer for its idle timeout to expire."""
    async def go():
        backend = _TritonTokenizerBackend()
        async with Harness(backend) as h:
            await _timeline(h, name)
            assert backend.client.requests  # the timeline did start a sequence
        assert _open_sequences(backend.client) == set()
        assert backend.triton.open_streams() == 0

    asyncio.run(asyncio.wait_for(go(), 30))
