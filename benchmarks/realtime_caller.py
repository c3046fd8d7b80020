"""A Realtime caller at real-time pace (OpenAI Realtime GA over a plain WebSocket), and what it measures.

    python -m benchmarks.realtime_caller --url ws://127.0.0.1:8765/v1/realtime --sessions 4 --turns 2 \
        [--frame-ms 100] [--silence-duration-ms 700] [--out result.json]

One ``RealtimeCaller`` is one phone line: after ``session.update`` (server VAD, PCM16 24 kHz both ways)
it sends ``input_audio_buffer.append`` frames of ``frame_ms`` (20-100 ms) on a real-time schedule, speech
and silence alike, never faster and never in bursts. A turn is an utterance followed by silence until the
reply's ``response.done`` (the server VAD ends the turn after ``silence_duration_ms`` of it), plus a short
tail. It uses ``websocket-client`` (the ``bench`` extra; gevent-friendly) and plain threads, so the same
code runs under locust (gevent patches both) and in the fleet runner here (real threads); without
``websocket-client`` it falls back to the ``websockets`` package's synchronous client (the ``dev`` extra).

Per turn (``TurnResult``), all on the caller's clock:

* ``voice_to_voice_s``: end of the user's speech -> first ``response.output_audio.delta`` of the reply.
  The end of speech is when the frame holding the last loud sample (|x| > 0.01) was sent, the earliest
  the server can have it. It includes the ``silence_duration_ms`` the VAD must wait.
* ``first_audio_s``: ``input_audio_buffer.speech_stopped`` received -> first audio delta: the reply's own
  latency once the server has ended the turn (tokenizer flush, chat, first clause's TTS).
* ``end_of_turn_lag_s``: ``speech_stopped`` received - end of speech - ``silence_duration_ms``: how late the
  controller declares the end of the turn; it stays near one VAD window plus a frame while the controller
  keeps up with the input, and grows when it falls behind.
* ``underrun_s`` / ``underruns``: a player that starts at the first delta and plays the deltas back to back
  (48 bytes per ms) waits this long for audio in all, in this many gaps longer than ``UNDERRUN_TOL_S``.
* ``send_late_max_s``: the most a frame left after its real-time slot (the caller's own health).

``run_fleet`` (the command line) runs N callers at once (threads, starts spread over ``--spread-s``), each for ``turns`` turns, and
prints or writes the per-turn results as JSON.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

import numpy as np

RATE_HZ = 24000
BYTES_PER_S = 2 * RATE_HZ  # PCM16 mono
LOUD = 0.01  # |sample| above this counts as speech when locating the end of an utterance
UNDERRUN_TOL_S = 0.02  # playback gaps shorter than this are jitter, not underruns
TAIL_MS = 300  # silence sent after response.done before the next turn

UTTERANCES = (
    "What is the weather like today in London?",
    "Please tell me a short joke about cats.",
    "Can you recommend a good book for a long train journey?",
    "How many minutes does it take to boil an egg?",
)


# -- workload -----------------------------------------------------------------------------------------
# espeak-ng recordings shipped with the client (no pause inside): the workload where espeak-ng or sox is
# missing. Not a synthetic signal: the controller's Silero VAD cuts that one mid-utterance, so its turns
# end early and are barged in on by their own tail, which measures nothing.
BUNDLED_UTTERANCES = ("demo_weather", "demo_bargein", "hello_24k")


def utterance(text: str, seed: int = 0, rate_hz: int = RATE_HZ) -> tuple[np.ndarray, str]:
    """``text`` spoken by espeak-ng (float32 at ``rate_hz``) and where it came from; without espeak-ng and
    sox, bundled espeak-ng recordings of other sentences (``BUNDLED_UTTERANCES``, picked by ``seed``)."""
    from benchmarks.common import espeak_available, espeak_speech, espeak_version

    if espeak_available():
        return espeak_speech(text, rate_hz), f"espeak-ng ({espeak_version()}) via sox"
    from client.audio_io import read_wav
    from client.demo_conversation import SAMPLES
    from client.realtime import resample

    name = BUNDLED_UTTERANCES[seed % len(BUNDLED_UTTERANCES)]
    audio, sr = read_wav(SAMPLES / f"{name}.wav")
    return resample(audio, sr, rate_hz), f"bundled espeak-ng recording client/samples/{name}.wav (espeak-ng or sox missing)"


def pcm16_b64(x: np.ndarray) -> str:
    return base64.b64encode((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()).decode()


def b64_len(s: str) -> int:
    """Decoded length of a base64 string without decoding it."""
    return len(s) * 3 // 4 - s[-2:].count("=") if s else 0


def playback_underruns(deltas: list[tuple[float, float]], tol_s: float = UNDERRUN_TOL_S) -> tuple[float, int]:
    """(total wait, gaps longer than ``tol_s``) of a player that starts at the first delta and plays
    ``deltas`` ((arrival s, duration s), in order) back to back."""
    stall, gaps, end = 0.0, 0, None
    for t, d in deltas:
        if end is None:
            end = t
        elif t > end:
            stall += t - end
            gaps += (t - end) > tol_s
            end = t
        end += d
    return stall, gaps


# -- transport ----------------------------------------------------------------------------------------
class _Socket:
    """The few WebSocket calls the caller makes, over ``websocket-client`` or ``websockets.sync``."""

    def __init__(self, url: str, headers: dict[str, str], timeout_s: float):
        try:
            import websocket
        except ImportError:
            websocket = None
        if websocket is not None:
            # skip_utf8_validation: websocket-client checks each text frame character by character in
            # Python; on the server's base64 audio deltas that was 2/3 of this load generator's CPU, taken
            # from the stack under test (json.loads still rejects invalid text).
            self.ws = websocket.create_connection(url, timeout=timeout_s, enable_multithread=True,
                                                  skip_utf8_validation=True,
                                                  header=[f"{k}: {v}" for k, v in headers.items()])
            self.ws.settimeout(None)
            self.errors: tuple = (websocket.WebSocketException, OSError)
            self.kind = "websocket-client"
        else:
            from websockets.exceptions import WebSocketException
            from websockets.sync.client import connect

            self.ws = connect(url, additional_headers=headers, open_timeout=timeout_s, max_size=None,
                              compression=None)
            self.errors = (WebSocketException, OSError)
            self.kind = "websockets"

    def send(self, text: str) -> None:
        self.ws.send(text)

    def recv(self) -> str:
        return self.ws.recv()

    def close(self) -> None:
        self.ws.close()


# -- results ------------------------------------------------------------------------------------------
@dataclass
class TurnResult:
    session: int
    turn: int
    utterance_s: float
    ok: bool = False
    status: str | None = None  # response.done's status
    error: str | None = None
    voice_to_voice_s: float | None = None
    first_audio_s: float | None = None
    end_of_turn_lag_s: float | None = None
    reply_audio_s: float = 0.0
    reply_deltas: int = 0
    underrun_s: float | None = None
    underruns: int | None = None
    send_late_max_s: float = 0.0
    response_total_s: float | None = None  # speech_stopped -> response.done


@dataclass
class _Turn:
    t_speech_end: float | None = None
    t_stopped: float | None = None
    t_done: float | None = None
    status: str | None = None
    deltas: list[tuple[float, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)


class RealtimeCaller:
    """One WebSocket session at real-time pace. ``connect()``, then ``turn(audio)`` as often as wanted,
    then ``close()``. Thread-based (gevent-friendly: under locust the threads are greenlets)."""

    def __init__(self, url: str, *, frame_ms: int = 100, silence_duration_ms: int = 700, api_key: str = "sk-bench",
                 reply_timeout_s: float = 30.0, connect_timeout_s: float = 30.0, index: int = 0,
                 max_output_tokens: int | None = None):
        if not 20 <= frame_ms <= 100:
            raise ValueError("frame_ms must be 20-100")
        self.url, self.frame_ms, self.silence_ms = url, frame_ms, silence_duration_ms
        self.api_key, self.reply_timeout_s, self.connect_timeout_s = api_key, reply_timeout_s, connect_timeout_s
        self.index, self.max_output_tokens = index, max_output_tokens
        self.step = RATE_HZ * frame_ms // 1000
        self.ws = None
        self._cur: _Turn | None = None
        self._lock = threading.Lock()
        self._updated = threading.Event()
        self._reader: threading.Thread | None = None
        self._closed = False
        self._t_next = 0.0
        self._late = 0.0
        self.turns = 0
        self.session_errors: list[str] = []

    # -- connection -----------------------------------------------------------------------------------
    def connect(self) -> RealtimeCaller:
        self.ws = _Socket(self.url, {"Authorization": f"Bearer {self.api_key}"}, self.connect_timeout_s)
        self._reader = threading.Thread(target=self._read, name=f"caller{self.index}-reader", daemon=True)
        self._reader.start()
        limit = {} if self.max_output_tokens is None else {"max_output_tokens": self.max_output_tokens}
        self._send({"type": "session.update", "session": {
            "type": "realtime", "output_modalities": ["audio"], **limit,
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": RATE_HZ},
                                "turn_detection": {"type": "server_vad", "silence_duration_ms": self.silence_ms,
                                                   "create_response": True, "interrupt_response": True}},
                      "output": {"format": {"type": "audio/pcm", "rate": RATE_HZ}}}}})
        if not self._updated.wait(self.connect_timeout_s):
            raise TimeoutError("no session.updated")
        self._t_next = time.perf_counter()
        return self

    def close(self) -> None:
        self._closed = True
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:  # already gone
                pass
        if self._reader is not None:
            self._reader.join(5)

    def _send(self, ev: dict) -> None:
        self.ws.send(json.dumps(ev))

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self.ws.recv()
            except self.ws.errors as exc:
                if not self._closed:
                    self.session_errors.append(f"connection: {exc!r}")
                    with self._lock:
                        if self._cur is not None:
                            self._cur.errors.append(f"connection lost: {exc!r}")
                            self._cur.done.set()
                return
            t = time.perf_counter()
            if not data:
                continue
            ev = json.loads(data)
            kind = ev.get("type")
            with self._lock:
                cur = self._cur
                if kind == "session.updated":
                    self._updated.set()
                elif cur is None:
                    continue
                elif kind == "response.output_audio.delta":
                    cur.deltas.append((t, b64_len(ev.get("delta", "")) / BYTES_PER_S))
                elif kind == "input_audio_buffer.speech_stopped":
                    cur.t_stopped = t if cur.t_stopped is None else cur.t_stopped
                elif kind == "response.done":
                    resp = ev.get("response") or {}
                    cur.t_done, cur.status = t, resp.get("status")
                    if cur.status not in ("completed", "incomplete"):
                        details = resp.get("status_details") or {}
                        cur.errors.append(f"response {cur.status}: {(details.get('error') or {}).get('message')}")
                    cur.done.set()
                elif kind == "error":
                    cur.errors.append(f"{ev.get('error', {}).get('code')}: {ev.get('error', {}).get('message')}")

    # -- audio at real-time pace ------------------------------------------------------------------------
    def _frame(self, x: np.ndarray) -> float:
        """Sends one frame in its real-time slot; returns when it left."""
        delay = self._t_next - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        t = time.perf_counter()
        self._late = max(self._late, t - self._t_next)
        self._send({"type": "input_audio_buffer.append", "audio": pcm16_b64(x)})
        self._t_next += len(x) / RATE_HZ
        return t

    def silence(self, ms: int) -> None:
        z = np.zeros(self.step, np.float32)
        for _ in range(max(1, ms // self.frame_ms)):
            self._frame(z)

    def turn(self, audio: np.ndarray) -> TurnResult:
        """Speaks ``audio`` at real-time pace, then keeps the line open with silence until the reply is done
        (or ``reply_timeout_s``); returns what it measured."""
        loud = np.flatnonzero(np.abs(audio) > LOUD)
        last_loud = int(loud[-1]) if loud.size else len(audio) - 1
        cur = _Turn()
        with self._lock:
            self._cur = cur
        self._late = 0.0
        res = TurnResult(session=self.index, turn=self.turns, utterance_s=round(len(audio) / RATE_HZ, 3))
        self.turns += 1
        for i in range(0, len(audio), self.step):
            t = self._frame(audio[i:i + self.step])
            if cur.t_speech_end is None and i + self.step > last_loud:
                cur.t_speech_end = t
        z = np.zeros(self.step, np.float32)
        deadline = time.perf_counter() + self.reply_timeout_s
        while not cur.done.is_set() and time.perf_counter() < deadline:
            self._frame(z)  # the line stays open: silence
        with self._lock:
            self._cur = None
        self.silence(TAIL_MS)
        res.send_late_max_s = round(self._late, 4)
        return self._result(res, cur)

    def _result(self, res: TurnResult, cur: _Turn) -> TurnResult:
        res.status = cur.status
        res.reply_deltas = len(cur.deltas)
        res.reply_audio_s = round(sum(d for _, d in cur.deltas), 4)
        if cur.errors:
            res.error = "; ".join(cur.errors[:3])
        if cur.t_stopped is not None:
            res.end_of_turn_lag_s = round(cur.t_stopped - cur.t_speech_end - self.silence_ms / 1000, 4)
            if cur.t_done is not None:
                res.response_total_s = round(cur.t_done - cur.t_stopped, 4)
        if cur.deltas:
            res.voice_to_voice_s = round(cur.deltas[0][0] - cur.t_speech_end, 4)
            if cur.t_stopped is not None:
                res.first_audio_s = round(cur.deltas[0][0] - cur.t_stopped, 4)
            stall, gaps = playback_underruns(cur.deltas)
            res.underrun_s, res.underruns = round(stall, 4), gaps
        if not cur.done.is_set() and res.error is None:
            res.error = f"no response.done within {self.reply_timeout_s:.0f} s"
        # incomplete: the reply reached max_output_tokens (the benchmarks cap replies on purpose)
        res.ok = res.error is None and cur.status in ("completed", "incomplete") and bool(cur.deltas)
        return res


# -- many callers at once -----------------------------------------------------------------------------
def run_fleet(url: str, sessions: int, turns: int, audios: list[np.ndarray], *, frame_ms: int = 100,
              silence_duration_ms: int = 700, reply_timeout_s: float = 30.0, seed: int = 0,
              max_wall_s: float = 900.0, spread_s: float = 1.0) -> dict:
    """``sessions`` callers at once, ``turns`` turns each (utterances cycled from ``audios``); starts spread
    over ``spread_s``. Returns per-turn results and per-session errors."""
    rng = random.Random(seed)
    offsets = sorted(rng.uniform(0, spread_s) for _ in range(sessions))
    results: list[TurnResult] = []
    errors: list[str] = []
    lock = threading.Lock()
    t_end = time.perf_counter() + max_wall_s

    def one(i: int) -> None:
        time.sleep(offsets[i])
        caller = RealtimeCaller(url, frame_ms=frame_ms, silence_duration_ms=silence_duration_ms,
                                reply_timeout_s=reply_timeout_s, index=i)
        try:
            caller.connect()
            caller.silence(200 + 100 * (i % 5))
            for k in range(turns):
                if time.perf_counter() > t_end:
                    break
                r = caller.turn(audios[(i + k) % len(audios)])
                with lock:
                    results.append(r)
        except Exception as exc:  # reported with the results
            with lock:
                errors.append(f"session {i}: {exc!r}")
        finally:
            caller.close()
            with lock:
                errors.extend(f"session {i}: {e}" for e in caller.session_errors)

    threads = [threading.Thread(target=one, args=(i,), name=f"caller{i}") for i in range(sessions)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return {"sessions": sessions, "turns_per_session": turns, "wall_s": round(time.perf_counter() - t0, 2),
            "results": [asdict(r) for r in sorted(results, key=lambda r: (r.session, r.turn))],
            "session_errors": errors}


def main(argv: list[str] | None = None) -> int:
    from benchmarks.stack import require_local

    p = argparse.ArgumentParser(prog="python -m benchmarks.realtime_caller", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="ws://127.0.0.1:8765/v1/realtime")
    p.add_argument("--sessions", type=int, default=1)
    p.add_argument("--turns", type=int, default=2)
    p.add_argument("--frame-ms", type=int, default=100)
    p.add_argument("--silence-duration-ms", type=int, default=700)
    p.add_argument("--reply-timeout-s", type=float, default=30.0)
    p.add_argument("--max-wall-s", type=float, default=900.0, help="no new turn starts after this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spread-s", type=float, default=1.0, help="session starts spread over this")
    p.add_argument("--out", default=None, help="write the JSON here (default: stdout)")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-local --url")
    args = p.parse_args(argv)
    require_local(args.url, allow_remote=args.allow_remote)
    spoken = [utterance(t, i) for i, t in enumerate(UTTERANCES)]
    audios = [a for a, _ in spoken]
    doc = run_fleet(args.url, args.sessions, args.turns, audios, frame_ms=args.frame_ms,
                    silence_duration_ms=args.silence_duration_ms, reply_timeout_s=args.reply_timeout_s,
                    seed=args.seed, max_wall_s=args.max_wall_s, spread_s=args.spread_s)
    doc["workload"] = sorted({src for _, src in spoken})
    text = json.dumps(doc)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
