"""``make bench``: the component benchmarks and the side-by-side comparisons, one command.

    python -m benchmarks.suite [--full] [--only components,pipeline,speculation,prefix_reuse,concurrency]
                               [--checkpoints DIR] [--out benchmarks/results]

Components (the earlier benchmarks, each as its own process): ``tokenizer_bench``, ``segment_sweep``,
``llm_bench`` and ``tts_bench``. By default they run at small sizes and write into ``<out>/quick/``, so
the full-size results in ``<out>/`` (and the README tables quoting them) stay as they are; ``--full``
runs them with their own defaults (minutes to tens of minutes each) into ``<out>/``.

Comparisons, each measured in one run on one machine and one set of weights, into ``<out>/<name>.json``
and ``<out>/<name>.png``:

* ``pipeline_bench``: streaming vs sequential pipeline through Triton (``benchmarks.pipeline_bench``);
* ``speculation``: speculation on vs off, voice-to-voice latency through the real controller: the
  conversation benchmark (``benchmarks.conversation_bench``, two controllers on one Triton, rounds
  alternating), plotted here;
* ``prefix_reuse``: time to first token as a chat grows, prefix reuse on vs off (``benchmarks.llm_bench``'s
  conversation part, tiny and ~110M-parameter models), plotted here;
* ``concurrency_bench``: 1..32 Realtime sessions at real-time pace (``benchmarks.concurrency_bench``).

The pipeline and speculation comparisons share one tritonserver (``benchmarks.stack.BenchStack``: ``cpu``
preset, tiny checkpoints, ``audio_only`` TTS LM) started here; the concurrency sweep starts its own (the
same configuration), so that it can restart it when a model process crashes under load. ``<out>/suite.json`` records every step's command,
exit code, wall time and ``os.getloadavg()`` before and after (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import RESULTS_DIR, ROOT, machine_info, write_result

STEPS = ("components", "pipeline", "speculation", "prefix_reuse", "concurrency")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# -- plots of reused benchmarks -------------------------------------------------------------------------
def plot_speculation(doc: dict, path: Path) -> Path:
    """Voice-to-voice distributions with speculation on and off (empirical CDFs, and by turn kind)."""
    import numpy as np

    plt = _plt()
    r = doc["results"]
    silence = doc["config"].get("silence_duration_ms", 0) / 1000
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for mode, color in (("on", "tab:green"), ("off", "tab:red")):
        recs = r[f"speculation_{mode}"]["records"]
        v = np.sort([x["voice_to_voice_s"] for x in recs if x["voice_to_voice_s"] is not None])
        if v.size:
            a1.step(v, np.arange(1, v.size + 1) / v.size, where="post", color=color,
                    label=f"speculation {mode}: p50 {np.percentile(v, 50):.2f} s, p90 {np.percentile(v, 90):.2f} s")
        for j, kind in enumerate(("plain", "paused")):
            k = [x["voice_to_voice_s"] for x in recs if x["kind"] == kind and x["voice_to_voice_s"] is not None]
            if k:
                pos = j * 3 + (0 if mode == "on" else 1)
                bp = a2.boxplot([k], positions=[pos], widths=0.8, patch_artist=True, showfliers=True)
                for patch in bp["boxes"]:
                    patch.set_facecolor(color)
                    patch.set_alpha(0.6)
    a1.axvline(silence, color="k", lw=0.8, ls="--", label=f"end-of-turn silence {silence:.1f} s")
    spec = r["speculation_on"]["controller"].get("speculation", {}) if isinstance(
        r["speculation_on"]["controller"], dict) else {}
    a1.set(xlabel="voice-to-voice latency (s): end of speech -> first reply audio", ylabel="share of turns",
           title=f"speculation on vs off ({doc['config'].get('callers')} callers at real-time pace); "
                 f"commit rate {spec.get('commit_rate')}")
    a1.legend(fontsize=8)
    a1.grid(alpha=0.3)
    a2.set_xticks([0.5, 3.5], ["plain turns", "turns with a mid-sentence pause"])
    a2.set(ylabel="voice-to-voice (s)", title="by turn kind (green: on, red: off)")
    a2.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_prefix_reuse(doc: dict, path: Path) -> Path:
    """TTFT per turn against the prompt length, prefix reuse on and off, per model preset."""
    plt = _plt()
    presets = doc["results"]["presets"]
    fig, axes = plt.subplots(1, len(presets), figsize=(6 * len(presets), 4.5), squeeze=False)
    for ax, (name, r) in zip(axes[0], presets.items(), strict=True):
        conv = r["conversation"]
        n = conv["prompt_tokens"]
        for mode, style, color in (("reuse_on", "o-", "tab:green"), ("reuse_off", "s--", "tab:red")):
            ax.plot(n, conv[mode]["ttft_ms"], style, color=color,
                    label=f"prefix reuse {mode[6:]} (turn {len(n)}/turn 1: {conv[mode]['ratio_last_first']}x)")
        ax2 = ax.twinx()
        ax2.bar(n, conv["reuse_on"]["prefilled_tokens"], width=max(4, (n[-1] - n[0]) / len(n) / 3), alpha=0.2,
                color="tab:blue", label="tokens prefilled with reuse on")
        ax2.set_ylabel("tokens prefilled (reuse on)")
        m = r["model"]
        ax.set(xlabel="prompt tokens (turns 1..n of one chat)", ylabel="time to first token (ms, median)",
               title=f"{name}: {m['parameters'] / 1e6:.0f} M parameters, {m['dtype']}, {m['torch_threads']} threads; "
                     f"last turn {conv['ttft_speedup_last_turn']}x faster")
        ax.grid(alpha=0.3)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- steps ---------------------------------------------------------------------------------------------
def run_step(name: str, argv: list[str], timeout_s: float) -> dict:
    cmd = [sys.executable, "-m", *argv]
    log(f"\n== {name}: {' '.join(argv)}")
    load0, t0 = os.getloadavg(), time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    try:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=timeout_s).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    out = {"name": name, "command": " ".join(["python", "-m", *argv]), "exit_code": rc,
           "wall_s": round(time.perf_counter() - t0, 1), "loadavg_before": [round(x, 2) for x in load0],
           "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
    log(f"== {name}: exit {rc} in {out['wall_s']:.0f} s")
    return out


def component_steps(args) -> list[tuple[str, list[str]]]:
    ck = ["--checkpoints", str(args.checkpoints_root)] if args.checkpoints_root else []
    if args.full:
        out = ["--out", str(args.out)]
        return [("tokenizer_bench", ["benchmarks.tokenizer_bench", "--wait-quiet-s", "300", "--retries", "2", *out]),
                ("segment_sweep", ["benchmarks.segment_sweep", "--full", "--wait-quiet-s", "120", "--retries", "2", *out]),
                ("llm_bench", ["benchmarks.llm_bench", *out]),
                ("tts_bench", ["benchmarks.tts_bench", *out])]
    out = ["--out", str(args.out / "quick")]
    return [
        ("tokenizer_bench", ["benchmarks.tokenizer_bench", "--sizes", "tiny", "--threads", "1", "--seconds", "5",
                             "--warmup-s", "1", *ck, *out]),
        ("segment_sweep", ["benchmarks.segment_sweep", "--segments", "1200,2400,4800", "--utterances", "1", *ck, *out]),
        ("llm_bench", ["benchmarks.llm_bench", "--presets", "tiny", "--concurrency", "1,4", "--decode-repeats", "1",
                       "--turns", "8", "--conversation-repeats", "2", "--long-context", "0", "--no-profile",
                       "--wait-quiet-s", "0", "--retries", "0", *out]),
        ("tts_bench", ["benchmarks.tts_bench", "--parts", "triton", "--variants", "audio_only", "--concurrency", "1,4",
                       "--repeats", "1", "--wait-quiet-s", "0", "--retries", "0", *out]),
    ]


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.suite", description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="full-size component runs and more repeats")
    p.add_argument("--only", default=",".join(STEPS), help=f"comma-separated steps of {', '.join(STEPS)}")
    p.add_argument("--checkpoints", type=Path, default=None,
                   help="tiny checkpoints folder for the tritonserver (written when missing; default: temporary)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    p.add_argument("--sessions", default="1,2,4,8,12,16,24,32", help="concurrency levels")
    p.add_argument("--step-timeout-s", type=float, default=3600.0)
    args = p.parse_args(argv)
    args.steps = [s for s in args.only.split(",") if s]
    bad = [s for s in args.steps if s not in STEPS]
    if bad:
        p.error(f"unknown step(s) {bad}")
    args.checkpoints_root = None  # the components write their own (their DIR/<size> layouts differ)
    return args


def main(argv: list[str] | None = None) -> int:
    from benchmarks.stack import BenchStack

    args = parse_args(argv)
    t_start = time.perf_counter()
    steps: list[dict] = []
    if "components" in args.steps:
        for name, step_argv in component_steps(args):
            steps.append(run_step(name, step_argv, args.step_timeout_s))
    needs_triton = {"pipeline", "speculation"} & set(args.steps)
    stack_info = None
    if needs_triton:
        with BenchStack("audio_only", args.checkpoints) as stack:
            stack_info = stack.info
            url, pgid = stack.grpc_url, str(stack.triton.pid)
            shared = ["--triton", url]
            if "pipeline" in args.steps:
                steps.append(run_step("pipeline_bench", [
                    "benchmarks.pipeline_bench", *shared, "--server-pgid", pgid, "--served-variant", "audio_only",
                    "--repeats", "5" if args.full else "3", "--out", str(args.out)], args.step_timeout_s))
            if "speculation" in args.steps:
                steps.append(run_step("speculation", [
                    "benchmarks.conversation_bench", *shared, "--callers", "4", "--turns", "4",
                    "--rounds", "4" if args.full else "2", "--name", "speculation", "--out", str(args.out)],
                    args.step_timeout_s))
                js = args.out / "speculation.json"
                if steps[-1]["exit_code"] == 0 and js.exists():
                    steps[-1]["plot"] = plot_speculation(json.loads(js.read_text()), args.out / "speculation.png").name
    if "concurrency" in args.steps:  # its own server: it restarts it if a model process crashes
        ck = ["--checkpoints", str(args.checkpoints)] if args.checkpoints else []
        steps.append(run_step("concurrency_bench", [
            "benchmarks.concurrency_bench", *ck, "--sessions", args.sessions, "--out", str(args.out)],
            args.step_timeout_s))
    if "prefix_reuse" in args.steps:
        steps.append(run_step("prefix_reuse", [
            "benchmarks.llm_bench", "--presets", "tiny,100m", "--concurrency", "1", "--decode-repeats", "1",
            "--long-context", "0", "--no-profile", "--no-plot", "--conversation-repeats", "5" if args.full else "3",
            "--name", "prefix_reuse", "--out", str(args.out)], args.step_timeout_s))
        js = args.out / "prefix_reuse.json"
        if steps[-1]["exit_code"] == 0 and js.exists():
            steps[-1]["plot"] = plot_prefix_reuse(json.loads(js.read_text()), args.out / "prefix_reuse.png").name
    ran = {st["name"] for st in steps}
    previous = args.out / "suite.json"
    if previous.exists() and set(args.steps) != set(STEPS):  # a partial rerun keeps the other steps' records
        old = json.loads(previous.read_text())["results"]["steps"]
        steps = [dict(st, from_earlier_run=True) for st in old if st["name"] not in ran] + steps
    results = {"steps": steps, "stack": stack_info, "total_s": round(time.perf_counter() - t_start, 1),
               "failed": [s["name"] for s in steps if s["exit_code"] != 0]}
    config = {"full": args.full, "steps": args.steps, "out": str(args.out), "sessions": args.sessions}
    path = write_result("suite", config, results, args.out, machine=machine_info(include_torch=False))
    log(f"\nsuite: {len(steps)} steps in {results['total_s'] / 60:.1f} min; failed: {results['failed'] or 'none'}; "
        f"wrote {path}")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
