"""An in-memory Hugging Face Hub on 127.0.0.1, for tests only: no Hub is reachable here.

It implements only the calls that ``dataset.hub.push_dataset`` makes through huggingface_hub 2.4 (dataset repos,
revision ``main``), answered the way the Hub answers them:

- ``POST /api/repos/create`` (409 with the repo's url when it exists; a new repo holds ``.gitattributes``),
- ``GET /api/datasets/{repo}/tree/main[/{path}]?recursive=&expand=`` (paged with a ``Link: rel="next"`` header),
- ``POST /api/datasets/{repo}/preupload/main`` (upload mode and remote oid per path),
- ``POST /api/validate-yaml`` (a README.md in a commit; accepts any card),
- ``POST /datasets/{repo}.git/info/lfs/objects/batch`` (classic LFS, "basic" transfer only, no Xet),
- ``PUT /_storage/datasets/{repo}/{oid}`` (the storage URL the batch hands out; no auth, like a presigned URL),
- ``POST /datasets/{repo}.git/info/lfs/objects/verify``,
- ``POST /api/datasets/{repo}/commit/main`` (NDJSON: ``header``, ``file``, ``lfsFile``, ``deletedFile``,
  ``deletedFolder``; applied all or nothing).

Anything else is answered 404 and logged as ``unknown``. Every call but the storage PUT must carry
``Authorization: Bearer <token>`` (a fake token), else 401. ``fail_commits`` holds the 1-based numbers of the
commit requests to answer 500 without applying them, to test resuming.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

FAKE_TOKEN = "hf_fake_test_token"
USER = "loopback-user"
GITATTRIBUTES = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n*.arrow filter=lfs diff=lfs merge=lfs -text\n"
LFS_SUFFIXES = (".parquet", ".arrow", ".bin", ".npy", ".npz", ".pt", ".safetensors", ".tar", ".gz", ".zip", ".flac")
REGULAR_MAX = 10 * 1024 * 1024  # the Hub stores larger files in LFS whatever their type

_REPO = r"(?P<repo>[^/]+/[^/]+)"
_ROUTES: list[tuple[str, str, re.Pattern[str]]] = [
    ("POST", "create_repo", re.compile(r"/api/repos/create")),
    ("POST", "validate_yaml", re.compile(r"/api/validate-yaml")),
    ("GET", "tree", re.compile(rf"/api/datasets/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?")),
    ("POST", "preupload", re.compile(rf"/api/datasets/{_REPO}/preupload/(?P<rev>[^/]+)")),
    ("POST", "commit", re.compile(rf"/api/datasets/{_REPO}/commit/(?P<rev>[^/]+)")),
    ("POST", "lfs_batch", re.compile(rf"/datasets/{_REPO}\.git/info/lfs/objects/batch")),
    ("POST", "lfs_verify", re.compile(rf"/datasets/{_REPO}\.git/info/lfs/objects/verify")),
    ("PUT", "storage_put", re.compile(rf"/_storage/datasets/{_REPO}/(?P<oid>[0-9a-f]{{64}})")),
]


def _route(method: str, path: str) -> tuple[str, dict[str, str]] | None:
    """The route serving ``method path`` and its path arguments, or None."""
    for route_method, name, pattern in _ROUTES:
        match = pattern.fullmatch(path)
        if match and route_method == method:
            return name, {k: v for k, v in match.groupdict().items() if v is not None}
    return None


def git_blob_id(content: bytes) -> str:
    """The git object id of a blob: sha1 of ``b"blob <size>\\0" + content``."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file that git stores in place of an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class _Blob:
    content: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    def tree_entry(self, path: str) -> dict[str, Any]:
        """The entry ``GET .../tree`` lists for this file (git oid of the pointer for LFS files, as git has it)."""
        if not self.lfs:
            return {"type": "file", "oid": git_blob_id(self.content), "size": len(self.content), "path": path}
        pointer = lfs_pointer(self.sha256, len(self.content))
        lfs = {"oid": self.sha256, "size": len(self.content), "pointerSize": len(pointer)}
        return {"type": "file", "oid": git_blob_id(pointer), "size": len(self.content), "path": path, "lfs": lfs}

    def preupload_oid(self) -> str:
        """The oid ``preupload`` reports: sha256 for LFS files, git blob id for regular ones (what the client compares)."""
        return self.sha256 if self.lfs else git_blob_id(self.content)


