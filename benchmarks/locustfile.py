"""Load tests of a running stack (``make serve``): Realtime callers, ``tts`` and ``chat_llm`` streamers.

    make load USERS=8 DURATION=60s                      # all three user kinds, weighted 3 : 1 : 1
    make load USERS=16 DURATION=120s LOAD_USERS=RealtimeCaller
    .venv/bin/locust -f benchmarks/locustfile.py --headless -u 4 -r 4 -t 60s --csv benchmarks/results/load/load

Targets (localhost by default; anything else is refused unless ``--allow-remote`` / ``LOAD_ALLOW_REMOTE=1``):

| setting | environment | default |
|---|---|---|
| ``--realtime-url`` | ``REALTIME_URL`` | ``ws://127.0.0.1:$CONTROLLER_PORT/v1/realtime`` (8765) |
| ``--controller-metrics-url`` | ``CONTROLLER_METRICS_URL`` | the same host and port, ``/metrics`` |
| ``--triton-url`` | ``TRITON_GRPC_URL`` | ``127.0.0.1:$TRITON_GRPC_PORT`` (8001) |

Users:

* ``RealtimeCaller``: one WebSocket session per user (``benchmarks.realtime_caller``), espeak-ng speech
  sent at real-time pace in ``--frame-ms`` frames (20-100 ms), then silence until the server VAD ends the
  turn and the reply is done; one turn per task. Reported as request type ``realtime``:
  ``voice_to_voice`` (end of speech -> first ``response.output_audio.delta``), ``first_audio``
  (``speech_stopped`` -> first audio delta), ``end_of_turn_lag`` (how late ``speech_stopped`` came
  after the VAD's silence) and ``playback_underrun`` (how long a player would have waited for audio).
  A turn without a completed or length-limited reply with audio is a failure. At the end,
  ``speculation_committed`` and ``speculation_started`` (``controller_speculation_total`` from the
  controller's /metrics, difference over the run) are reported with the count as the response length.
* ``TtsStreamer``: ``client.tts`` streaming requests (built-in speaker, fixed seeds): ``tts
  first_chunk`` and ``tts total`` (response length: audio bytes).
* ``ChatStreamer``: ``client.chat`` streaming ``chat_llm`` requests: ``chat_llm first_token`` and
  ``chat_llm total`` (response length: completion tokens).

Bounds: ``-t`` (``make load`` always passes ``DURATION``), ``--max-seconds`` (a hard stop even without
``-t``, default 900), ``--max-iterations`` per user (default 100) and every request's own timeout.
Outputs: locust's ``--csv`` / ``--json-file`` files, and ``<--summary-json>``: exact percentiles of every
metric (``benchmarks.common.percentiles``), failures, the speculation counts, ``os.getloadavg()`` before
and after, and the git SHA.
"""

# gRPC must be made gevent-aware before anything creates a channel, or locust hangs.
from grpc.experimental import gevent as grpc_gevent

grpc_gevent.init_gevent()

import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
from locust import User, between, events, task  # noqa: E402
from locust.exception import StopUser  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # locust puts only this file's folder on the path
    sys.path.insert(0, str(ROOT))

from benchmarks.common import git_info, percentiles  # noqa: E402
from benchmarks.realtime_caller import UTTERANCES, utterance  # noqa: E402
from benchmarks.realtime_caller import RealtimeCaller as Caller  # noqa: E402
from benchmarks.stack import require_local  # noqa: E402

TTS_TEXTS = ("你好，今天天气怎么样？", "Hello, this is a load test of the speech synthesis.", "我们明天去公园散步吧。")
CHAT_PROMPTS = ("介绍一下你自己", "What is the capital of France?", "给我讲一个简短的笑话")

_raw: dict[str, list[float]] = {}
_fail: dict[str, int] = {}
_state: dict = {}
_counter = itertools.count()
_AUDIOS: list = []  # the Realtime callers' utterances, made once


def _default_realtime_url() -> str:
    return os.environ.get("REALTIME_URL") or f"ws://127.0.0.1:{os.environ.get('CONTROLLER_PORT', '8765')}/v1/realtime"


def _default_metrics_url(realtime_url: str) -> str:
    hostport = realtime_url.split("://", 1)[-1].split("/", 1)[0]
    return f"http://{hostport}/metrics"


