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

# The controller's VAD: silero_vad.onnx out of the silero-vad wheel (without installing the wheel).
"$VENV/bin/python" tools/fetch_silero_vad.py "$VENV/share/stepaudio/silero_vad.onnx"

touch "$VENV/.setup-stamp"
say "done: $("$VENV/bin/python" --version) in $VENV"