@dataclass
class _Repo:
    private: bool
    files: dict[str, _Blob] = field(default_factory=dict)
    lfs_store: dict[str, bytes] = field(default_factory=dict)
    head: str = "0" * 40


class _HttpError(Exception):
    def __init__(self, status: int, message: str, error_code: str | None = None):
        super().__init__(message)
        self.status = status
        self.error_code = error_code


class LoopbackHub:
    """``with LoopbackHub() as hub: push_dataset(..., endpoint=hub.endpoint, token=FAKE_TOKEN)``; then ``hub.files``.

    Records, for assertions: ``requests`` ((method, route) per request, ``unknown:<path>`` for routes it lacks),
    ``commits`` (one dict per applied commit: ``summary``, ``added``, ``deleted``), ``uploads`` (paths added by
    applied commits, in order), ``lfs_puts`` (oids whose bytes reached storage), ``lfs_transfers`` (the transfers the
    client offered per LFS batch), ``unauthorized`` (calls without the right bearer token) and
    ``storage_auth_headers`` (storage PUTs that carried an Authorization header, which a presigned URL never needs).
    """

    def __init__(self, token: str = FAKE_TOKEN, *, fail_commits: set[int] | None = None, tree_page_size: int = 1000):
        self.token = token
        self.fail_commits: set[int] = set(fail_commits or ())
        self.tree_page_size = tree_page_size
        self.requests: list[tuple[str, str]] = []
        self.commits: list[dict[str, Any]] = []
        self.uploads: list[str] = []
        self.lfs_puts: list[str] = []
        self.lfs_transfers: list[list[str]] = []
        self.unauthorized = 0
        self.storage_auth_headers = 0
        self.commit_requests = 0
        self._repos: dict[str, _Repo] = {}
        self._lock = threading.RLock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="loopback-hub", daemon=True
        )

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> LoopbackHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def files(self, repo_id: str) -> dict[str, bytes]:
        """Path -> content of every file at the head of ``repo_id`` (a copy)."""
        with self._lock:
            return {path: blob.content for path, blob in self._repo(repo_id).files.items()}

    def lfs_paths(self, repo_id: str) -> set[str]:
        """The paths stored through LFS (the others are regular git blobs)."""
        with self._lock:
            return {path for path, blob in self._repo(repo_id).files.items() if blob.lfs}

    def is_private(self, repo_id: str) -> bool:
        with self._lock:
            return self._repo(repo_id).private

    def route_counts(self) -> dict[str, int]:
        """How many requests each route served."""
        counts: dict[str, int] = {}
        for _, route in self.requests:
            counts[route] = counts.get(route, 0) + 1
        return counts

    # --- request handling (called from the server's threads) ---

    def _repo(self, repo_id: str) -> _Repo:
        repo = self._repos.get(repo_id)
        if repo is None:
            raise _HttpError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def handle(self, method: str, url: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], Any]:
        """Answer one request: (status, extra headers, JSON-able body)."""
        parts = urlsplit(url)
        path = unquote(parts.path)
        found = _route(method, path)
        if found is None:
            with self._lock:
                self.requests.append((method, f"unknown:{path}"))
            return 404, {}, {"error": f"loopback hub does not implement {method} {path}"}
        name, args = found
        with self._lock:
            self.requests.append((method, name))
            if name == "storage_put":
                self.storage_auth_headers += "authorization" in headers
            elif headers.get("authorization") != f"Bearer {self.token}":
                self.unauthorized += 1
                return 401, {}, {"error": "Invalid credentials in Authorization header"}
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        try:
            return getattr(self, f"_{name}")(args, query, body)
        except _HttpError as err:
            extra = {"X-Error-Code": err.error_code} if err.error_code else {}
            return err.status, extra, {"error": str(err)}

    @staticmethod
    def _check_rev(args: dict[str, str]) -> None:
        if args.get("rev", "main") != "main":
            raise _HttpError(404, f"Revision {args['rev']} not found", "RevisionNotFound")

    def _create_repo(self, args: dict[str, str], query: dict[str, str], body: bytes) -> tuple[int, dict[str, str], Any]:
        payload = json.loads(body)
        if payload.get("type") != "dataset":
            raise _HttpError(400, "loopback hub only holds dataset repos")
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        answer = {"url": f"{self.endpoint}/datasets/{repo_id}", "name": repo_id, "id": repo_id}
        with self._lock:
            if repo_id in self._repos:
                return 409, {}, {**answer, "error": "You already created this dataset repo"}
            repo = _Repo(private=payload.get("visibility") == "private")
            repo.files[".gitattributes"] = _Blob(GITATTRIBUTES, lfs=False)
            self._repos[repo_id] = repo
        return 200, {}, answer

    def _validate_yaml(
        self, args: dict[str, str], query: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], Any]:
        json.loads(body)
        return 200, {}, {"errors": [], "warnings": []}

    def _tree(self, args: dict[str, str], query: dict[str, str], body: bytes) -> tuple[int, dict[str, str], Any]:
        self._check_rev(args)
        recursive = query.get("recursive", "false").lower() == "true"
        base = args.get("path", "").strip("/")
        prefix = f"{base}/" if base else ""
        with self._lock:
            files = {p: b.tree_entry(p) for p, b in self._repo(args["repo"]).files.items() if p.startswith(prefix)}
        entries: dict[str, dict[str, Any]] = {}
        for path, entry in sorted(files.items()):
            rest = path[len(prefix) :].split("/")
            for depth in range(1, len(rest)):
                folder = prefix + "/".join(rest[:depth])
                if depth == 1 or recursive:
                    folder_oid = git_blob_id(folder.encode())
                    entries.setdefault(folder, {"type": "directory", "oid": folder_oid, "size": 0, "path": folder})
            if len(rest) == 1 or recursive:
                entries[path] = entry
        listing = [entries[p] for p in sorted(entries)]
        start = int(query.get("cursor", "0"))
        page = listing[start : start + self.tree_page_size]
        extra: dict[str, str] = {}
        if start + self.tree_page_size < len(listing):
            kept = "&".join(f"{k}={quote(v)}" for k, v in query.items() if k != "cursor")
            url = f"{self.endpoint}/api/datasets/{args['repo']}/tree/main/{base}".rstrip("/")
            extra["Link"] = f'<{url}?{kept}&cursor={start + self.tree_page_size}>; rel="next"'
        return 200, extra, page

    def _preupload(self, args: dict[str, str], query: dict[str, str], body: bytes) -> tuple[int, dict[str, str], Any]:
        self._check_rev(args)
        answers = []
        with self._lock:
            repo = self._repo(args["repo"])
            for item in json.loads(body)["files"]:
                path, size = item["path"], int(item["size"])
                sample = base64.b64decode(item["sample"])
                lfs = path.endswith(LFS_SUFFIXES) or b"\0" in sample or size > REGULAR_MAX
                existing = repo.files.get(path)
                answers.append(
                    {
                        "path": path,
                        "uploadMode": "lfs" if lfs else "regular",
                        "shouldIgnore": False,
                        "oid": existing.preupload_oid() if existing else None,
                    }
                )
        return 200, {}, {"files": answers, "commitOid": repo.head}

    def _lfs_batch(self, args: dict[str, str], query: dict[str, str], body: bytes) -> tuple[int, dict[str, str], Any]:
        payload = json.loads(body)
        transfers = list(payload.get("transfers") or ["basic"])
        if payload.get("operation") != "upload" or "basic" not in transfers:
            raise _HttpError(422, "loopback hub offers the 'basic' LFS upload transfer only")
        repo_id = args["repo"]
        objects = []
        with self._lock:
            self.lfs_transfers.append(transfers)
            repo = self._repo(repo_id)
            for obj in payload["objects"]:
                oid, size = obj["oid"], int(obj["size"])
                answer: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
                if oid not in repo.lfs_store:
                    answer["actions"] = {
                        "upload": {"href": f"{self.endpoint}/_storage/datasets/{repo_id}/{oid}", "header": {}},
                        "verify": {"href": f"{self.endpoint}/datasets/{repo_id}.git/info/lfs/objects/verify"},
                    }
                objects.append(answer)
        return 200, {"Content-Type": "application/vnd.git-lfs+json"}, {"transfer": "basic", "objects": objects}

    def _storage_put(self, args: dict[str, str], query: dict[str, str], body: bytes) -> tuple[int, dict[str, str], Any]:
        oid = args["oid"]
        if hashlib.sha256(body).hexdigest() != oid:
            raise _HttpError(400, "content does not match the oid in the upload URL")
        with self._lock:
            self._repo(args["repo"]).lfs_store[oid] = body
            self.lfs_puts.append(oid)
        return 200, {}, {}

    def _lfs_verify(self, args: dict[str, str], query: dict[str, str], body: bytes) -> tuple[int, dict[str, str], Any]:
        payload = json.loads(body)
        with self._lock:
            stored = self._repo(args["repo"]).lfs_store.get(payload["oid"])
        if stored is None or len(stored) != int(payload["size"]):
            raise _HttpError(404, f"LFS object {payload['oid']} not found")
        return 200, {}, {}

    def _commit(self, args: dict[str, str], query: dict[str, str], body: bytes) -> tuple[int, dict[str, str], Any]:
        self._check_rev(args)
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise _HttpError(400, "commit payload must start with a header line")
        with self._lock:
            self.commit_requests += 1
            if self.commit_requests in self.fail_commits:
                raise _HttpError(500, f"injected failure of commit request {self.commit_requests}")
            repo = self._repo(args["repo"])
            files = dict(repo.files)
            added: list[str] = []
            deleted: list[str] = []
            for line in lines[1:]:
                key, value = line["key"], line["value"]
                path = value["path"]
                if key == "file":
                    files[path] = _Blob(base64.b64decode(value["content"]), lfs=False)
                    added.append(path)
                elif key == "lfsFile":
                    content = repo.lfs_store.get(value["oid"])
                    if content is None:
                        raise _HttpError(422, f"LFS object {value['oid']} for {path} was never uploaded")
                    files[path] = _Blob(content, lfs=True)
                    added.append(path)
                elif key == "deletedFile":
                    if files.pop(path, None) is None:
                        raise _HttpError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    deleted.append(path)
                elif key == "deletedFolder":
                    gone = [p for p in files if p.startswith(path.rstrip("/") + "/")]
                    if not gone:
                        raise _HttpError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                    for p in gone:
                        del files[p]
                    deleted.extend(gone)
                else:
                    raise _HttpError(400, f"unknown commit line key {key!r}")
            repo.files = files
            repo.head = hashlib.sha1(repo.head.encode() + body).hexdigest()
            self.commits.append({"summary": lines[0]["value"].get("summary", ""), "added": added, "deleted": deleted})
            self.uploads.extend(added)
            commit_url = f"{self.endpoint}/datasets/{args['repo']}/commit/{repo.head}"
        return 200, {}, {"success": True, "commitOid": repo.head, "commitUrl": commit_url, "hookOutput": ""}


def _handler_class(hub: LoopbackHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall per request

        def log_message(self, format: str, *args: Any) -> None:  # no line per request on stderr
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks: list[bytes] = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    chunk = self.rfile.read(size)
                    self.rfile.readline()
                    if size == 0:
                        return b"".join(chunks)
                    chunks.append(chunk)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _serve(self) -> None:
            body = self._body()
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, extra, payload = hub.handle(self.command, self.path, headers, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", extra.pop("Content-Type", "application/json"))
            for key, value in extra.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

    return Handler
