"""Concurrency sweep: N Realtime sessions at real-time pace against the controller and Triton (tiny preset).

    python -m benchmarks.concurrency_bench [--sessions 1,2,4,8,12,16,24,32] [--turns-min 2] ...

One tritonserver (``cpu`` preset, tiny checkpoints, ``audio_only`` variant by default; see
``benchmarks.stack``) and one controller (``controller.serve.ControllerThread`` in this process, speculation
on, fixed seed) serve every level. For each N the callers run in a separate process
(``python -m benchmarks.realtime_caller``: N WebSocket sessions, each speaking espeak-ng utterances in
100 ms PCM16 24 kHz frames on a real-time schedule, staggered over ``--spread-s``, and staying on the line
with silence until each reply is done). See ``benchmarks.realtime_caller`` for the per-turn measures. Without
espeak-ng and sox the callers speak bundled espeak-ng recordings instead; each level's ``workload`` says which.

**Held at real time.** N sessions are held when, over all their turns:

1. every turn got a reply with audio (no error, no timeout);
2. p90 voice-to-voice <= ``--max-v2v-p90-s`` (default 2.0 s, which includes the 0.7 s of end-of-turn
   silence the VAD waits for);
3. the replies play without starving: p90 of a reply's total playback underrun <= ``--max-underrun-p90-s``
   (default 0.2 s; a player starting at the first delta and playing back to back);
4. the controller keeps up with the input: p90 of ``end_of_turn_lag`` (``speech_stopped`` received minus
   end of speech minus the VAD silence) <= ``--max-eot-lag-p90-s`` (default 0.3 s).

The callers' own timing is checked too (``send_late_max_s``: how late a frame left its slot); a level
where the callers themselves fell behind is flagged (``callers_kept_pace`` false). ``max_sessions_held``
is the largest N held with every smaller measured N held too. Where the time goes: CPU seconds of each
Triton model's stub process, of this process (the controller) and of the callers' process, per level.

**Deployment.** The benchmarks' stack (``benchmarks.stack.bench_overrides``) plus ``SWEEP_OVERRIDES``, then
``--set``: token2wav's first chunk is 50 tokens (1.2 s of speech, a clause of this workload) instead of 20, so
a clause costs one flow run instead of two. On 2 cores that is what 8 and more sessions need (8 sessions:
underrun p90 0.0 vs 0.01-0.48 s over three runs with 20), and speculation hides the later first audio at
light load (1-4 sessions: voice-to-voice p50 0.74-0.78 s with either).

Writes ``<out>/concurrency_bench.json`` and ``<out>/concurrency_bench.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS_DIR, csv_of, machine_info, model_cpu_s, percentiles, write_result
from controller.clauses import ClausePolicy

NAME = "concurrency_bench"
SWEEP_OVERRIDES = ("token2wav.first_chunk_tokens=50",)  # see "Deployment" above
GOAL_SESSIONS = 16


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- CPU per Triton model ----------------------------------------------------------------------------
def _metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def wait_idle(port: int, timeout_s: float = 120.0) -> float:
    """Waits until the controller has no session and no Triton request open; returns the seconds waited."""
    from benchmarks.stack import scrape_text

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        text = scrape_text(f"http://127.0.0.1:{port}/metrics")
        if _metric(text, "controller_sessions_active") == 0 and _metric(text, "controller_triton_streams_open") == 0:
            break
        time.sleep(0.5)
    return round(time.perf_counter() - t0, 1)


def probe_tts(url: str, timeout_s: float = 60.0) -> str | None:
    """One short ``tts`` request straight to Triton: None if it returns audio, else what went wrong. The
    replies of a level depend on the whole tts pipeline; a model process that died mid-level shows here."""
    import tritonclient.grpc as grpcclient

    from client.tts import stream_tts, tts_inputs

    client = grpcclient.InferenceServerClient(url)
    try:
        n = sum(a.size for a, _r, _t in stream_tts(client, tts_inputs("probe", seed=0, max_new_tokens=30),
                                                   timeout_s=timeout_s))
        return None if n else "the tts probe returned no audio"
    except Exception as exc:
        return f"tts probe: {exc}"
    finally:
        client.close()


# -- one level ----------------------------------------------------------------------------------------
def run_level(n: int, turns: int, port: int, pgid: int | None, args) -> dict:
    from benchmarks.stack import scrape_text
    from benchmarks.tts_bench import Load

    waited = wait_idle(port)
    before = scrape_text(f"http://127.0.0.1:{port}/metrics")
    cpu0 = model_cpu_s(pgid)
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out_path = f.name
    cmd = [sys.executable, "-m", "benchmarks.realtime_caller", "--url", f"ws://127.0.0.1:{port}/v1/realtime",
           "--sessions", str(n), "--turns", str(turns), "--frame-ms", str(args.frame_ms),
           "--silence-duration-ms", str(args.silence_duration_ms), "--reply-timeout-s", str(args.reply_timeout_s),
           "--spread-s", str(args.spread_s), "--max-wall-s", str(args.max_level_s), "--seed", str(args.seed),
           "--out", out_path]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                        os.environ.get("PYTHONPATH", "")])}
    import resource

    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        with Load(pgid) as ld:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                  timeout=args.max_level_s + args.reply_timeout_s + 120)
        if proc.returncode != 0:
            raise RuntimeError(f"callers failed ({proc.returncode}): {proc.stderr[-2000:]}")
        doc = json.loads(Path(out_path).read_text())
    finally:
        Path(out_path).unlink(missing_ok=True)
    after = scrape_text(f"http://127.0.0.1:{port}/metrics")
    cpu1 = model_cpu_s(pgid)
    spec = {k: int(_metric(after, "controller_speculation_total", f'{{outcome="{k}"}}')
                   - _metric(before, "controller_speculation_total", f'{{outcome="{k}"}}'))
            for k in ("started", "committed", "discarded")}
    load = ld.result()
    cpu = {k: round(cpu1.get(k, 0.0) - cpu0.get(k, 0.0), 2) for k in sorted(set(cpu0) | set(cpu1))}
    cpu = {k: v for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]) if v > 0}
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    callers = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)
    cpu["controller"] = round(load["own_cpu_s"] - callers, 2)  # this process, less the callers' process
    cpu["callers (load generator)"] = round(callers, 2)
    return {"sessions": n, "turns_per_session": turns, "waited_for_idle_s": waited, "wall_s": doc["wall_s"],
            "speculation": spec, "cpu_s": cpu, "load": load, "session_errors": doc["session_errors"],
            "workload": doc.get("workload"), "results": doc["results"]}


def summarize_level(lv: dict, args) -> dict:
    rs = lv["results"]
    ok = [r for r in rs if r["ok"]]

    def p(key: str) -> dict:  # over every turn that has the value (a failed turn may still have had audio)
        return percentiles([r[key] for r in rs if r[key] is not None], 1, 3)

    s = {
        "turns": len(rs), "turns_ok": len(ok), "session_errors": len(lv["session_errors"]),
        "turns_without_audio": sum(r["voice_to_voice_s"] is None for r in rs),
        "errors": sorted({(r["error"] or "")[:120] for r in rs if r["error"]})[:5],
        "voice_to_voice_s": p("voice_to_voice_s"), "first_audio_s": p("first_audio_s"),
        "end_of_turn_lag_s": p("end_of_turn_lag_s"), "underrun_s": p("underrun_s"),
        "underruns_per_reply": p("underruns"), "reply_audio_s": p("reply_audio_s"),
        "response_total_s": p("response_total_s"), "send_late_max_s": p("send_late_max_s"),
    }
    expected = lv["sessions"] * lv["turns_per_session"]
    checks = {
        "all_turns_answered": len(ok) == expected and not lv["session_errors"],
        "v2v_p90": s["voice_to_voice_s"].get("p90", math.inf) <= args.max_v2v_p90_s,
        "underrun_p90": s["underrun_s"].get("p90", math.inf) <= args.max_underrun_p90_s,
        "end_of_turn_lag_p90": s["end_of_turn_lag_s"].get("p90", math.inf) <= args.max_eot_lag_p90_s,
    }
    # a Triton model's process died (its requests fail with "Stub process ... is not healthy"): the level
    # measured a broken server from that moment on
    crashed = sorted({m for r in rs for m in re.findall(r"Stub process '(\w+)' is not healthy", r["error"] or "")})
    if not crashed and "not healthy" in (lv.get("probe_after") or ""):
        crashed = [lv["probe_after"]]
    s["server_crashed"] = ", ".join(crashed) or None
    checks["server_alive"] = not crashed
    s["checks"] = checks
    s["held"] = all(checks.values())
    s["callers_kept_pace"] = s["send_late_max_s"].get("p90", math.inf) <= 0.1
    # audio the server had to produce per second of wall time, against what it produced
    s["reply_audio_per_wall_s"] = round(sum(r["reply_audio_s"] for r in rs) / lv["wall_s"], 3) if lv["wall_s"] else None
    return s


# -- plot ---------------------------------------------------------------------------------------------
def plot(levels: list[dict], args, held: int, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no plot")
        return None
    ns = [lv["sessions"] for lv in levels]
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(17, 4.8))

    def series(key: str, q: str) -> list[float]:
        return [lv["summary"][key].get(q, math.nan) for lv in levels]

    for q, style in (("p50", "o-"), ("p90", "s-"), ("p99", "^--")):
        a1.plot(ns, series("voice_to_voice_s", q), style, label=f"voice-to-voice {q}")
    a1.plot(ns, series("first_audio_s", "p90"), "x:", label="first audio after speech_stopped p90")
    a1.axhline(args.max_v2v_p90_s, color="k", lw=0.8, ls="--", label=f"held: p90 <= {args.max_v2v_p90_s} s")
    if held:
        a1.axvline(held, color="tab:green", lw=1, label=f"largest N held: {held}")
    a1.set(xscale="log", xlabel="concurrent sessions", ylabel="seconds",
           title=f"latency (real-time callers, tiny preset); held: N <= {held}")
    a2.plot(ns, series("underrun_s", "p90"), "o-", label="playback underrun per reply p90 (s)")
    a2.plot(ns, series("end_of_turn_lag_s", "p90"), "s-", label="end-of-turn lag p90 (s)")
    a2.plot(ns, [1 - lv["summary"]["turns_ok"] / max(1, lv["summary"]["turns"]) for lv in levels], "^--",
            label="share of turns without a reply")
    a2.axhline(args.max_underrun_p90_s, color="k", lw=0.8, ls="--")
    a2.set(xscale="log", xlabel="concurrent sessions", title="keeping up: underruns, end-of-turn lag, failures")
    models = sorted({k for lv in levels for k in lv["cpu_s"]}, key=lambda k: -sum(lv["cpu_s"].get(k, 0) for lv in levels))
    bottom = [0.0] * len(levels)
    for k in models[:7]:
        vals = [lv["cpu_s"].get(k, 0.0) / lv["wall_s"] for lv in levels]
        a3.bar([str(n) for n in ns], vals, bottom=bottom, label=k)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    a3.axhline(os.cpu_count() or 2, color="k", lw=0.8, ls="--", label="all cores")
    a3.set(xlabel="concurrent sessions", ylabel="CPU cores busy (CPU s / wall s)", title="where the CPU goes")
    crashed = [lv["sessions"] for lv in levels if lv["summary"].get("server_crashed")]
    for ax in (a1, a2):
        for k, n in enumerate(crashed):
            ax.axvline(n, color="tab:red", lw=1, ls=":", label="a Triton model process crashed" if k == 0 else None)
    for ax in (a1, a2, a3):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    for ax in (a1, a2):
        ax.set_xticks(ns, [str(n) for n in ns])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- main ---------------------------------------------------------------------------------------------
def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.concurrency_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=csv_of(int), default=[1, 2, 4, 8, 12, 16, 24, 32])
    p.add_argument("--turns-min", type=int, default=2, help="turns per session")
    p.add_argument("--turns-total-min", type=int, default=6, help="at least this many turns per level")
    p.add_argument("--frame-ms", type=int, default=100)
    p.add_argument("--silence-duration-ms", type=int, default=700)
    p.add_argument("--spread-s", type=float, default=3.0, help="session starts spread over this")
    p.add_argument("--reply-timeout-s", type=float, default=30.0)
    p.add_argument("--max-level-s", type=float, default=240.0, help="no new turn starts after this")
    p.add_argument("--max-reply-tokens", type=int, default=24, help="chat tokens per reply")
    p.add_argument("--tts-max-new-tokens", type=int, default=50, help="speech tokens per clause (1.2 s)")
    p.add_argument("--tts-later-first-chunk-tokens", type=int, default=ClausePolicy.later_first_chunk_tokens,
                   help="the controller's larger first chunk for a reply's later clauses (0: off)")
    p.add_argument("--tts-later-min-ahead-s", type=float, default=ClausePolicy.later_min_ahead_s,
                   help="queued reply audio needed for that larger first chunk")
    p.add_argument("--tts-ahead", action="store_true",
                   help="start a clause's TTS at the previous clause's first audio (default: after its last)")
    p.add_argument("--pause-ms", type=int, default=200, help="silence that starts a speculative reply")
    p.add_argument("--no-speculation", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-v2v-p90-s", type=float, default=2.0)
    p.add_argument("--max-underrun-p90-s", type=float, default=0.2)
    p.add_argument("--max-eot-lag-p90-s", type=float, default=0.3)
    p.add_argument("--variant", default="audio_only", help="stock | audio_only")
    p.add_argument("--set", action="append", default=[],
                   help=f"deployment override section.field=value (after {', '.join(SWEEP_OVERRIDES)})")
    p.add_argument("--triton", default=None, help="use this running server (HOST:GRPC_PORT)")
    p.add_argument("--server-pgid", type=int, default=None, help="its process group (CPU per model; optional)")
    p.add_argument("--checkpoints", default=None, help="tiny checkpoints folder (written when missing)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    p.add_argument("--name", default=NAME)
    p.add_argument("--no-plot", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.stack import BenchStack

    args = parse_args(argv)
    t_start = time.perf_counter()
    levels: list[dict] = []
    loadavg_start = os.getloadavg()
    restarts: list[dict] = []
    es = contextlib.ExitStack()

    def open_stack():
        stack = es.enter_context(BenchStack(args.variant, args.checkpoints, [*SWEEP_OVERRIDES, *args.set],
                                            triton_url=args.triton))
        ctl = es.enter_context(stack.controller(
            speculation=not args.no_speculation, seed=args.seed, pause_ms=args.pause_ms,
            max_reply_tokens=args.max_reply_tokens, tts_max_new_tokens=args.tts_max_new_tokens,
            clause_policy=ClausePolicy(later_first_chunk_tokens=args.tts_later_first_chunk_tokens or None,
                                       later_min_ahead_s=args.tts_later_min_ahead_s,
                                       tts_ahead=args.tts_ahead)))
        log("warm-up: one session, one turn ...")
        run_level(1, 1, ctl.port, stack.triton.pid if stack.triton else args.server_pgid, args)
        return stack, ctl

    try:
        stack, ctl = open_stack()
        info = stack.info
        for n in args.sessions:
            pgid = stack.triton.pid if stack.triton else args.server_pgid
            turns = max(args.turns_min, math.ceil(args.turns_total_min / n))
            log(f"{n} session(s) x {turns} turns ...")
            lv = run_level(n, turns, ctl.port, pgid, args)
            lv["probe_after"] = probe_tts(stack.grpc_url)
            lv["summary"] = summarize_level(lv, args)
            levels.append(lv)
            s = lv["summary"]
            log(f"  {s['turns_ok']}/{s['turns']} answered; v2v p50 {s['voice_to_voice_s'].get('p50')} "
                f"p90 {s['voice_to_voice_s'].get('p90')} s; underrun p90 {s['underrun_s'].get('p90')} s; "
                f"end-of-turn lag p90 {s['end_of_turn_lag_s'].get('p90')} s; held {s['held']}; "
                f"loadavg {os.getloadavg()[0]:.1f}, others {100 * lv['load']['other_cpu_share']:.0f}% CPU")
            if s["server_crashed"]:
                log(f"  a Triton model process died during this level: {s['server_crashed']}")
                if stack.triton is None or n == args.sessions[-1]:
                    continue
                log("  restarting tritonserver and the controller for the next level ...")
                es.close()
                es = contextlib.ExitStack()
                stack, ctl = open_stack()
                restarts.append({"after_level": n, "reason": s["server_crashed"]})
    finally:
        es.close()
    held = 0
    for lv in levels:
        if not lv["summary"]["held"]:
            break
        held = lv["sessions"]
    results = {
        "definition_of_held": {"all_turns_answered": True, "max_v2v_p90_s": args.max_v2v_p90_s,
                               "max_underrun_p90_s": args.max_underrun_p90_s,
                               "max_end_of_turn_lag_p90_s": args.max_eot_lag_p90_s},
        "max_sessions_held": held,
        "server_crashes": [lv["sessions"] for lv in levels if lv["summary"]["server_crashed"]],
        "restarts": restarts,
        "held_by_level": {str(lv["sessions"]): lv["summary"]["held"] for lv in levels},
        "goal": {"sessions": GOAL_SESSIONS, "met": held >= GOAL_SESSIONS},
        "levels": levels, "stack": info, "loadavg_start": loadavg_start, "loadavg_end": os.getloadavg(),
        "total_s": round(time.perf_counter() - t_start, 1),
    }
    png = None
    if not args.no_plot:
        args.out.mkdir(parents=True, exist_ok=True)
        png = plot(levels, args, held, args.out / f"{args.name}.png")
    results["plot"] = png.name if png else None
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    path = write_result(args.name, config, results, args.out, machine=machine_info(include_torch=False))
    print(f"{'sessions':>8} {'ok':>7} {'v2v p50':>8} {'v2v p90':>8} {'v2v p99':>8} {'underrun p90':>13} "
          f"{'eot lag p90':>12}  held")
    for lv in levels:
        s = lv["summary"]
        v = s["voice_to_voice_s"]
        print(f"{lv['sessions']:>8} {s['turns_ok']:>3}/{s['turns']:<3} {v.get('p50', math.nan):>8.2f} "
              f"{v.get('p90', math.nan):>8.2f} {v.get('p99', math.nan):>8.2f} "
              f"{s['underrun_s'].get('p90', math.nan):>13.2f} {s['end_of_turn_lag_s'].get('p90', math.nan):>12.3f}"
              f"  {s['held']}")
    print(f"largest number of sessions held at real time: {held} (goal {GOAL_SESSIONS}: "
          f"{'met' if held >= GOAL_SESSIONS else 'NOT met'})")
    print(f"wrote {path}" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
