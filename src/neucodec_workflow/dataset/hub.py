"""Push a dataset's files to a Hugging Face Hub dataset repo, resumably.

Only files whose content differs from the repo's are sent, in commits of bounded size, each batch read only when it is
committed; every commit is a checkpoint, so a rerun after a failure sends only what is still missing. Remote files
under ``prune_prefix`` that the dataset no longer lists are deleted, and ``README.md`` goes in the last commit, so
the card never describes data that is not there yet.

Uploads use the classic LFS protocol: huggingface_hub 2.4 sends file paths and bytes through Xet whenever ``hf_xet``
is installed, without asking the server, but falls back to the LFS batch API for file objects, so each file is handed
over as a ``BytesIO`` (huggingface_hub then warns once per commit that it falls back to HTTP upload: expected).
The Hub accepts both; LFS also works with servers that offer no Xet (the tests' loopback Hub).
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, RepoFile

log = logging.getLogger(__name__)

README = "README.md"


@dataclass(frozen=True)
class HubFile:
    """One file of the dataset: its path in the repo, where ``read`` finds it, its content's hex sha256 and size."""

    path_in_repo: str
    source: str
    sha256: str
    size: int


def git_blob_id(content: bytes) -> str:
    """The id git gives a regular (non-LFS) file: sha1 of ``b"blob <size>\\0" + content``."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _unchanged(file: HubFile, remote: RepoFile | None, read: Callable[[str], bytes]) -> bool:
    """Whether the repo already holds ``file``: same LFS sha256, or for a regular remote file the same git blob id
    (which needs the content, so a small file of the same size is read)."""
    if remote is None:
        return False
    if remote.lfs is not None:
        return remote.lfs.sha256 == file.sha256.lower() and remote.lfs.size == file.size
    return remote.size == file.size and git_blob_id(read(file.source)) == remote.blob_id


def _batches(items: list[HubFile | str], batch_files: int, batch_bytes: int) -> list[list[HubFile | str]]:
    """Split in order into batches of at most ``batch_files`` items and ``batch_bytes`` bytes (a larger file alone);
    a ``str`` is a path to delete and weighs nothing."""
    batches: list[list[HubFile | str]] = []
    current: list[HubFile | str] = []
    current_bytes = 0
    for item in items:
        size = item.size if isinstance(item, HubFile) else 0
        if current and (len(current) >= batch_files or current_bytes + size > batch_bytes):
            batches.append(current)
            current, current_bytes = [], 0
        current.append(item)
        current_bytes += size
    if current:
        batches.append(current)
    return batches


def _addition(file: HubFile, read: Callable[[str], bytes]) -> CommitOperationAdd:
    """Read ``file`` and check it against its index entry (a mismatch would be re-sent on every push)."""
    op = CommitOperationAdd(path_in_repo=file.path_in_repo, path_or_fileobj=io.BytesIO(read(file.source)))
    if op.upload_info.size != file.size or op.upload_info.sha256.hex() != file.sha256.lower():
        raise ValueError(f"{file.source}: content does not match its size/sha256 in the index ({file.path_in_repo})")
    return op


def _check(files: list[HubFile], prune_prefix: str | None, batch_files: int, batch_bytes: int) -> None:
    if batch_files < 1 or batch_bytes < 1:
        raise ValueError("batch_files and batch_bytes must be positive")
    if prune_prefix == "":
        raise ValueError("prune_prefix='' would delete every unlisted file (.gitattributes too); use None for none")
    seen: set[str] = set()
    for file in files:
        path = file.path_in_repo
        if not path or path.startswith(("/", "./")) or ".." in path.split("/") or path.endswith("/"):
            raise ValueError(f"not a plain relative path in the repo: {path!r}")
        if path in seen:
            raise ValueError(f"listed twice: {path}")
        seen.add(path)


def push_dataset(
    repo_id: str,
    files: list[HubFile],
    read: Callable[[str], bytes],
    *,
    prune_prefix: str | None = "data/",
    batch_files: int = 100,
    batch_bytes: int = 1 << 30,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
) -> dict[str, Any]:
    """Make dataset repo ``repo_id`` hold ``files`` (created if missing, ``private`` only then), sending only changes.

    Changed or new files go in commits of at most ``batch_files`` files and about ``batch_bytes`` bytes, each batch
    read with ``read(source)`` just before its commit; remote files under ``prune_prefix`` (``None``: none) that are
    not in ``files`` are deleted after the data, and ``README.md`` comes last. A failed commit raises; the commits
    before it stay, and a rerun skips them. ``token`` defaults to huggingface_hub's own (``HF_TOKEN`` or the saved
    login), ``endpoint`` to ``HF_ENDPOINT`` or huggingface.co.

    Returns ``{"repo_id", "commits", "uploaded", "uploaded_bytes", "unchanged", "deleted"}`` (counts of files).
    """
    _check(files, prune_prefix, batch_files, batch_bytes)
    api = HfApi(endpoint=endpoint, token=token)
    repo_id = api.create_repo(repo_id, repo_type="dataset", exist_ok=True, private=private).repo_id
    remote = {
        entry.path: entry
        for entry in api.list_repo_tree(repo_id, repo_type="dataset", recursive=True)
        if isinstance(entry, RepoFile)
    }
    wanted = {file.path_in_repo for file in files}
    to_send = [file for file in files if not _unchanged(file, remote.get(file.path_in_repo), read)]
    stale = sorted(p for p in remote if prune_prefix is not None and p.startswith(prune_prefix) and p not in wanted)
    data = [file for file in to_send if file.path_in_repo != README]
    card = [file for file in to_send if file.path_in_repo == README]
    batches = _batches([*data, *stale, *card], batch_files, batch_bytes)
    log.info(
        "%s: %d file(s) to send, %d unchanged, %d to delete, in %d commit(s)",
        repo_id,
        len(to_send),
        len(files) - len(to_send),
        len(stale),
        len(batches),
    )
    for number, batch in enumerate(batches, start=1):
        added = [item for item in batch if isinstance(item, HubFile)]
        deleted = [item for item in batch if isinstance(item, str)]
        operations: list[CommitOperationAdd | CommitOperationDelete] = [_addition(file, read) for file in added]
        operations += [CommitOperationDelete(path_in_repo=path, is_folder=False) for path in deleted]
        message = f"Push dataset ({number}/{len(batches)}): {len(added)} file(s) added, {len(deleted)} deleted"
        api.create_commit(repo_id, operations, commit_message=message, repo_type="dataset")
        log.info("%s: committed %d/%d (%d bytes)", repo_id, number, len(batches), sum(f.size for f in added))
        del operations
    return {
        "repo_id": repo_id,
        "commits": len(batches),
        "uploaded": len(to_send),
        "uploaded_bytes": sum(file.size for file in to_send),
        "unchanged": len(files) - len(to_send),
        "deleted": len(stale),
    }
