"""Versioned model artifacts on disk: atomic publish, `latest` pointer, list, rollback."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model.errors import RegistryError

__all__ = ["MODEL_NAMES", "ModelRegistry"]

MODEL_NAMES: tuple[str, ...] = ("recommender", "risk")
_VERSION = re.compile(r"^v(\d+)$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class ModelRegistry:
    """Artifacts under `<data_dir>/models/<name>/<version>/` with `manifest.json` in each.

    A version directory appears only complete: it is written under a hidden temporary name and
    renamed into place. `LATEST` (a one-line file, replaced atomically) names the version to
    serve. Versions are `v1`, `v2`, ... in publish order; rollback moves `LATEST` one back.
    """

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir) / "models"

    def _dir(self, name: str) -> Path:
        if not _NAME.match(name):
            raise RegistryError(f"bad model name {name!r}")
        return self.root / name

    def versions(self, name: str) -> list[str]:
        """Published versions of `name`, oldest first."""
        d = self._dir(name)
        if not d.is_dir():
            return []
        found = [(int(m.group(1)), p.name) for p in d.iterdir()
                 if (m := _VERSION.match(p.name)) and (p / "manifest.json").is_file()]
        return [v for _, v in sorted(found)]

    def latest(self, name: str) -> str | None:
        """The version `LATEST` points at, or None when nothing was published."""
        try:
            v = (self._dir(name) / "LATEST").read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return v or None

    def path(self, name: str, version: str | None = None) -> Path:
        """Directory of a version (default: latest)."""
        v = version or self.latest(name)
        if v is None:
            raise RegistryError(f"no published {name} model in {self.root}")
        p = self._dir(name) / v
        if not (p / "manifest.json").is_file():
            raise RegistryError(f"{name} version {v} not found in {self.root}")
        return p

    def manifest(self, name: str, version: str | None = None) -> dict[str, Any]:
        data = json.loads((self.path(name, version) / "manifest.json").read_text("utf-8"))
        if not isinstance(data, dict):
            raise RegistryError(f"{name} {version}: malformed manifest")
        return data

    def list(self) -> dict[str, list[str]]:
        """All model names with their versions."""
        if not self.root.is_dir():
            return {}
        return {p.name: self.versions(p.name) for p in sorted(self.root.iterdir())
                if p.is_dir() and not p.name.startswith(".")}

    def publish(self, name: str, write: Callable[[Path], None], *,
                metadata: dict[str, Any] | None = None, make_latest: bool = True) -> str:
        """Write a new version with `write(tmp_dir)`, rename it into place, move `LATEST`.

        Returns the version string. A failure in `write` leaves no trace.
        """
        d = self._dir(name)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            write(tmp)
            manifest: dict[str, Any] = {"name": name, "created_at": time.time(),
                                        **(metadata or {})}
            manifest["files"] = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*")
                                       if p.is_file())
            for _ in range(1000):
                existing = self.versions(name)
                n = int(existing[-1][1:]) + 1 if existing else 1
                version = f"v{n}"
                manifest["version"] = version
                (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1), "utf-8")
                try:
                    os.rename(tmp, d / version)  # fails if a concurrent publisher took n
                except OSError:
                    if (d / version).exists():
                        continue
                    raise
                _fsync_dir(d)
                break
            else:  # pragma: no cover - a thousand concurrent publishers
                raise RegistryError(f"could not allocate a version for {name}")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if make_latest:
            self.set_latest(name, version)
        return version

    def set_latest(self, name: str, version: str) -> None:
        self.path(name, version)  # must exist
        _write_atomic(self._dir(name) / "LATEST", version + "\n")

    def rollback(self, name: str) -> str:
        """Point `LATEST` at the version before the current one; returns that version."""
        versions = self.versions(name)
        cur = self.latest(name)
        if cur is None or cur not in versions:
            raise RegistryError(f"no published {name} model to roll back")
        i = versions.index(cur)
        if i == 0:
            raise RegistryError(f"{name} {cur} is the oldest version; nothing to roll back to")
        prev = versions[i - 1]
        self.set_latest(name, prev)
        return prev
