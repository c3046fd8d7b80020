"""tritonclient's gRPC asyncio client: one decoupled request as an async iterator.

Leaving the iterator before the final response (``break``, ``aclose``, task cancellation) cancels the
gRPC call, which is what makes ``is_cancelled()`` true in a Python-backend model. A request the server
already finished is not cancelled (tritonserver 2.51 has been seen unable to unload a model after that).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio


def is_final(result: grpcclient.InferResult) -> bool:
    final = result.get_response().parameters.get("triton_final_response")
    return bool(final is not None and final.bool_param)


async def decoupled_responses(
    client: grpcaio.InferenceServerClient, model: str, inputs: list[grpcclient.InferInput],
    request_id: str = "", timeout_s: float | None = None, idle_timeout_s: float | None = None,
) -> AsyncIterator[grpcclient.InferResult]:
    """Yields every response with outputs of one request to a decoupled model; raises the server's error.
    ``timeout_s`` bounds the whole stream; ``idle_timeout_s`` the wait for each response (TimeoutError,
    and the request is cancelled)."""
    done = asyncio.Event()

    async def requests():
        yield {"model_name": model, "inputs": inputs, "request_id": request_id}
        await done.wait()  # keep our side of the stream open until the final response came

    call = client.stream_infer(requests(), stream_timeout=timeout_s)
    finished = False
    responses = aiter(call)
    try:
        while True:
            try:
                result, error = await asyncio.wait_for(anext(responses), idle_timeout_s)
            except StopAsyncIteration:
                finished = True  # the server closed the stream
                return
            if error is not None:
                finished = True  # an error response ends the request in the server
                raise error
            finished = is_final(result)
            if result.get_response().outputs:
                yield result
            if finished:
                return
    finally:
        done.set()
        if not finished:
            call.cancel()
