"""``python -m export``: tiny checkpoints, model-repository rendering, serving and the demo."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from export.deploy_config import ConfigError, load_config
from export.render import RenderError, build_repository
from stepaudio.tokenizer.files import CheckpointError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CHECKPOINTS = PROJECT_ROOT / "checkpoints" / "tiny"
DEFAULT_REPOSITORY = PROJECT_ROOT / "build" / "model_repository"


def _tiny(args: argparse.Namespace) -> int:
    from export.tiny import write_tiny

    written = write_tiny(Path(args.out), components=args.component or None, seed=args.seed, full_size=args.full_size)
    for path in written:
        print(f"wrote {path}")
    return 0


def ensure_tiny_checkpoints(checkpoints: Path) -> None:
    """Generate the embedded default's tiny checkpoints when the default folder lacks them."""
    from export.tiny import COMPONENTS, write_tiny

    missing = [name for name in COMPONENTS if not (checkpoints / name).is_dir()]
    if missing:
        print(f"[export] generating tiny checkpoints into {checkpoints}: {', '.join(missing)}", flush=True)
        write_tiny(checkpoints, components=missing)


def build(checkpoints: Path, out: Path, preset: str, overrides: list[str]):
    from export.deploy_config import TOKENIZER_DIR
    from stepaudio.tokenizer.files import locate_tokenizer_files

    cfg = load_config(preset, checkpoints, overrides)
    if (cfg.checkpoints / TOKENIZER_DIR).is_dir():
        locate_tokenizer_files(cfg.checkpoints / TOKENIZER_DIR)  # fail now, naming the file, not in the server
    report = build_repository(cfg, out)
    print(f"[export] rendered {', '.join(report.models)} into {report.out_dir}", flush=True)
    if report.missing_checkpoints:
        print(f"[export] {checkpoints} has no {', '.join(report.missing_checkpoints)}: "
              "their models are not served", flush=True)
    return report


def _build(args: argparse.Namespace) -> int:
    build(Path(args.checkpoints), Path(args.out), args.preset, args.set)
    return 0


def resolve_checkpoints(value: str | None) -> Path:
    """CHECKPOINTS=DIR serves other checkpoints; the default folder gets tiny ones generated."""
    if value:
        return Path(value).resolve()
    ensure_tiny_checkpoints(DEFAULT_CHECKPOINTS)
    return DEFAULT_CHECKPOINTS


def _serve(args: argparse.Namespace) -> int:
    from export.triton_launcher import TritonServer

    checkpoints = resolve_checkpoints(args.checkpoints or os.environ.get("CHECKPOINTS"))
    build(checkpoints, Path(args.out), args.preset, args.set)
    server = TritonServer(
        Path(args.out),
        http_port=int(os.environ.get("TRITON_HTTP_PORT", 8000)),
        grpc_port=int(os.environ.get("TRITON_GRPC_PORT", 8001)),
        metrics_port=int(os.environ.get("TRITON_METRICS_PORT", 8002)),
        bind_address=os.environ.get("TRITON_BIND_ADDRESS", "127.0.0.1"),
        foreground=True,
    )
    # Loading every model takes a minute on a quiet laptop and several on a busy one: wait long, not forever.
    start_timeout_s = float(os.environ.get("TRITON_START_TIMEOUT_S", 600))
    print(f"[serve] starting tritonserver (Ctrl-C stops it; ready within {start_timeout_s:.0f} s)", flush=True)
    server.start(timeout_s=start_timeout_s)
    print(f"[serve] ready: HTTP {server.http_url}  gRPC {server.grpc_url}  metrics {server.metrics_url}/metrics",
          flush=True)
    from export.controller_sidecar import start_sidecar

    sidecar = start_sidecar(server.grpc_url, tiny=checkpoints == DEFAULT_CHECKPOINTS)  # CONTROLLER_PORT=off: Triton alone
    try:
        return server.wait()
    finally:
        if sidecar is not None:
            sidecar.stop()


def _fleet(args: argparse.Namespace) -> int:
    from export import fleet

    cfg = fleet.config_from_args(args)
    path = fleet.write(cfg, args.out)
    deploy = cfg.check()
    print(f"[fleet] wrote {path}: {cfg.replicas} pod(s) of Triton ({cfg.preset} preset, {cfg.gpus(deploy)} GPU(s) "
          f"each) + controller; Realtime Service {cfg.name}-realtime:{cfg.service_port}", flush=True)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from export.demo import run_demo

    checkpoints = resolve_checkpoints(args.checkpoints or os.environ.get("CHECKPOINTS"))
    return run_demo(checkpoints, Path(args.out), args.preset, args.set)


def parser() -> argparse.ArgumentParser:
    """The command line (the fleet manifests and the images' commands are checked against it)."""
    parser = argparse.ArgumentParser(prog="python -m export")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tiny", help="write seeded tiny random-weight checkpoints in the official layouts")
    p.add_argument("--out", required=True)
    p.add_argument("--component", action="append", help="only this component (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--full-size", action="store_true", help="real dimensions, random weights (benchmarks)")
    p.set_defaults(func=_tiny)

    for name, func, help_text in (
        ("build", _build, "render a servable model repository"),
        ("serve", _serve, "render and run tritonserver in the foreground"),
        ("demo", _demo, "start Triton and the controller, hold the scripted spoken conversation, stop"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--checkpoints", required=name == "build", default=None)
        p.add_argument("--out", default=str(DEFAULT_REPOSITORY))
        p.add_argument("--preset", default=os.environ.get("PRESET", "cpu"))
        p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                       help="override a deployment-config field (repeatable)")
        p.set_defaults(func=func)

    from export import fleet

    p = sub.add_parser("fleet", help="render Kubernetes manifests: pods of Triton + controller, their Services")
    fleet.add_arguments(p)
    p.set_defaults(func=_fleet)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, RenderError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
