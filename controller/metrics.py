"""The controller's Prometheus metrics (one registry per server, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
_OVERHEAD_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)

# Stages of a turn whose latency is observed (seconds):
#   tokenizer_flush: pause or end of turn -> all of the turn's audio tokens
#   llm_first_text:  reply start -> first chat text;  tts_first_audio: reply start -> first TTS audio
#   voice_to_voice:  end of turn detected -> first audio delta sent
#   asr:             ASR request -> transcript
STAGES = ("tokenizer_flush", "llm_first_text", "tts_first_audio", "voice_to_voice", "asr")


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.sessions_active = Gauge("controller_sessions_active", "Open sessions", registry=r)
        self.sessions = Counter("controller_sessions", "Sessions opened", registry=r)
        self.sessions_rejected = Counter("controller_sessions_rejected", "Connections refused", ["reason"],
                                         registry=r)
        self.turns = Counter("controller_turns", "User turns committed", registry=r)
        self.responses = Counter("controller_responses", "Responses closed", ["status"], registry=r)
        self.latency = Histogram("controller_stage_latency_seconds", "Latency of a turn's stages", ["stage"],
                                 buckets=_LATENCY_BUCKETS_S, registry=r)
        self.turn_overhead = Histogram(
            "controller_turn_overhead_seconds",
            "Controller time spent on one turn's events (decoding, VAD, encoding, sending), not waiting on Triton",
            buckets=_OVERHEAD_BUCKETS_S, registry=r)
        self.speculation = Counter("controller_speculation", "Speculative replies", ["outcome"], registry=r)
        self.errors = Counter("controller_errors", "Error events sent to clients", ["code"], registry=r)
        self.triton_streams = Gauge("controller_triton_streams_open", "Requests this controller has running in Triton",
                                    registry=r)
        for outcome in ("started", "committed", "discarded"):
            self.speculation.labels(outcome)
        for stage in STAGES:
            self.latency.labels(stage)

    def render(self) -> bytes:
        return generate_latest(self.registry)
