"""Checkpoint manifests: the size and SHA-256 of every file, written last, verified on load.

A checkpoint whose manifest is missing a file, or whose file differs in size or hash (a truncated
`config.yaml`, a corrupt `model.safetensors`, NaN written over stats), is refused with the file named. Every file
a loader reads (`READ_FILES`, `READ_FOLDERS`) must be listed: a manifest that leaves one out does not vouch for it.

Every checkpoint this version writes has a manifest, so one without is refused (`MissingManifestError`: deleting
`manifest.json` does not switch the checks off). A checkpoint written before manifests existed is vouched for once,
explicitly, by writing its manifest:

    python -m vlablocks.core.manifest --adopt DIR
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

MANIFEST_FILE = "manifest.json"
CHUNK = 1 << 22
READ_FILES = ("config.yaml", "model.safetensors", "ema.safetensors", "norm_stats.json")  # top-level files loaded
READ_FOLDERS = ("processor", "trainer_state")  # every file under these is loaded
ADOPT_HINT = "python -m vlablocks.core.manifest --adopt {directory}"


class CorruptCheckpointError(ValueError):
    """A checkpoint file does not match its manifest; the message names the file and what differs."""


class MissingManifestError(CorruptCheckpointError):
    """A checkpoint without `manifest.json`: deleted or never written (a checkpoint older than manifests)."""


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


def _read_files(directory: Path) -> list[str]:
    """The files under `directory` that a loader reads (relative paths)."""
    found = [p for p in _files(directory) if p.parent == directory and p.name in READ_FILES]
    found += [p for folder in READ_FOLDERS for p in _files(directory / folder)] if directory.is_dir() else []
    return sorted(str(p.relative_to(directory)) for p in found)


def verify_manifest(directory: str | Path) -> bool:
    """True when `directory` matches its manifest and the manifest lists every file a loader reads;
    `MissingManifestError` when it has none, CorruptCheckpointError for anything else, naming the file."""
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise MissingManifestError(
            f"{directory} has no {MANIFEST_FILE}: every checkpoint this version writes has one, so it was deleted or "
            f"the copy is partial; a checkpoint from before manifests is vouched for once with "
            f"`{ADOPT_HINT.format(directory=directory)}`"
        )
    try:
        entries = json.loads(path.read_text())["files"]
        if not isinstance(entries, dict) or not all(isinstance(e, dict) for e in entries.values()):
            raise TypeError("'files' must map paths to {size, sha256}")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise CorruptCheckpointError(f"{path}: unreadable manifest ({exc})".splitlines()[0]) from None
    unlisted = [name for name in _read_files(directory) if name not in entries]
    if unlisted or not entries:
        raise CorruptCheckpointError(
            f"{directory / (unlisted[0] if unlisted else MANIFEST_FILE)}: not listed in the manifest "
            f"({len(unlisted)} unlisted file(s)); the manifest does not vouch for it"
        )
    for name, expected in entries.items():
        file = directory / name
        if not file.is_file():
            raise CorruptCheckpointError(f"{file}: listed in the manifest but missing")
        size = file.stat().st_size
        if size != expected["size"]:
            raise CorruptCheckpointError(f"{file}: {size} bytes, the manifest says {expected['size']} (truncated?)")
        if _digest(file) != expected.get("sha256"):
            raise CorruptCheckpointError(f"{file}: contents differ from the manifest's SHA-256 (corrupted)")
    return True


def adopt(directory: str | Path) -> Path:
    """Writes the manifest of a checkpoint older than manifests (its owner vouches for its files as they are).
    Refused for a checkpoint that has one: adopting it again would hide damage the manifest detects."""
    directory = Path(directory)
    if not directory.is_dir() or not (directory / "config.yaml").is_file():
        raise ValueError(f"{directory} is not a checkpoint directory (no config.yaml)")
    if (directory / MANIFEST_FILE).is_file():
        raise ValueError(f"{directory} already has a {MANIFEST_FILE}; a damaged checkpoint is not adopted again")
    return write_manifest(directory)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Vouch for a checkpoint written before manifests: write its manifest.")
    parser.add_argument("--adopt", required=True, metavar="DIR", help="the checkpoint directory")
    path = adopt(parser.parse_args(argv).adopt)
    print(f"wrote {path}: {path.parent} now loads, verified against it")
    return 0


def read_json(path: str | Path):
    """A JSON file's content; a missing or unparsable file is an error that names it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptCheckpointError(f"{path}: not valid JSON ({exc})".splitlines()[0]) from None


if __name__ == "__main__":
    raise SystemExit(main())
