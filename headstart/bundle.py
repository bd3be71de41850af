"""Model bundles: one zip file holding `config.json` and `model.safetensors`. Data only, never pickles.

A Hugging Face backbone also leaves the files that rebuild its architecture under `backbone/` (its config.json and
tokenizer files, backbones.backbone_files), so a bundle loads with no network, hub cache or package: weights from
the bundle, everything else too. Bundles without them (written before) still load where a local copy of the model
is found. Older headstarts read the new bundles as before (they ignore members they do not know), so the format
version stays 1.

Written atomically (temporary file in the same folder, then rename), so a crash never leaves a half bundle
under the real name. A bundle folder holding the same files is read too.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import zipfile
import zlib

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ._version import __version__
from .errors import BundleError

FORMAT = "headstart.bundle"
FORMAT_VERSION = 1
CONFIG, WEIGHTS = "config.json", "model.safetensors"
FILES = "backbone/"  # the backbone's own files: members `backbone/NAME` (a folder of that name in a bundle folder)

# What a bundle may make us read into memory, checked before a byte of a member is read. A crafted bundle could
# otherwise claim, or inflate to, any size and exhaust memory. Real bundles stay far below: the largest packaged
# backbone (all-mpnet-base-v2) has 0.44 GB of weights, and 8 GiB holds a 2-billion-parameter model in float32;
# config.json is a few KB (a TF-IDF vocabulary makes it a few MB at most).
MAX_WEIGHTS_BYTES = 8 << 30
MAX_CONFIG_BYTES = 16 << 20
# headstart stores members uncompressed (ratio 1), and a recompressed model stays near it (float weights barely
# deflate, JSON ~10:1); deflate bombs reach ~1000:1. Small members are exempt: they cannot exhaust memory.
MAX_COMPRESSION_RATIO = 100
RATIO_EXEMPT_BYTES = 1 << 20
# The backbone's files: a tokenizer.json is 0.7 MB for BERT and up to ~35 MB for the largest vocabularies (Gemma,
# XLM-R), a transformers config a few KB; transformers writes 3-6 files. The names become file names in a temporary
# folder when the bundle loads, so only plain names pass (no folders, no "..").
MAX_FILE_BYTES = 64 << 20
MAX_FILES_BYTES = 128 << 20
MAX_FILES = 16
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")


def _member_limit(name: str) -> int:
    if name.startswith(FILES):
        return MAX_FILE_BYTES
    return MAX_CONFIG_BYTES if name == CONFIG else MAX_WEIGHTS_BYTES


def write_bundle(path: str, config: dict, state_dict: dict[str, torch.Tensor], files: dict[str, bytes] | None = None
                 ) -> str:
    """Write the bundle at `path`; `files`: the backbone's own files by name (backbones.backbone_files)."""
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "headstart_version": __version__, **config}
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".bundle-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr(CONFIG, json.dumps(config, indent=2, sort_keys=True))
            zf.writestr(WEIGHTS, save_safetensors(tensors))
            for name, data in sorted((files or {}).items()):
                zf.writestr(FILES + name, data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _too_large(path: str, name: str, size: int) -> BundleError:
    return BundleError(f"{path}: {name} holds {size:,} bytes, over headstart's limit of {_member_limit(name):,} "
                       "for it; refusing to read it: the bundle is damaged or crafted, "
                       "re-save the model with headstart")


def _check_files(path: str, sizes: dict[str, int]) -> None:
    """Refuse backbone files (member name -> declared size) a real bundle never has: odd names, too many, too large
    together. Each one's own limit is checked with the other members'."""
    for name in sizes:
        if not _PLAIN_NAME.fullmatch(name[len(FILES):]):
            raise BundleError(f"{path}: member {name!r} is not a plain file name under {FILES}; the bundle is damaged "
                              "or crafted: re-save the model with headstart")
    if len(sizes) > MAX_FILES or sum(sizes.values()) > MAX_FILES_BYTES:
        raise BundleError(f"{path}: {len(sizes)} backbone files of {sum(sizes.values()):,} bytes, over headstart's "
                          f"limit of {MAX_FILES} files, {MAX_FILES_BYTES:,} bytes; refusing to read them: the bundle "
                          "is damaged or crafted, re-save the model with headstart")


def _read_file(path: str, name: str) -> bytes:
    """A member of a bundle folder, read no further than its limit (the file may grow while it is read)."""
    if (size := os.path.getsize(os.path.join(path, name))) > _member_limit(name):
        raise _too_large(path, name, size)
    with open(os.path.join(path, name), "rb") as f:
        data = f.read(_member_limit(name) + 1)
    if len(data) > _member_limit(name):
        raise _too_large(path, name, len(data))
    return data


def _read_members(path: str, config_only: bool = False) -> tuple[bytes, bytes, dict[str, bytes]]:
    """config.json, model.safetensors and the backbone's files (name -> bytes, "backbone/" left off). With
    `config_only`, the same checks but only config.json is read (weights b"", no files): a caller that wants the
    config alone must not inflate gigabytes of weights for it."""
    if os.path.isdir(path):
        names = set(os.listdir(path))
        if CONFIG not in names or WEIGHTS not in names:
            raise BundleError(f"{path}: not a headstart bundle (needs {CONFIG} and {WEIGHTS})")
        if config_only:
            return _read_file(path, CONFIG), b"", {}
        folder = os.path.join(path, FILES)
        listed = os.listdir(folder) if os.path.isdir(folder) else []
        files = sorted(FILES + n for n in listed if os.path.isfile(os.path.join(folder, n)))
        _check_files(path, {n: os.path.getsize(os.path.join(path, n)) for n in files})
        return (_read_file(path, CONFIG), _read_file(path, WEIGHTS),
                {n[len(FILES):]: _read_file(path, n) for n in files})
    if not os.path.isfile(path):
        raise BundleError(f"{path}: no such bundle")
    if not zipfile.is_zipfile(path):
        raise BundleError(f"{path}: not a headstart bundle (expected a zip of {CONFIG} + {WEIGHTS}); "
                          "headstart never loads pickled models")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if CONFIG not in names or WEIGHTS not in names:
                raise BundleError(f"{path}: not a headstart bundle (needs {CONFIG} and {WEIGHTS}, "
                                  f"found {sorted(names)})")
            files = sorted(n for n in names if n.startswith(FILES))
            _check_files(path, {n: zf.getinfo(n).file_size for n in files})
            for name in (CONFIG, WEIGHTS, *files):  # from the zip's directory, before any member is inflated
                _check_member(path, zf.getinfo(name))
            if config_only:
                return zf.read(CONFIG), b"", {}
            # The reads stop at the sizes just checked: zipfile never inflates past the directory's file_size (a
            # member that claims less than it holds then fails its CRC check, below).
            return zf.read(CONFIG), zf.read(WEIGHTS), {n[len(FILES):]: zf.read(n) for n in files}
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as err:
        # a damaged archive, an unknown compression method, or an encrypted member
        raise BundleError(f"{path}: damaged or unreadable zip ({type(err).__name__}: {err}); "
                          "re-save the model with headstart") from None


def _check_member(path: str, info: zipfile.ZipInfo) -> None:
    """Refuse a member whose declared size is over its limit, or whose compression ratio only a zip bomb has."""
    if info.file_size > _member_limit(info.filename):
        raise _too_large(path, info.filename, info.file_size)
    if info.file_size > RATIO_EXEMPT_BYTES and info.file_size > MAX_COMPRESSION_RATIO * max(1, info.compress_size):
        raise BundleError(f"{path}: {info.filename} is compressed {info.file_size // max(1, info.compress_size):,}:1"
                          f", over the {MAX_COMPRESSION_RATIO}:1 a real model reaches (a zip bomb); refusing to "
                          "read it: re-save the model with headstart, which stores members uncompressed")


def check_nested_zip(name: str, data: bytes) -> None:
    """Refuse a zip held in a bundle's tensor (a classical head's skops file, `name`) whose members declare more
    than the weights' limit together or have a zip bomb's ratio: from its directory, before anything inflates them.
    No path in the message: the loader prefixes the bundle's."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, EOFError, ValueError) as err:
        raise BundleError(f"{name} is not a readable zip ({type(err).__name__}: {err}); the bundle is damaged: "
                          "re-save the model with headstart") from None
    if (total := sum(info.file_size for info in infos)) > MAX_WEIGHTS_BYTES:
        raise BundleError(f"{name} holds {total:,} bytes, over headstart's limit of {MAX_WEIGHTS_BYTES:,} for it; "
                          "refusing to read it: the bundle is damaged or crafted, re-save the model with headstart")
    for info in infos:
        if info.file_size > RATIO_EXEMPT_BYTES and info.file_size > MAX_COMPRESSION_RATIO * max(1, info.compress_size):
            raise BundleError(f"{name}: {info.filename} is compressed {info.file_size // max(1, info.compress_size):,}"
                              f":1, over the {MAX_COMPRESSION_RATIO}:1 a real model reaches (a zip bomb); refusing "
                              "to read it: re-save the model with headstart")


def read_bundle_config(path: str) -> dict:
    """The bundle's checked config.json, read without its weights or backbone files."""
    raw, _, _ = _read_members(path, config_only=True)
    return _check_config(path, raw)


def _check_config(path: str, raw: bytes) -> dict:
    try:
        config = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{path}: {CONFIG} is not valid JSON ({err}); the bundle is damaged") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise BundleError(f"{path}: not a headstart bundle ({CONFIG} lacks format '{FORMAT}')")
    version = config.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise BundleError(f"{path}: bundle format version {version!r} is invalid; the bundle is damaged")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{path}: written by headstart {config.get('headstart_version', '?')} (bundle format {version}); "
            f"this is headstart {__version__}, which reads format {FORMAT_VERSION}: upgrade headstart"
        )
    for key in ("modality", "task", "backbone", "head"):
        if key not in config:
            raise BundleError(f"{path}: {CONFIG} lacks '{key}'; the bundle is damaged")
    _check_schema(path, config)
    return config


