"""The checkpoint file: atomic writes, a checksum of its content, one-line errors when reading.

A checkpoint file (format 2) is the ``torch.save`` archive of the payload dict followed by one
footer line ``#mirroropt-checkpoint sha256=<64 hex digits>`` holding the SHA-256 of every byte
before it. Reading verifies the digest before unpickling (with ``weights_only=True``), so a
flipped bit anywhere in the file (weights, optimizer moments, RNG state, log, archive metadata)
is detected, never loaded. Read it with :func:`mirroropt.workflow.load_checkpoint`. Files of
format 1 (no footer, written by earlier versions) are still read, without the check.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "read_payload", "remove_stale_temp", "temp_path", "write_payload"]

FORMAT = 2
LEGACY_FORMAT = 1
_FOOTER = b"\n#mirroropt-checkpoint sha256="
_FOOTER_SIZE = len(_FOOTER) + 64 + 1  # prefix, hex digest, newline


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message is one line naming the file and why."""


def temp_path(path: Path) -> Path:
    """Where :func:`write_payload` writes before the atomic rename: ``<path>.tmp``."""
    return path.with_suffix(path.suffix + ".tmp")


def remove_stale_temp(path: Path) -> bool:
    """Delete a ``<path>.tmp`` left by a write that was killed; True if there was one."""
    tmp = temp_path(path)
    if tmp.is_file():
        tmp.unlink()
        return True
    return False


def write_payload(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """Write ``payload`` (its ``"format"`` set to 2) and the checksum footer, atomically.

    The bytes go to ``<path>.tmp``, are fsynced, then renamed over ``path``: a write that is
    killed leaves ``path`` as it was (the previous checkpoint, or nothing) and at most a stale
    ``.tmp``, which :func:`remove_stale_temp` deletes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({**payload, "format": FORMAT}, buffer)
    data = buffer.getvalue()
    footer = _FOOTER + hashlib.sha256(data).hexdigest().encode() + b"\n"
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.write(footer)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_payload(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and verify a checkpoint file; return the payload dict.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        CheckpointError: (a ``ValueError``) if it is a directory, empty, truncated, text, not a
            torch archive, not a mirroropt checkpoint, or its checksum does not match. The
            message is one line naming the file and what is wrong.
    """
    path = Path(path)
    name = repr(str(path))
    if path.is_dir():
        raise CheckpointError(f"`checkpoint` {name} is a directory, not a checkpoint file.")
    if not path.exists():
        raise FileNotFoundError(f"`checkpoint` {name} does not exist.")
    raw = path.read_bytes()
    if not raw:
        raise CheckpointError(f"`checkpoint` {name} is empty (0 bytes): not a checkpoint.")
    if not raw.startswith(b"PK\x03\x04"):  # every torch.save archive is a zip file
        kind = "a text file" if _is_text(raw[:512]) else "not a torch archive"
        raise CheckpointError(f"`checkpoint` {name} is {kind}, not a mirroropt checkpoint.")
    footer = raw[-_FOOTER_SIZE:]
    signed = footer.startswith(_FOOTER) and footer.endswith(b"\n")
    data = raw[:-_FOOTER_SIZE] if signed else raw
    if signed:
        recorded = footer[len(_FOOTER) : -1].decode("ascii", errors="replace")
        actual = hashlib.sha256(data).hexdigest()
        if actual != recorded:
            raise CheckpointError(
                f"`checkpoint` {name} is corrupt: the SHA-256 of its content is {actual[:12]}…, "
                f"the file records {recorded[:12]}… (a changed bit or a damaged copy)."
            )
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise CheckpointError(
            f"`checkpoint` {name} is truncated or corrupt ({len(raw)} bytes; the archive's index "
            f"is missing or damaged)."
        )
    payload = _load(io.BytesIO(data), name, "the archive")
    found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
    if found not in (FORMAT, LEGACY_FORMAT):
        raise CheckpointError(
            f"`checkpoint` {name} is not a mirroropt checkpoint of format {FORMAT} (found format "
            f"{found!r})."
        )
    if found == FORMAT and not signed:
        raise CheckpointError(
            f"`checkpoint` {name} is corrupt or truncated: its checksum line is missing or damaged."
        )
    return payload  # type: ignore[no-any-return]


def _load(source: Any, name: str, what: str) -> Any:
    try:
        return torch.load(source, weights_only=True, map_location="cpu")
    except Exception as error:  # torch's messages are multi-line and advise unsafe loading
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "weights" in reason.lower():  # torch's advice to load unsafely: never repeat it
            reason = "it holds objects that safe (weights-only) loading refuses"
        if len(reason) > 120:
            reason = reason[:117] + "..."
        raise CheckpointError(
            f"`checkpoint` {name} is truncated, corrupt or not a mirroropt checkpoint: reading "
            f"{what} failed ({type(error).__name__}: {reason})."
        ) from None


def _is_text(sample: bytes) -> bool:
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\t\n\r" for c in text)
