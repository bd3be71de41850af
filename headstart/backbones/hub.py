"""Whether pretrained weights can be had from a hub before a builder asks for them: already in the Hugging Face
cache (`hf_cached`, `cached_snapshot`), or the hub reachable at all (`reachable`); otherwise `require_hub` fails at
once with a clear error naming the backbones that work offline, where a hub client would retry for minutes.

Shared by the image builders (vision.py: timm, torchvision, Hugging Face) and the text ones (text.py).
"""

from __future__ import annotations

import socket
import urllib.parse

from ..errors import BackboneUnavailable
from .base import BackboneSpec
from .packaged import missing_wheels
from .registry import list_backbones


def offline_hint() -> str:
    names = [s.name for s in list_backbones() if s.offline and not missing_wheels(s)]
    return "available offline: " + ", ".join(names) + " (or pretrained=False for random weights)"


def download_failed(spec: BackboneSpec, err: Exception) -> BackboneUnavailable:
    first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
    return BackboneUnavailable(
        f"cannot fetch pretrained weights for '{spec.name}' from {spec.source} (no network or unknown id: {first}); "
        + offline_hint()
    )


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether the host serving `url` answers at all. Hub clients retry with back-off for minutes when offline;
    one quick probe turns that into an immediate, clear error."""
    parsed = urllib.parse.urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def hf_cached(repo_id: str, filenames: tuple[str, ...]) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo_id, f), str) for f in filenames)


def cached_snapshot(repo_id: str) -> str:
    """The local folder of `repo_id`'s cached snapshot (raises when there is none); no network call."""
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id, local_files_only=True)


def require_hub(spec: BackboneSpec, repo_id: str | None, url: str | None = None,
                 weights: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")) -> None:
    """Fail fast, naming the offline backbones, when weights are neither cached nor downloadable. Only the
    weights count as cached: a repository's config.json alone (left by an interrupted download) would send the
    loader to the hub, which it retries for minutes when offline."""
    if repo_id and hf_cached(repo_id, weights):
        return
    from huggingface_hub import constants

    target = url or constants.ENDPOINT
    if not reachable(target):
        host = urllib.parse.urlparse(target).hostname
        raise BackboneUnavailable(
            f"cannot fetch pretrained weights for '{spec.name}': {host} is unreachable (offline?) and they are not "
            "in the local cache; " + offline_hint()
        )
