"""One request to a decoupled Triton model over a gRPC stream, shared by the streaming clients."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator

import tritonclient.grpc as grpcclient


def decoupled_responses(
    client: grpcclient.InferenceServerClient, model: str, inputs: list[grpcclient.InferInput],
    timeout_s: float = 300.0,
) -> Iterator[tuple[grpcclient.InferResult, bool, float]]:
    """Yields (response, is_final, seconds since the request) for every response with outputs; raises
    the server's error. Leaving early cancels the request on the server."""
    q: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: q.put((result, error)))
    t0 = time.perf_counter()
    done = False  # the server closed the stream: nothing left to cancel
    try:
        client.async_stream_infer(model, inputs, enable_empty_final_response=True)
        while not done:
            result, error = q.get(timeout=timeout_s)
            if error is not None:
                done = True
                raise error
            final = result.get_response().parameters.get("triton_final_response")
            done = bool(final and final.bool_param)
            if result.get_response().outputs:  # the empty final response only closes the stream
                yield result, done, time.perf_counter() - t0
    finally:
        # Cancel only a request still running (the caller stopped early); cancelling one the server
        # already finished has been seen to leave tritonserver 2.51 unable to unload the model.
        client.stop_stream(cancel_requests=not done)
