"""TritonBackend's tokenizer stream over a scripted gRPC client: what reaches Triton, and in how many requests."""

from __future__ import annotations

import asyncio

import numpy as np

from controller.triton_backend import TOKENIZER_STRIDE_SAMPLES, TritonBackend


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

    async def infer(self, model, inputs, sequence_id, sequence_start, sequence_end):
        audio = np.frombuffer(inputs[0]._get_content(), np.float32)
        cancel = any(i.name() == "cancel" for i in inputs)
        self.requests.append({"audio": audio.copy(), "start": sequence_start, "end": sequence_end, "cancel": cancel})
        await asyncio.sleep(0)
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
