#!/usr/bin/env bash
# Creates (if missing) and fills the project's virtual environment. Run by `make setup`, which skips it
# while $VENV/.setup-stamp is newer than pyproject.toml and this script.
#
# torch is installed first and pinned: `pip install torch==2.13.0` takes the CPU wheel kept on the
# machine's disk, while any looser spec (as in the `models` extra) would pull several GB of CUDA
# wheels. With it installed, the extra's range is already satisfied. A GPU node overrides TORCH_SPEC.
set -euo pipefail

VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${EXTRAS:-models,serve,controller,dev}
SILERO_VAD_VERSION=${SILERO_VAD_VERSION:-6.2.3}
SILERO_VAD_SHA256=1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3

say() { printf '[setup] %s\n' "$*"; }

cd "$(dirname "$0")/.."

if [ ! -x "$VENV/bin/python" ]; then
    python=${PYTHON:-}
    if [ -z "$python" ]; then
        for candidate in python3.11 python3; do
            if command -v "$candidate" >/dev/null 2>&1; then python=$candidate; break; fi
        done
    fi
    [ -n "$python" ] || { say "no python3.11 or python3 found; set PYTHON=/path/to/python3"; exit 1; }
    say "creating $VENV with $($python --version 2>&1) ($(command -v "$python"))"
    "$python" -m venv "$VENV"
fi

pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
say "installing $TORCH_SPEC and numpy<2"
"${pip[@]}" install -q "$TORCH_SPEC" "numpy<2"
say "installing the project in editable mode with extras [$EXTRAS]"
"${pip[@]}" install --progress-bar off -e ".[$EXTRAS]"

# The controller's VAD: silero_vad.onnx out of the silero-vad wheel, without installing the wheel (it
# requires torch and torchaudio; the controller runs the ONNX file with onnxruntime alone).
vad_onnx="$VENV/share/stepaudio/silero_vad.onnx"
if ! { [ -f "$vad_onnx" ] && echo "$SILERO_VAD_SHA256  $vad_onnx" | sha256sum -c --quiet - 2>/dev/null; }; then
    say "extracting silero_vad.onnx from silero-vad==$SILERO_VAD_VERSION into $vad_onnx"
    wheel_dir=$(mktemp -d)
    trap 'rm -rf "$wheel_dir"' EXIT
    "${pip[@]}" download -q --no-deps "silero-vad==$SILERO_VAD_VERSION" -d "$wheel_dir"
    mkdir -p "$(dirname "$vad_onnx")"
    "$VENV/bin/python" - "$wheel_dir" "$vad_onnx" <<'PY'
import glob, hashlib, os, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "silero_vad-*.whl"))[0]
data = zipfile.ZipFile(wheel).read("silero_vad/data/silero_vad.onnx")
tmp = sys.argv[2] + ".tmp"
with open(tmp, "wb") as f:
    f.write(data)
os.replace(tmp, sys.argv[2])
print(f"[setup] silero_vad.onnx: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}")
PY
    echo "$SILERO_VAD_SHA256  $vad_onnx" | sha256sum -c --quiet - || { say "silero_vad.onnx has an unexpected sha256"; exit 1; }
fi

touch "$VENV/.setup-stamp"
say "done: $("$VENV/bin/python" --version) in $VENV"
