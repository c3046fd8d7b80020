"""controller/ and client/ never import torch or the core package: they run in slim images."""

import ast
import subprocess
import sys

from tests.conftest import ROOT

LIGHT_PACKAGES = ("client", "controller")
FORBIDDEN = ("torch", "stepaudio", "funasr", "onnxruntime", "triton_python_backend_utils")
# The controller runs the Silero VAD with ONNX Runtime (no torch); the clients need not even that.
ALLOWED = {"controller": ("onnxruntime",)}


def _imports(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_no_forbidden_imports_in_source():
    offenders = []
    for pkg in LIGHT_PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            for name in _imports(path):
                top = name.split(".")[0]
                if top in FORBIDDEN and top not in ALLOWED.get(pkg, ()):
                    offenders.append(f"{path.relative_to(ROOT)}: import {name}")
    assert not offenders, offenders


def test_importing_light_packages_loads_no_torch():
    modules = []
    for pkg in LIGHT_PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            modules.append(".".join(p for p in rel.parts if p != "__init__"))
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"bad = [m for m in {list(FORBIDDEN)!r} if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_controller_vad_runs_without_torch():
    """Loading the Silero model and classifying audio imports onnxruntime, never torch."""
    from controller.vad import default_model_path

    if not default_model_path().is_file():
        import pytest

        pytest.fail(f"{default_model_path()} is missing: `make setup` extracts it (tools/setup_venv.sh)")
    code = (
        "import sys, numpy as np\n"
        "from controller.vad import SileroVad\n"
        "probs = SileroVad(check_hash=True).new_stream().feed(np.zeros(16000, np.float32))\n"
        "assert len(probs) == 31 and max(probs) < 0.1, probs\n"
        "bad = [m for m in ('torch', 'stepaudio', 'funasr') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
