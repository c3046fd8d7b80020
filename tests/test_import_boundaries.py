"""controller/ and client/ never import torch or the core package: they run in slim images."""

import ast
import subprocess
import sys

from tests.conftest import ROOT

LIGHT_PACKAGES = ("client", "controller")
FORBIDDEN = ("torch", "stepaudio", "funasr", "onnxruntime", "triton_python_backend_utils")


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
                if name.split(".")[0] in FORBIDDEN:
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
