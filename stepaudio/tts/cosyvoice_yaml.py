"""Read an official ``cosyvoice.yaml`` (HyperPyYAML) as plain data, importing nothing it names.

HyperPyYAML tags become ``Node`` objects: ``!new:pkg.Class`` (an object built with the mapping's
keys as arguments), ``!name:pkg.fn`` (a function with bound arguments) and ``!apply:pkg.fn`` (a
call made at load time, e.g. seeding); ``!ref <key>`` is resolved to the referenced value. Our
modules then read the hyperparameters they need from these nodes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stepaudio.tokenizer.files import CheckpointError


@dataclass
class Node:
    kind: str  # "new" | "name" | "apply"
    target: str  # dotted path, e.g. "cosyvoice.flow.flow.MaskedDiffWithXvec"
    kwargs: dict[str, Any] = field(default_factory=dict)
    args: list[Any] = field(default_factory=list)

    @property
    def class_name(self) -> str:
        return self.target.rsplit(".", 1)[-1]

    def __getitem__(self, key: str) -> Any:
        return self.kwargs[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.kwargs.get(key, default)


@dataclass
class _Ref:
    key: str


class _Loader(yaml.SafeLoader):
    pass


def _tagged(kind: str):
    def construct(loader: _Loader, suffix: str, node: yaml.Node) -> Node:
        if isinstance(node, yaml.MappingNode):
            return Node(kind, suffix, loader.construct_mapping(node, deep=True))
        if isinstance(node, yaml.SequenceNode):
            return Node(kind, suffix, args=loader.construct_sequence(node, deep=True))
        value = loader.construct_scalar(node)
        return Node(kind, suffix, args=[value] if value not in ("", None) else [])

    return construct


for _kind in ("new", "name", "apply"):
    _Loader.add_multi_constructor(f"!{_kind}:", _tagged(_kind))
_Loader.add_constructor("!ref", lambda loader, node: _Ref(loader.construct_scalar(node)))

# PyYAML reads "1e-06" (no dot) as a string; YAML 1.2 and HyperPyYAML read it as a float.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)$"),
    list("-+0123456789."),
)


def _resolve(value: Any, root: dict[str, Any]) -> Any:
    if isinstance(value, _Ref):
        key = value.key.strip().strip("<>")
        cur: Any = root
        for part in key.split("."):
            if not isinstance(cur, dict) or part not in cur:
                raise KeyError(key)
            cur = cur[part]
        return _resolve(cur, root)
    if isinstance(value, Node):
        value.kwargs = {k: _resolve(v, root) for k, v in value.kwargs.items()}
        value.args = [_resolve(v, root) for v in value.args]
        return value
    if isinstance(value, dict):
        return {k: _resolve(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, root) for v in value]
    return value


def load_cosyvoice_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # a SafeLoader subclass
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{path}: cannot read the CosyVoice config ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a mapping at the top level")
    try:
        data = _resolve(data, data)
    except KeyError as exc:
        raise CheckpointError(f"{path}: !ref to an unknown key {exc.args[0]!r}") from exc
    for key in ("flow", "hift"):
        if not isinstance(data.get(key), Node):
            raise CheckpointError(f"{path}: missing the '{key}' block (a !new: object)")
    return data
