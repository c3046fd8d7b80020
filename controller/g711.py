"""G.711 µ-law and A-law (ITU-T G.711) in numpy: 8-bit codes <-> 16-bit linear PCM.

The Realtime protocol's ``audio/pcmu`` and ``audio/pcma`` carry one byte per sample at 8 kHz.
Decoding goes through 256-entry tables (exact); encoding is the standard segment search, vectorised.
"""

from __future__ import annotations

import numpy as np

_ULAW_BIAS = 0x84  # 132 (16-bit scale): added so that the segment boundaries fall on powers of two
_ULAW_CLIP_14 = 8159  # the encoder works on 14-bit magnitudes, as the Sun reference code does
_ULAW_SEG_END_14 = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)


def _ulaw_decode_one(code: int) -> int:
    u = ~code & 0xFF
    t = ((u & 0x0F) << 3) + _ULAW_BIAS
    t <<= (u & 0x70) >> 4
    return (_ULAW_BIAS - t) if u & 0x80 else (t - _ULAW_BIAS)


def _alaw_decode_one(code: int) -> int:
    a = code ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t = (t + 0x108) << (seg - 1)
    return t if a & 0x80 else -t


ULAW_TABLE = np.array([_ulaw_decode_one(c) for c in range(256)], dtype=np.int16)
ALAW_TABLE = np.array([_alaw_decode_one(c) for c in range(256)], dtype=np.int16)


def _segment(ends: np.ndarray, magnitude: np.ndarray) -> np.ndarray:
    """Index of the first segment end >= magnitude (8 when above all of them)."""
    return np.searchsorted(ends, magnitude, side="left").astype(np.int32)


def ulaw_encode(pcm16: np.ndarray) -> np.ndarray:
    x = np.asarray(pcm16, dtype=np.int32) >> 2  # arithmetic: negative values round towards -inf
    mask = np.where(x < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(x), _ULAW_CLIP_14) + (_ULAW_BIAS >> 2)
    seg = _segment(_ULAW_SEG_END_14, mag)
    code = np.where(seg >= 8, 0x7F, (seg << 4) | ((mag >> (seg + 1)) & 0x0F))
    return (code ^ mask).astype(np.uint8)


def alaw_encode(pcm16: np.ndarray) -> np.ndarray:
    x = np.asarray(pcm16, dtype=np.int32)
    mask = np.where(x >= 0, 0xD5, 0x55)
    mag = np.where(x >= 0, x, -x - 1) >> 3  # 13-bit magnitude
    seg = _segment(_ALAW_SEG_END, mag)
    shift = np.where(seg < 2, 1, seg)
    mant = (mag >> shift) & 0x0F
    code = np.where(seg >= 8, 0x7F, (seg << 4) | mant)
    return (code ^ mask).astype(np.uint8)


def ulaw_decode(codes: np.ndarray) -> np.ndarray:
    return ULAW_TABLE[np.asarray(codes, dtype=np.uint8)]


def alaw_decode(codes: np.ndarray) -> np.ndarray:
    return ALAW_TABLE[np.asarray(codes, dtype=np.uint8)]
