"""Extracts ``silero_vad.onnx`` from the silero-vad wheel without installing the wheel (it requires torch
and torchaudio; the controller runs the ONNX file with onnxruntime alone), and checks its sha256.

    python tools/fetch_silero_vad.py DEST [--version 6.2.3] [--sha256 HEX]

Used by ``tools/setup_venv.sh`` and ``docker/Dockerfile.controller``; does nothing when DEST already holds
the expected file. The sha256 is the one ``controller.vad`` checks (the project is installed first, in both).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

from controller.vad import SILERO_SHA256 as SHA256

VERSION = "6.2.3"
MEMBER = "silero_vad/data/silero_vad.onnx"


def sha256_of(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python tools/fetch_silero_vad.py")
    p.add_argument("dest")
    p.add_argument("--version", default=os.environ.get("SILERO_VAD_VERSION", VERSION))
    p.add_argument("--sha256", default=SHA256)
    args = p.parse_args(argv)
    if sha256_of(args.dest) == args.sha256:
        return 0
    print(f"[setup] extracting silero_vad.onnx from silero-vad=={args.version} into {args.dest}", flush=True)
    with tempfile.TemporaryDirectory(prefix="silero-vad-") as tmp:
        subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "download", "-q", "--no-deps",
                        f"silero-vad=={args.version}", "-d", tmp], check=True)
        wheel = glob.glob(os.path.join(tmp, "silero_vad-*.whl"))[0]
        data = zipfile.ZipFile(wheel).read(MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != args.sha256:
        print(f"[setup] silero_vad.onnx has sha256 {digest}, expected {args.sha256}", file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(args.dest)), exist_ok=True)
    tmp_path = args.dest + ".tmp"
    with open(tmp_path, "wb") as f:
        f.write(data)
    os.replace(tmp_path, args.dest)
    print(f"[setup] silero_vad.onnx: {len(data)} bytes, sha256 {digest}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
