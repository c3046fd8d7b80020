"""The serving stack for the end-to-end benchmarks: tiny checkpoints, a rendered ``cpu`` model repository,
a real ``tritonserver`` and, when asked, the real-time controller.

    with BenchStack(variant="audio_only") as stack:       # tritonserver on free ports
        stack.triton.grpc_url
        with stack.controller(speculation=True, seed=0) as ctl:   # controller.serve.ControllerThread
            ctl.port

Nothing here is new machinery: checkpoints come from ``export.tiny.write_tiny`` (or a folder given with
``checkpoints=``), the repository from ``export.render.build_repository`` with ``export.deploy_config``,
the server from ``export.triton_launcher.TritonServer`` and the controller from
``controller.serve.ControllerThread`` (imported only when asked for: a stack for the Triton-only
benchmarks needs no controller extra).

Checkpoint variants (of the tiny preset):

* ``stock``: as ``export.tiny`` writes them. Its random TTS LM emits mostly text ids (only 5120 of its
  74752 ids are audio ids), which the tts pipeline drops, so a request needs ~12x more LM tokens than a
  trained model for the same speech, and the first audio of a short clause often only comes with its end.
* ``audio_only``: the TTS LM's ``lm_head`` rows of every non-audio id zeroed
  (``benchmarks.tts_bench.write_audio_only_tts``), so it emits one speech token per LM token as a trained
  model does, and never ``<|EOT|>``: a request speaks exactly ``max_new_tokens`` tokens (41.67 per
  second of speech). The streaming behaviour of the pipeline is then that of a trained model.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("stock", "audio_only")
TTS_DIR = "Step-Audio-TTS-3B"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def bench_overrides(variant: str) -> list[str]:
    """The benchmarks' deployment on top of the ``cpu`` preset (``--set`` overrides come after and win).

    * two ``token2wav`` instances: with the TTS LM's head restricted, one single-threaded instance is what
      limits 16 concurrent tts streams (~6.5 s of speech per second; two: ~8.2);
    * ``audio_only``: ``tts_lm.output_vocab=audio`` (5121 of 74752 head rows). That variant's other rows are
      zero, so the restricted head draws the very same ids, at ~2x fewer CPU-s per token. Not for ``stock``,
      whose random TTS LM is there to show the whole vocabulary's behaviour.
    """
    return ["token2wav.instances=2", *(["tts_lm.output_vocab=audio"] if variant == "audio_only" else [])]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def is_local(host: str) -> bool:
    """True for loopback addresses only (127.0.0.0/8, localhost, ::1)."""
    host = host.strip().lower()
    return host in LOCAL_HOSTS or host.startswith("127.")


def host_of(url: str) -> str:
    """The host of ``ws://h:p/path``, ``http://h:p``, ``h:p`` or ``[::1]:p``."""
    rest = url.split("://", 1)[-1].split("/", 1)[0]
    if rest.startswith("["):
        return rest[: rest.index("]") + 1]
    return rest.rsplit(":", 1)[0] if ":" in rest else rest


def require_local(*urls: str, allow_remote: bool = False) -> None:
    """Refuses traffic to anything but this machine unless ``allow_remote``."""
    bad = [u for u in urls if u and not is_local(host_of(u))]
    if bad and not allow_remote:
        raise SystemExit(f"refusing to send load to non-local address(es) {bad}: only 127.0.0.0/8, localhost "
                         "and ::1 are targets by default (pass the explicit allow-remote flag to override)")


def tiny_checkpoints(dest: Path) -> Path:
    """``dest`` holding every tiny component (written when missing, as ``make serve`` does)."""
    from export.__main__ import ensure_tiny_checkpoints

    ensure_tiny_checkpoints(dest)
    return dest


