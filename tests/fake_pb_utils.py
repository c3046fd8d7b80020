"""A stand-in for ``triton_python_backend_utils`` so Python-backend models run in unit tests."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np


class Tensor:
    def __init__(self, name: str, array: np.ndarray):
        self._name, self._array = name, np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class TritonError:
    def __init__(self, message: str):
        self._message = message

    def message(self) -> str:
        return self._message


class InferenceResponse:
    def __init__(self, output_tensors=(), error: TritonError | None = None):
        self.output_tensors, self.error = list(output_tensors), error

    def has_error(self) -> bool:
        return self.error is not None

    def output(self, name: str) -> np.ndarray:
        return next(t.as_numpy() for t in self.output_tensors if t.name() == name)


class FakeRequest:
    def __init__(self, **tensors: np.ndarray):
        self.tensors = {k: Tensor(k, v) for k, v in tensors.items()}


def get_input_tensor_by_name(request: FakeRequest, name: str):
    return request.tensors.get(name)


class _Metric:
    def __init__(self):
        self.value = None

    def set(self, value):
        self.value = value


class MetricFamily:
    GAUGE = "gauge"
    COUNTER = "counter"

    def __init__(self, name, description, kind):
        self.name, self.metrics = name, []

    def Metric(self, labels=None):  # the backend's spelling
        self.metrics.append(_Metric())
        return self.metrics[-1]


def install() -> types.ModuleType:
    mod = types.ModuleType("triton_python_backend_utils")
    for obj in (Tensor, TritonError, InferenceResponse, MetricFamily, get_input_tensor_by_name):
        setattr(mod, obj.__name__, obj)
    sys.modules["triton_python_backend_utils"] = mod
    return mod


def load_model(model_py: Path, parameters: dict[str, object], name: str = "model"):
    """Import a model.py with the fake backend utils and run its initialize()."""
    install()
    spec = importlib.util.spec_from_file_location(f"_triton_model_{name}", model_py)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    config = {"parameters": {k: {"string_value": str(v)} for k, v in parameters.items()}}
    model.initialize({
        "model_config": json.dumps(config), "model_name": name, "model_instance_name": f"{name}_0",
        "model_instance_kind": "CPU", "model_instance_device_id": "0",
    })
    return model
