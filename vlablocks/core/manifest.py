"""Checkpoint manifests: the size and SHA-256 of every file, written last, verified on load.

A checkpoint whose manifest is missing a file, or whose file differs in size or hash (a truncated
`config.yaml`, a corrupt `model.safetensors`, NaN written over stats), is refused with the file named.
Directories written before manifests existed have none and load unverified.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST_FILE = "manifest.json"
CHUNK = 1 << 22


class CorruptCheckpointError(ValueError):
    """A checkpoint file does not match its manifest; the message names the file and what differs."""


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)


def write_manifest(directory: str | Path) -> Path:
    """Records every file under `directory` (relative path -> size, sha256); call it after the last write."""
    directory = Path(directory)
    entries = {
        str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": _digest(p)} for p in _files(directory)
    }
    path = directory / MANIFEST_FILE
    path.write_text(json.dumps({"format": 1, "files": entries}, indent=1))
    return path


def verify_manifest(directory: str | Path) -> bool:
    """True when `directory` matches its manifest, False when it has none; CorruptCheckpointError otherwise."""
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not path.is_file():
        return False
    try:
        entries = json.loads(path.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CorruptCheckpointError(f"{path}: unreadable manifest ({exc})".splitlines()[0]) from None
    for name, expected in entries.items():
        file = directory / name
        if not file.is_file():
            raise CorruptCheckpointError(f"{file}: listed in the manifest but missing")
        size = file.stat().st_size
        if size != expected["size"]:
            raise CorruptCheckpointError(f"{file}: {size} bytes, the manifest says {expected['size']} (truncated?)")
        if _digest(file) != expected["sha256"]:
            raise CorruptCheckpointError(f"{file}: contents differ from the manifest's SHA-256 (corrupted)")
    return True


def read_json(path: str | Path):
    """A JSON file's content; a missing or unparsable file is an error that names it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptCheckpointError(f"{path}: not valid JSON ({exc})".splitlines()[0]) from None