@events.init_command_line_parser.add_listener
def _args(parser) -> None:
    rt = _default_realtime_url()
    parser.add_argument("--realtime-url", default=rt, help="the controller's Realtime WebSocket URL")
    parser.add_argument("--controller-metrics-url", default=os.environ.get("CONTROLLER_METRICS_URL"),
                        help="default: the Realtime URL's host and port, /metrics")
    parser.add_argument("--triton-url", default=os.environ.get("TRITON_GRPC_URL")
                        or f"127.0.0.1:{os.environ.get('TRITON_GRPC_PORT', '8001')}", help="Triton gRPC HOST:PORT")
    parser.add_argument("--allow-remote", action="store_true", default=os.environ.get("LOAD_ALLOW_REMOTE") == "1",
                        help="allow non-local targets (refused by default)")
    parser.add_argument("--frame-ms", type=int, default=int(os.environ.get("LOAD_FRAME_MS", "100")),
                        help="Realtime audio frame (20-100 ms)")
    parser.add_argument("--silence-duration-ms", type=int, default=700, help="server VAD end-of-turn silence")
    parser.add_argument("--reply-timeout-s", type=float, default=30.0)
    parser.add_argument("--max-output-tokens", type=int, default=24,
                        help="the callers' session max_output_tokens (chat tokens per reply; 0: the server's limit)")
    parser.add_argument("--tts-max-new-tokens", type=int, default=120)
    parser.add_argument("--chat-max-new-tokens", type=int, default=32)
    parser.add_argument("--max-iterations", type=int, default=int(os.environ.get("LOAD_MAX_ITERATIONS", "100")),
                        help="tasks per user, then the user stops")
    parser.add_argument("--max-seconds", type=float, default=float(os.environ.get("LOAD_MAX_SECONDS", "900")),
                        help="hard stop of the whole run, even without -t")
    parser.add_argument("--summary-json", default=os.environ.get("LOAD_SUMMARY_JSON", ""),
                        help="write exact percentiles and the speculation counts here")


def _record(name: str, ms: float | None, ok: bool = True) -> None:
    if ms is not None:
        _raw.setdefault(name, []).append(ms)
    if not ok:
        _fail[name] = _fail.get(name, 0) + 1


def _fire(env, kind: str, name: str, ms: float, length: int = 0, exc: Exception | None = None) -> None:
    env.events.request.fire(request_type=kind, name=name, response_time=ms, response_length=length,
                            exception=exc, context={})
    _record(f"{kind} {name}", ms if exc is None else None, exc is None)


def _speculation(url: str) -> dict[str, float] | None:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    out = {}
    for outcome in ("started", "committed", "discarded"):
        m = re.search(rf'^controller_speculation_total{{outcome="{outcome}"}} (\S+)$', text, re.M)
        out[outcome] = float(m.group(1)) if m else 0.0
    return out


@events.test_start.add_listener
def _start(environment, **_kw) -> None:
    o = environment.parsed_options
    o.controller_metrics_url = o.controller_metrics_url or _default_metrics_url(o.realtime_url)
    require_local(o.realtime_url, o.controller_metrics_url, "grpc://" + o.triton_url, allow_remote=o.allow_remote)
    _raw.clear()
    _fail.clear()
    if not _AUDIOS and any(c.__name__ == "RealtimeCaller" for c in environment.user_classes):
        _AUDIOS.extend(utterance(t, i)[0] for i, t in enumerate(UTTERANCES))  # before any user starts
    _state.update(t0=time.time(), loadavg_start=os.getloadavg(),
                  speculation_start=_speculation(o.controller_metrics_url))

    def hard_stop() -> None:
        gevent.sleep(o.max_seconds)
        if environment.runner is not None:
            print(f"[load] --max-seconds {o.max_seconds:.0f} reached: stopping", file=sys.stderr)
            environment.runner.quit()

    _state["guard"] = gevent.spawn(hard_stop)


@events.test_stop.add_listener
def _stop(environment, **_kw) -> None:
    o = environment.parsed_options
    guard = _state.pop("guard", None)
    if guard is not None:
        guard.kill(block=False)
    before, after = _state.get("speculation_start"), _speculation(o.controller_metrics_url)
    spec = None
    if before is not None and after is not None:
        spec = {k: int(after[k] - before[k]) for k in after}
        spec["commit_rate"] = round(spec["committed"] / spec["started"], 3) if spec["started"] else None
        for outcome in ("started", "committed"):
            environment.events.request.fire(request_type="realtime", name=f"speculation_{outcome}", response_time=0,
                                            response_length=spec[outcome], exception=None, context={})
    if not o.summary_json:
        return
    doc = {
        "name": "load", "git": git_info(), "started_unix": _state.get("t0"),
        "wall_s": round(time.time() - _state.get("t0", time.time()), 1),
        "loadavg_start": _state.get("loadavg_start"), "loadavg_end": os.getloadavg(),
        "config": {"users": o.num_users, "spawn_rate": o.spawn_rate, "run_time": o.run_time,
                   "user_classes": [c.__name__ for c in environment.user_classes],
                   "realtime_url": o.realtime_url, "triton_url": o.triton_url, "frame_ms": o.frame_ms,
                   "silence_duration_ms": o.silence_duration_ms, "max_output_tokens": o.max_output_tokens,
                   "tts_max_new_tokens": o.tts_max_new_tokens,
                   "chat_max_new_tokens": o.chat_max_new_tokens, "max_iterations": o.max_iterations},
        "metrics_ms": {k: percentiles(v, digits=1) for k, v in sorted(_raw.items())},
        "failures": dict(sorted(_fail.items())),
        "speculation": spec,
    }
    path = Path(o.summary_json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"[load] wrote {path}", file=sys.stderr)


