"""push_dataset against the loopback Hub (127.0.0.1): batching, skipping unchanged files, pruning, resuming, token."""

from __future__ import annotations

import hashlib
import logging
import math
import random
from pathlib import Path

import huggingface_hub.constants
import pytest
from huggingface_hub.errors import HfHubHTTPError
from support.loopback_hub import FAKE_TOKEN, LoopbackHub

from neucodec_workflow.dataset.hub import HubFile, push_dataset

# huggingface_hub's own LFS PUT passes a file object as `data=`, which its HTTP client deprecates
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

REPO = "loopback-user/speech-sft"
CARD = b"---\nlicense: apache-2.0\nconfigs:\n- config_name: default\n  data_files: data/*/*/*.parquet\n---\n# SFT\n"


@pytest.fixture(autouse=True)
def _loopback_allowed(monkeypatch):
    """The suite runs offline (HF_HUB_OFFLINE, read once at import); these tests reach only 127.0.0.1."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)


@pytest.fixture
def hub():
    with LoopbackHub(tree_page_size=4) as server:  # small pages: the listing must follow them
        yield server


class Reader:
    """``read`` for push_dataset that records each read and how many commits the server had applied by then."""

    def __init__(self, hub: LoopbackHub):
        self.hub = hub
        self.reads: list[tuple[str, int]] = []

    def __call__(self, source: str) -> bytes:
        self.reads.append((Path(source).name, len(self.hub.commits)))
        return Path(source).read_bytes()


def parquet_like(seed: int, size: int = 1500) -> bytes:
    return b"PAR1" + random.Random(seed).randbytes(size) + b"\0PAR1"


def write_dataset(root: Path, blobs: dict[str, bytes]) -> list[HubFile]:
    """Write ``blobs`` under ``root`` and index them as HubFiles, in the order given."""
    files = []
    for path, content in blobs.items():
        local = root / path.replace("/", "__")
        local.write_bytes(content)
        files.append(HubFile(path, str(local), hashlib.sha256(content).hexdigest(), len(content)))
    return files


def dataset(root: Path, n: int = 7) -> dict[str, bytes]:
    blobs = {"README.md": CARD}  # listed first: push_dataset must still commit it last
    blobs |= {f"data/{'train' if i < 5 else 'validation'}/en/shard-{i}.parquet": parquet_like(i) for i in range(n)}
    return blobs


def push(hub: LoopbackHub, files: list[HubFile], reader: Reader, **kwargs):
    return push_dataset(REPO, files, reader, token=FAKE_TOKEN, endpoint=hub.endpoint, **kwargs)


def held(hub: LoopbackHub) -> dict[str, bytes]:
    return {p: c for p, c in hub.files(REPO).items() if p != ".gitattributes"}


def test_first_push_uploads_everything_in_batches_card_last(tmp_path, hub):
    blobs = dataset(tmp_path)
    reader = Reader(hub)
    summary = push(hub, write_dataset(tmp_path, blobs), reader, batch_files=3)

    n = len(blobs)
    assert summary == {
        "repo_id": REPO,
        "commits": math.ceil(n / 3),
        "uploaded": n,
        "uploaded_bytes": sum(map(len, blobs.values())),
        "unchanged": 0,
        "deleted": 0,
    }
    assert held(hub) == blobs
    assert hub.files(REPO)[".gitattributes"]  # what the new repo came with is kept
    assert [len(c["added"]) for c in hub.commits] == [3, 3, 2]
    assert sorted(hub.uploads) == sorted(blobs)  # each file sent once
    assert hub.commits[-1]["added"][-1] == "README.md"
    assert "README.md" not in hub.commits[0]["added"] + hub.commits[1]["added"]
    assert hub.lfs_paths(REPO) == {p for p in blobs if p.endswith(".parquet")}  # README went as a regular file
    assert len(hub.lfs_puts) == n - 1
    # each batch is read just before its own commit, every file once
    assert [k for _, k in reader.reads] == [0, 0, 0, 1, 1, 1, 2, 2]
    assert sorted(name for name, _ in reader.reads) == sorted(p.replace("/", "__") for p in blobs)
    # classic LFS only: no Xet token request, no route the loopback lacks, token sent everywhere it belongs
    assert all("basic" in offered for offered in hub.lfs_transfers)
    assert not [route for _, route in hub.requests if route.startswith("unknown")]
    assert hub.unauthorized == 0 and hub.storage_auth_headers == 0
    assert not hub.is_private(REPO)


def test_second_push_sends_nothing(tmp_path, hub):
    files = write_dataset(tmp_path, dataset(tmp_path))
    push(hub, files, Reader(hub), batch_files=3)
    commits, puts, requests = len(hub.commits), len(hub.lfs_puts), len(hub.requests)

    reader = Reader(hub)
    summary = push(hub, files, reader, batch_files=3)

    assert summary == {
        "repo_id": REPO,
        "commits": 0,
        "uploaded": 0,
        "uploaded_bytes": 0,
        "unchanged": len(files),
        "deleted": 0,
    }
    assert len(hub.commits) == commits and len(hub.lfs_puts) == puts
    again = [route for _, route in hub.requests[requests:]]
    assert set(again) == {"create_repo", "tree"} and again.count("tree") > 1  # 9 entries + folders, pages of 4
    assert [name for name, _ in reader.reads] == ["README.md"]  # a regular file is compared by its git blob id


@pytest.mark.parametrize("changed", ["data/train/en/shard-3.parquet", "README.md"])
def test_changing_one_file_uploads_exactly_that_file(tmp_path, hub, changed):
    blobs = dataset(tmp_path)
    push(hub, write_dataset(tmp_path, blobs), Reader(hub), batch_files=3)
    commits, puts = len(hub.commits), len(hub.lfs_puts)

    blobs[changed] = blobs[changed][:-1] + b"!"  # same size: only the hash can tell
    summary = push(hub, write_dataset(tmp_path, blobs), Reader(hub), batch_files=3)

    assert (summary["commits"], summary["uploaded"], summary["unchanged"]) == (1, 1, len(blobs) - 1)
    assert summary["uploaded_bytes"] == len(blobs[changed])
    assert hub.commits[commits:] == [{"summary": hub.commits[-1]["summary"], "added": [changed], "deleted": []}]
    assert held(hub) == blobs
    assert len(hub.lfs_puts) - puts == (changed != "README.md")


def test_removed_file_is_deleted_only_under_prune_prefix(tmp_path, hub):
    blobs = dataset(tmp_path) | {"extra/notes.txt": b"kept: outside data/\n"}
    push(hub, write_dataset(tmp_path, blobs), Reader(hub), batch_files=3)

    gone = "data/validation/en/shard-6.parquet"
    del blobs[gone]
    blobs.pop("extra/notes.txt")
    files = write_dataset(tmp_path, blobs)
    assert push(hub, files, Reader(hub), prune_prefix=None)["deleted"] == 0  # pruning off: nothing deleted
    assert gone in hub.files(REPO)

    summary = push(hub, files, Reader(hub))

    assert (summary["deleted"], summary["commits"], summary["uploaded"]) == (1, 1, 0)
    assert hub.commits[-1]["deleted"] == [gone] and hub.commits[-1]["added"] == []
    assert held(hub) == blobs | {"extra/notes.txt": b"kept: outside data/\n"}
    assert ".gitattributes" in hub.files(REPO)


def test_failed_commit_raises_and_rerun_sends_only_what_is_missing(tmp_path, hub):
    blobs = dataset(tmp_path)  # 7 parts + card, batches of 3: [0 1 2] [3 4 5] [6 README]
    files = write_dataset(tmp_path, blobs)
    hub.fail_commits = {2}

    with pytest.raises(HfHubHTTPError, match="injected failure"):
        push(hub, files, Reader(hub), batch_files=3)

    first = [f"data/train/en/shard-{i}.parquet" for i in range(3)]
    assert sorted(held(hub)) == sorted(first)  # the first commit is a checkpoint; the card did not go ahead
    assert len(hub.lfs_puts) == 6  # batch 2's parts reached storage before its commit failed

    summary = push(hub, files, Reader(hub), batch_files=3)

    assert (summary["uploaded"], summary["unchanged"], summary["commits"]) == (len(blobs) - 3, 3, 2)
    assert sorted(p for c in hub.commits[1:] for p in c["added"]) == sorted(set(blobs) - set(first))
    assert held(hub) == blobs
    assert len(hub.lfs_puts) == 7  # storage already had batch 2's objects: only shard-6 travelled again


def test_batch_bytes_bounds_each_commit(tmp_path, hub):
    blobs = {f"data/train/en/shard-{i}.parquet": parquet_like(i, 1000) for i in range(5)}
    blobs["data/train/en/big.parquet"] = parquet_like(99, 5000)  # larger than a batch: committed alone
    summary = push(hub, write_dataset(tmp_path, blobs), Reader(hub), batch_bytes=2100)

    assert [len(c["added"]) for c in hub.commits] == [2, 2, 1, 1]
    assert summary["commits"] == 4 and held(hub) == blobs


def test_content_not_matching_the_index_is_refused(tmp_path, hub):
    blobs = dataset(tmp_path, n=2)
    files = write_dataset(tmp_path, blobs)
    Path(files[1].source).write_bytes(b"PAR1 rewritten after indexing PAR1")

    with pytest.raises(ValueError, match="does not match"):
        push(hub, files, Reader(hub))
    assert hub.commits == []


def test_token_from_environment_is_sent_and_never_returned_or_logged(tmp_path, hub, monkeypatch, caplog):
    files = write_dataset(tmp_path, dataset(tmp_path, n=2))
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)

    summary = push_dataset(REPO, files, Reader(hub), endpoint=hub.endpoint, private=True)

    assert summary["uploaded"] == 3 and hub.unauthorized == 0 and hub.is_private(REPO)
    assert FAKE_TOKEN not in repr(summary) and FAKE_TOKEN not in caplog.text


def test_wrong_token_is_refused(tmp_path, hub):
    files = write_dataset(tmp_path, dataset(tmp_path, n=1))
    with pytest.raises(HfHubHTTPError):
        push_dataset(REPO, files, Reader(hub), token="hf_wrong_token", endpoint=hub.endpoint)
    assert hub.unauthorized >= 1 and hub.commits == []
