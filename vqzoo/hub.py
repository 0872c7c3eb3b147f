"""The Hugging Face Hub: download a repository snapshot, upload an export directory.

An export directory (``config.json`` + ``model.safetensors``, see
:mod:`vqzoo.checkpoint`) is already laid out the way ``huggingface_hub``
expects (``PyTorchModelHubMixin`` writes the same two files), so pushing is
``HfApi().create_repo`` + ``upload_folder`` and loading is ``snapshot_download``
followed by loading the local directory.

Decisions:

* A string is a Hub id only when it is not an existing local path and reads
  ``owner/name`` (optionally ``owner/name@revision``); anything else is a
  local path, and a missing one is a ``FileNotFoundError`` naming it.
* Offline must fail fast with a clear message: ``HF_HUB_OFFLINE=1`` is checked
  before any request, a snapshot already in the cache is used without the
  network, and the metadata request gets a short timeout (``etag_timeout``,
  5 s unless ``$VQZOO_HUB_TIMEOUT`` says otherwise).
* ``huggingface_hub`` is imported lazily: nothing else in vqzoo needs it.
* Tests replace :data:`snapshot_download` / :func:`_api` with fakes (the
  network is never used by the suite).

This module imports nothing from vqzoo.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

__all__ = ["HubError", "download", "is_hub_id", "push_to_hub", "resolve"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


class HubError(ValueError):
    """The Hub could not be reached or refused the request, with the reason."""


_FILE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors", ".json", ".yaml", ".yml")


def is_hub_id(value: str | os.PathLike) -> bool:
    """Whether ``value`` names a Hub repository rather than a local path.

    ``owner/name`` that does not exist locally, whose ``owner`` is not a local
    directory either and which does not end like a file (``.ckpt``, ...):
    so a mistyped local path still reads "not found" rather than going online.
    """
    text = os.fspath(value)
    if not _HUB_ID.match(text) or text.startswith((".", "/", "~")) or Path(text).exists():
        return False
    owner = text.split("/", 1)[0]
    return not Path(owner).exists() and not text.split("@", 1)[0].lower().endswith(_FILE_SUFFIXES)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def snapshot_download(repo_id: str, **kwargs: Any) -> str:  # replaced by tests
    from huggingface_hub import snapshot_download as _download

    return _download(repo_id, **kwargs)


def download(repo_id: str, allow_patterns: list[str] | None = None, revision: str | None = None) -> Path:
    """A local snapshot of Hub repository ``repo_id`` (``owner/name[@revision]``).

    Uses the cache first; raises :class:`HubError` with a clear message when
    offline or when the Hub cannot be reached, never hanging on the network.
    """
    if "@" in repo_id and revision is None:
        repo_id, revision = repo_id.split("@", 1)
    try:
        import huggingface_hub  # noqa: F401
    except ImportError as err:
        raise HubError(
            f"{repo_id!r} looks like a Hugging Face Hub id, but huggingface_hub is not installed "
            "(pip install huggingface_hub); pass a local directory instead"
        ) from err
    kwargs: dict[str, Any] = {"allow_patterns": allow_patterns, "revision": revision, "library_name": "vqzoo"}
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, **kwargs))
    except Exception:  # not in the cache (or an incomplete snapshot): go online if allowed
        pass
    if _offline():
        raise HubError(
            f"{repo_id!r} is not a local path, and as a Hugging Face Hub id it cannot be downloaded: "
            "HF_HUB_OFFLINE is set and the repository is not in the local cache. Download it where there "
            f"is network (huggingface-cli download {repo_id}) or pass a local directory"
        )
    timeout = float(os.environ.get("VQZOO_HUB_TIMEOUT", "5"))
    try:
        return Path(snapshot_download(repo_id, etag_timeout=timeout, **kwargs))
    except Exception as err:  # huggingface_hub raises many types; all mean "not available"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HubError(
            f"{repo_id!r} is not a local path, and as a Hugging Face Hub id it cannot be downloaded "
            f"({type(err).__name__}: {first}). "
            "Without network, download it elsewhere and pass the local directory; "
            "set HF_HUB_OFFLINE=1 to fail at once"
        ) from err


def resolve(path_or_id: str | os.PathLike, allow_patterns: list[str] | None = None) -> Path:
    """A local path for ``path_or_id``: the path itself, or a Hub snapshot of the id."""
    if is_hub_id(path_or_id):
        return download(os.fspath(path_or_id), allow_patterns=allow_patterns)
    return Path(path_or_id)


def _api() -> Any:  # replaced by tests
    from huggingface_hub import HfApi

    return HfApi()


def push_to_hub(folder: str | os.PathLike, repo_id: str, private: bool | None = None,
                commit_message: str | None = None) -> str:
    """Create ``repo_id`` (if needed) and upload ``folder`` to it; returns the repository URL."""
    folder = Path(folder)
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} lacks {name}: push an export directory written by `vqzoo export`")
    if not _HUB_ID.match(repo_id) or "@" in repo_id:
        raise HubError(f"expected a Hub repository id like 'user/name', got {repo_id!r}")
    if _offline():
        raise HubError(f"cannot push to {repo_id!r}: HF_HUB_OFFLINE is set")
    api = _api()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id, folder_path=str(folder),
            commit_message=commit_message or f"Upload {folder.name} with vqzoo",
            ignore_patterns=[".*", "**/.*"],
        )
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HubError(f"cannot push {folder} to {repo_id!r} ({type(err).__name__}: {first})") from err
    return str(url)
