"""Dual-codebook token spaces: vq02 (linguistic, 1024 codes), vq06 (semantic, 4096 codes).

| space          | vq02      | vq06                 |
| raw code       | 0..1023   | 0..4095              |
| N (<audio_N>)  | code      | 1024 + code          |
| LLM token id   | 65536 + N | 65536 + N            |
Groups of 2 vq02 + 3 vq06 tokens (120 ms); leftovers of either stream are dropped.
"""

from __future__ import annotations

import re

import numpy as np

VQ02_CODEBOOK_SIZE = 1024
VQ06_CODEBOOK_SIZE = 4096
VQ06_OFFSET = VQ02_CODEBOOK_SIZE
AUDIO_TOKEN_ID_OFFSET = 65536
VQ02_PER_GROUP = 2
VQ06_PER_GROUP = 3
TOKENS_PER_GROUP = VQ02_PER_GROUP + VQ06_PER_GROUP
GROUP_MS = 120

_AUDIO_TOKEN_RE = re.compile(r"<audio_(\d+)>")


def n_complete_groups(n_vq02: int, n_vq06: int) -> int:
    return min(n_vq02 // VQ02_PER_GROUP, n_vq06 // VQ06_PER_GROUP)


def interleave(vq02: np.ndarray, vq06: np.ndarray, first_group: int = 0, end_group: int | None = None) -> np.ndarray:
    """N values of groups [first_group, end_group): per group 2 vq02 codes then 3 vq06 codes + 1024."""
    vq02 = np.asarray(vq02, dtype=np.int64)
    vq06 = np.asarray(vq06, dtype=np.int64)
    n = n_complete_groups(len(vq02), len(vq06))
    end = n if end_group is None else min(end_group, n)
    if end <= first_group:
        return np.zeros(0, dtype=np.int64)
    a = vq02[first_group * VQ02_PER_GROUP : end * VQ02_PER_GROUP].reshape(-1, VQ02_PER_GROUP)
    b = vq06[first_group * VQ06_PER_GROUP : end * VQ06_PER_GROUP].reshape(-1, VQ06_PER_GROUP) + VQ06_OFFSET
    return np.concatenate([a, b], axis=1).reshape(-1)


def token_string(audio_n: np.ndarray | list[int]) -> str:
    return "".join(f"<audio_{int(n)}>" for n in audio_n)


def parse_token_string(text: str) -> list[int]:
    return [int(m) for m in _AUDIO_TOKEN_RE.findall(text)]


def llm_ids(audio_n: np.ndarray) -> np.ndarray:
    return np.asarray(audio_n, dtype=np.int64) + AUDIO_TOKEN_ID_OFFSET