# The types the restoring code relies on: a bundle edited by hand, or crafted, fails here with a message.
_SCHEMA = {"modality": str, "task": str, "backbone": dict, "head": dict, "labels": list, "backbone_trained": bool,
           "params": dict, "target_scaling": (dict, type(None)), "thresholds": (list, type(None))}


def _check_schema(path: str, config: dict) -> None:
    for key, kind in _SCHEMA.items():
        if key in config and not isinstance(config[key], kind):
            raise BundleError(f"{path}: '{key}' in {CONFIG} has the wrong type ({type(config[key]).__name__}); "
                              "the bundle is damaged or was edited: re-save it")
    labels, head = config.get("labels", []), config["head"]
    if not all(isinstance(label, str) for label in labels):
        raise BundleError(f"{path}: 'labels' in {CONFIG} must be strings; the bundle is damaged or was edited")
    out_dim = head.get("out_dim")
    if config["task"] in ("classification", "multilabel") and out_dim not in (None, len(labels)):
        raise BundleError(f"{path}: {len(labels)} labels but the head has {out_dim!r} outputs; the bundle is damaged "
                          "or was edited: re-save it")
    thresholds = config.get("thresholds")
    if thresholds is not None and (len(thresholds) != len(labels)
                                   or not all(isinstance(t, (int, float)) for t in thresholds)):
        raise BundleError(f"{path}: 'thresholds' in {CONFIG} needs one number per label; the bundle is damaged")
    scaling = config.get("target_scaling")
    if scaling is not None and not all(isinstance(scaling.get(k), (int, float)) for k in ("mean", "std")):
        raise BundleError(f"{path}: 'target_scaling' in {CONFIG} needs numbers mean and std; the bundle is damaged")


def unbuildable(path: str, err: Exception) -> BundleError:
    """The error for a bundle whose config passed the checks but does not describe a model that can be built."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()] or [""]
    # torch's load_state_dict says what failed on its second line ("size mismatch for head.weight: ...")
    detail = (" ".join(lines[:2]) if lines[0].endswith(":") else lines[0])[:200]
    return BundleError(f"{path}: {CONFIG} does not describe a model this headstart can build "
                       f"({type(err).__name__}: {detail}); the bundle is damaged or was edited: re-save it")


def read_bundle(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    config, state, _ = read_bundle_files(path)
    return config, state


def read_bundle_files(path: str) -> tuple[dict, dict[str, torch.Tensor], dict[str, bytes]]:
    """The config, the weights and the backbone's files (what `rebuild_backbone` builds its architecture from)."""
    raw_config, raw_weights, files = _read_members(path)
    config = _check_config(path, raw_config)
    try:
        state = load_safetensors(raw_weights)
    except Exception as err:  # safetensors raises its own error type for any malformed header
        raise BundleError(f"{path}: {WEIGHTS} is damaged ({err})") from None
    return config, state, files