class _Bounded(User):
    abstract = True

    def on_start(self) -> None:
        self.iterations = 0

    def _tick(self) -> None:
        self.iterations += 1
        if self.iterations > self.environment.parsed_options.max_iterations:
            raise StopUser()


class RealtimeCaller(_Bounded):
    """A caller on the controller's Realtime WebSocket, one spoken turn per task."""

    weight = 3
    wait_time = between(0.5, 1.5)
    def on_start(self) -> None:
        super().on_start()
        o = self.environment.parsed_options
        self.n = next(_counter)
        self.caller = Caller(o.realtime_url, frame_ms=o.frame_ms, silence_duration_ms=o.silence_duration_ms,
                             reply_timeout_s=o.reply_timeout_s, index=self.n,
                             max_output_tokens=o.max_output_tokens or None)
        t0 = time.perf_counter()
        try:
            self.caller.connect()
        except Exception as exc:
            _fire(self.environment, "realtime", "connect", 1000 * (time.perf_counter() - t0), exc=exc)
            raise StopUser() from exc
        _fire(self.environment, "realtime", "connect", 1000 * (time.perf_counter() - t0))

    def on_stop(self) -> None:
        caller = getattr(self, "caller", None)
        if caller is not None:
            caller.close()

    @task
    def turn(self) -> None:
        self._tick()
        audio = _AUDIOS[(self.n + self.iterations) % len(_AUDIOS)]
        r = self.caller.turn(audio)
        env = self.environment
        if not r.ok:
            exc = RuntimeError(r.error or f"reply status {r.status}, {r.reply_deltas} audio deltas")
            _fire(env, "realtime", "voice_to_voice", 1000 * (r.voice_to_voice_s or 0.0), exc=exc)
            return
        length = int(r.reply_audio_s * 48000)
        _fire(env, "realtime", "voice_to_voice", 1000 * r.voice_to_voice_s, length)
        if r.first_audio_s is not None:
            _fire(env, "realtime", "first_audio", 1000 * r.first_audio_s, length)
        if r.end_of_turn_lag_s is not None:
            _fire(env, "realtime", "end_of_turn_lag", 1000 * max(0.0, r.end_of_turn_lag_s))
        _fire(env, "realtime", "playback_underrun", 1000 * (r.underrun_s or 0.0), r.underruns or 0)


class _Triton(_Bounded):
    abstract = True
    wait_time = between(0.5, 1.5)

    def on_start(self) -> None:
        import tritonclient.grpc as grpcclient

        super().on_start()
        self.n = next(_counter)
        self.client = grpcclient.InferenceServerClient(self.environment.parsed_options.triton_url)

    def on_stop(self) -> None:
        self.client.close()


class TtsStreamer(_Triton):
    """Streaming ``tts`` requests through ``client.tts``."""

    weight = 1

    @task
    def synthesize(self) -> None:
        from client.tts import stream_tts, tts_inputs

        self._tick()
        o = self.environment.parsed_options
        text = TTS_TEXTS[(self.n + self.iterations) % len(TTS_TEXTS)]
        inputs = tts_inputs(text, speaker="Tingting", seed=self.iterations, max_new_tokens=o.tts_max_new_tokens)
        t0, first, nbytes = time.perf_counter(), None, 0
        try:
            for audio, _rate, t_s in stream_tts(self.client, inputs, timeout_s=120):
                if first is None and audio.size:
                    first = t_s
                nbytes += audio.size * 4
        except Exception as exc:
            _fire(self.environment, "tts", "total", 1000 * (time.perf_counter() - t0), exc=exc)
            return
        if first is not None:
            _fire(self.environment, "tts", "first_chunk", 1000 * first, nbytes)
        _fire(self.environment, "tts", "total", 1000 * (time.perf_counter() - t0), nbytes)


class ChatStreamer(_Triton):
    """Streaming ``chat_llm`` requests through ``client.chat``."""

    weight = 1

    @task
    def chat(self) -> None:
        from client.chat import build_inputs, stream_generate

        self._tick()
        o = self.environment.parsed_options
        prompt = CHAT_PROMPTS[(self.n + self.iterations) % len(CHAT_PROMPTS)]
        inputs = build_inputs(messages=[{"role": "user", "content": prompt}], max_new_tokens=o.chat_max_new_tokens,
                              seed=self.iterations)
        t0, first, tokens = time.perf_counter(), None, 0
        try:
            for chunk in stream_generate(self.client, "chat_llm", inputs, timeout_s=120):
                if first is None and chunk.token_ids:
                    first = chunk.t_s
                tokens = chunk.completion_tokens or tokens + len(chunk.token_ids)
        except Exception as exc:
            _fire(self.environment, "chat_llm", "total", 1000 * (time.perf_counter() - t0), exc=exc)
            return
        if first is not None:
            _fire(self.environment, "chat_llm", "first_token", 1000 * first, tokens)
        _fire(self.environment, "chat_llm", "total", 1000 * (time.perf_counter() - t0), tokens)
