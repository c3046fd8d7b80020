"""Seeded, deterministic random-weight checkpoints in the official Step-Audio file layouts.

Each component writer fills one directory laid out exactly like the official model repository of the
same name, so that the loading code meant for the real files loads these too.  The weights are random
(the outputs mean nothing); what matters is the file formats, key names, shapes and interfaces.

``write_tiny`` is the entry point.  ``COMPONENTS`` maps an official repository name to its writer;
a writer is called as ``writer(dest_dir, options)`` with an existing empty ``dest_dir`` and returns it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["COMPONENTS", "TinyOptions", "write_tiny"]


def _quiet(_msg: str) -> None:
    pass


@dataclass(frozen=True)
class TinyOptions:
    """Options shared by every component writer."""

    seed: int = 0
    # Real dimensions of the official models (big files; for benchmarks only, never committed).
    # The Step-1 LMs (Chat 130B, TTS 3B) get the ~110M-parameter "step1-100m" preset instead.
    full_size: bool = False
    progress: Callable[[str], None] = field(default=_quiet, compare=False)


Writer = Callable[[Path, TinyOptions], Path]


def _write_step_audio_tokenizer(dest: Path, opts: TinyOptions) -> Path:
    # Imported lazily: it pulls in torch, funasr and onnx, which are slow to import.
    from .tokenizer import write_tokenizer

    return write_tokenizer(dest, opts)


def _write_step_audio_chat(dest: Path, opts: TinyOptions) -> Path:
    from .step1 import write_step1

    return write_step1(dest, opts, kind="chat")


COSYVOICE_DIRS = {"CosyVoice-300M-25Hz": 0, "CosyVoice-300M-25Hz-Music": 1000}  # folder -> seed offset


def _write_step_audio_tts_3b(dest: Path, opts: TinyOptions) -> Path:
    # The Step-1 LM part (config, weights, tokenizer) and the two CosyVoice speech decoders.
    from .campplus import write_campplus
    from .cosyvoice import write_cosyvoice
    from .step1 import write_step1

    write_step1(dest, opts, kind="tts")
    for name, offset in COSYVOICE_DIRS.items():
        opts.progress(f"  {name}: cosyvoice.yaml, flow.pt, hift.pt, campplus.onnx")
        write_cosyvoice(dest / name, opts.seed + offset)
        # the same CAM++ in both folders, as in the release (only the common one's is used)
        write_campplus(dest / name / "campplus.onnx", opts.seed)
    return dest


def _write_speakers(dest: Path, opts: TinyOptions) -> Path:
    # Built-in voices; the reference reads speakers/ beside the models (its code repository's root).
    from .speakers import write_speakers

    return write_speakers(dest, opts.seed)


COMPONENTS: dict[str, Writer] = {
    "speakers": _write_speakers,
    "Step-Audio-Tokenizer": _write_step_audio_tokenizer,
    "Step-Audio-Chat": _write_step_audio_chat,
    "Step-Audio-TTS-3B": _write_step_audio_tts_3b,
}


def write_tiny(
    out_dir: Path,
    components: list[str] | None = None,
    seed: int = 0,
    full_size: bool = False,
    progress: Callable[[str], None] = print,
) -> list[Path]:
    """Write each component into ``out_dir/<component>/`` and return those directories.

    A component is written into a hidden temporary directory next to its final place and renamed
    only once complete, so an interrupted run never leaves a half-written checkpoint behind.  An
    existing component directory is replaced.
    """
    names = list(COMPONENTS) if components is None else list(components)
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown:
        raise KeyError(f"unknown component(s) {unknown}; known: {sorted(COMPONENTS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    opts = TinyOptions(seed=seed, full_size=full_size, progress=progress)

    written: list[Path] = []
    for name in names:
        final = out_dir / name
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=out_dir))
        try:
            progress(f"{name}: writing (seed {seed}{', full size' if full_size else ''})")
            COMPONENTS[name](tmp, opts)
            os.chmod(tmp, 0o755)  # mkdtemp creates it 0700
            _replace_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        progress(f"{name}: done -> {final}")
        written.append(final)
    return written


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the complete directory ``src`` to ``dst``, replacing any existing ``dst``."""
    if not dst.exists() and not dst.is_symlink():
        os.replace(src, dst)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
    old.rmdir()
    os.replace(dst, old)
    try:
        os.replace(src, dst)
    except BaseException:
        os.replace(old, dst)  # put the previous checkpoint back
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()