def variant_checkpoints(tiny_root: Path, work: Path, variant: str) -> tuple[Path, dict]:
    """A checkpoint root for ``variant``: the tiny root itself (stock) or a copy of it whose TTS LM emits
    audio ids only (other components symlinked)."""
    if variant == "stock":
        return tiny_root, {}
    if variant != "audio_only":
        raise ValueError(f"unknown variant {variant!r} (known: {', '.join(VARIANTS)})")
    from benchmarks.tts_bench import write_audio_only_tts

    root = work / "audio_only"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    info: dict = {}
    for entry in tiny_root.iterdir():
        if entry.name == TTS_DIR:
            info = write_audio_only_tts(entry, root / entry.name)
        else:
            (root / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    return root, info


class BenchStack:
    """Tiny checkpoints -> rendered ``cpu`` repository -> tritonserver (free ports); a context manager.

    ``triton_url``: use that running server instead (nothing is started; the variant is then unknown).
    ``checkpoints``: a folder holding (or to receive) the tiny components; default: a temporary folder.
    """

    def __init__(self, variant: str = "audio_only", checkpoints: str | Path | None = None,
                 overrides: list[str] | tuple[str, ...] = (), triton_url: str | None = None,
                 start_timeout_s: float = 900.0):
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r} (known: {', '.join(VARIANTS)})")
        self.variant, self.start_timeout_s = variant, start_timeout_s
        self.overrides = [*bench_overrides(variant), *overrides]
        self.checkpoints = Path(checkpoints) if checkpoints else None
        self.external_url = triton_url
        self.triton = None
        self.info: dict = {}
        self._stack = contextlib.ExitStack()

    @property
    def grpc_url(self) -> str:
        return self.external_url or self.triton.grpc_url

    def __enter__(self) -> BenchStack:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _start(self) -> None:
        if self.external_url:
            require_local(self.external_url, allow_remote=os.environ.get("BENCH_ALLOW_REMOTE") == "1")
            self.info = {"triton": self.external_url, "started_here": False}
            return
        from export.deploy_config import load_config
        from export.render import build_repository
        from export.triton_launcher import TritonServer

        work = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-stack-")))
        tiny_root = tiny_checkpoints(self.checkpoints or work / "tiny")
        root, change = variant_checkpoints(tiny_root, work, self.variant)
        cfg = load_config("cpu", root, self.overrides)
        report = build_repository(cfg, work / "model_repository")
        log(f"[stack] {self.variant} tiny checkpoints: starting tritonserver with {', '.join(report.models)} ...")
        t0 = time.perf_counter()
        self.triton = self._stack.enter_context(TritonServer(work / "model_repository").start(
            timeout_s=self.start_timeout_s))
        start_s = time.perf_counter() - t0
        log(f"[stack] tritonserver ready at {self.triton.grpc_url} in {start_s:.0f} s")
        sections = ("audio_tokenizer_stream", "chat_llm", "tts", "tts_lm", "token2wav")
        self.info = {"started_here": True, "variant": self.variant, "preset": "cpu", "overrides": self.overrides,
                     "models": report.models, "server_start_s": round(start_s, 1),
                     "checkpoint_change": change or None,
                     "deployment": {s: dict(vars(getattr(cfg, s))) for s in sections if hasattr(cfg, s)}}

    @contextlib.contextmanager
    def controller(self, **cfg_kw):
        """A controller (``ControllerThread``: its own event loop in a thread of this process) on a free
        port, talking to this stack's Triton; ``cfg_kw`` are ``ControllerConfig`` fields."""
        from controller.config import ControllerConfig
        from controller.serve import ControllerThread

        cfg_kw.setdefault("max_sessions", 256)
        cfg = ControllerConfig(triton_url=self.grpc_url, host="127.0.0.1", port=0, **cfg_kw)
        with ControllerThread(cfg) as ctl:
            yield ctl


def scrape_text(url: str, timeout_s: float = 10.0) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        return r.read().decode()


def main(argv: list[str] | None = None) -> int:
    """Starts a stack and holds it until Ctrl-C (for ``make load`` against the benchmark's variant)."""
    import argparse
    import signal
    import threading

    p = argparse.ArgumentParser(prog="python -m benchmarks.stack", description=main.__doc__)
    p.add_argument("--variant", choices=VARIANTS, default="audio_only")
    p.add_argument("--checkpoints", default=None)
    p.add_argument("--set", action="append", default=[], help="deployment override section.field=value")
    p.add_argument("--no-controller", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-reply-tokens", type=int, default=24)
    p.add_argument("--tts-max-new-tokens", type=int, default=50)
    args = p.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with BenchStack(args.variant, args.checkpoints, args.set) as stack:
        with contextlib.ExitStack() as es:
            if not args.no_controller:
                ctl = es.enter_context(stack.controller(seed=args.seed, max_reply_tokens=args.max_reply_tokens,
                                                        tts_max_new_tokens=args.tts_max_new_tokens))
                print(f"REALTIME_URL=ws://127.0.0.1:{ctl.port}/v1/realtime", flush=True)
            print(f"TRITON_GRPC_URL={stack.grpc_url}", flush=True)
            try:
                while not stop.wait(1.0):
                    pass
            except KeyboardInterrupt:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
