"""A small fake of the Hugging Face Hub for tests, built on the standard library only.

It speaks enough of the Hub HTTP API for real round trips through ``huggingface_hub`` (read from
the sources of huggingface_hub 2.4), with ``HF_ENDPOINT`` pointing at it and Xet disabled:

* ``POST /api/repos/create``, ``POST /api/repos/delete``, ``PUT /api/{type}s/{repo}/settings``;
* ``GET /api/whoami-v2``, ``POST /api/validate-yaml``;
* ``GET /api/{type}s/{repo}[/revision/{rev}]`` (``repo_info`` / ``model_info`` / ``dataset_info``);
* ``GET /api/{type}s/{repo}/tree/{rev}[/{path}]``, ``POST /api/{type}s/{repo}/paths-info/{rev}``,
  ``GET /api/{type}s/{repo}/refs``, ``GET /api/{type}s/{repo}/commits/{rev}``,
  ``POST|DELETE /api/{type}s/{repo}/branch/{name}``, ``POST /api/{type}s/{repo}/tag/{rev}``;
* ``POST /api/{type}s/{repo}/preupload/{rev}`` (answers ``regular`` or ``lfs``);
* ``POST /{prefix}{repo}.git/info/lfs/objects/batch`` and ``PUT /_lfs/{oid}`` (basic transfer);
* ``POST /api/{type}s/{repo}/commit/{rev}`` (the NDJSON commit);
* ``HEAD|GET /{prefix}{repo}/resolve/{rev}/{path}`` with the headers the client checks (``ETag``,
  ``X-Repo-Commit``, ``Content-Length``, ``X-Linked-Etag`` / ``X-Linked-Size`` for LFS files) and
  byte ranges.

Repositories live on disk under ``root``: every stored blob in ``root/objects/<sha256>``, the
current files of each branch ``main`` checked out under ``root/<type>s/<namespace>/<name>/``
(so a test can read what was pushed), and the commit history in ``root/state.json``.

Every request is logged (method, path, Authorization header) in :attr:`HubServer.requests`,
so tests can assert that a token was sent.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import re
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

#: User that owns repositories created without a namespace, and that ``whoami`` returns.
DEFAULT_USER = "tester"
#: Files above this size are stored with LFS (the Hub's limit for regular git blobs is 10 MB).
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
#: Suffixes stored with LFS whatever their size (as the Hub's default ``.gitattributes``).
LFS_SUFFIXES = (
    ".parquet",
    ".arrow",
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".npy",
    ".npz",
    ".zip",
    ".gz",
    ".png",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
    ".pkl",
    ".msgpack",
    ".h5",
    ".onnx",
)
DEFAULT_GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES)
REPO_TYPES = ("model", "dataset", "space")
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


class HubError(Exception):
    """An HTTP error answered to the client, with the Hub's ``X-Error-Code`` header."""

    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.commit = commit


def git_blob_oid(content: bytes) -> str:
    """Git object id (sha1 of ``"blob <size>\\0" + content``) of a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file that git stores in place of an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass
class LoggedRequest:
    """One request seen by the server."""

    method: str
    path: str
    authorization: str | None
    status: int = 0


@dataclass
class Repo:
    """A repository: its refs (branch or tag -> commit id) and its commits.

    A commit is ``{"id", "title", "message", "date", "parents", "files"}`` where ``files`` maps
    each path to ``{"size", "sha256", "oid", "lfs"}`` (``oid``: the git blob id; ``lfs``: bool).
    """

    repo_type: str
    repo_id: str
    private: bool = False
    created_at: str = field(default_factory=_now)
    refs: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, Any]] = field(default_factory=dict)
    next_pr: int = 1


class HubServer:
    """A fake Hub on ``127.0.0.1`` (random free port), serving from a background thread.

    Args:
        root: folder holding the stored repositories.
        token: the token the server accepts for writes (and private reads).

    Attributes:
        endpoint: base URL, e.g. ``http://127.0.0.1:54321``.
        requests: every request seen, in order (:class:`LoggedRequest`).
    """

    def __init__(self, root: str | Path, token: str = "hf_test_token_0123456789"):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "objects").mkdir(exist_ok=True)
        self.token = token
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[LoggedRequest] = []
        self._lock = threading.RLock()
        handler = type("_BoundHandler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-hub", daemon=True)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> HubServer:
        """Start serving in a daemon thread; returns self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers for tests
    def authorizations(self) -> set[str]:
        """Distinct ``Authorization`` header values seen so far (``None`` excluded)."""
        return {r.authorization for r in self.requests if r.authorization}

    def repo_dir(self, repo_id: str, repo_type: str = "model") -> Path:
        """Folder where the files of branch ``main`` of a repository are checked out."""
        return self.root / f"{repo_type}s" / repo_id

    def file_bytes(self, repo_id: str, path: str, repo_type: str = "model", revision: str = "main") -> bytes:
        """Content of a file of a repository at a revision (raises KeyError if absent)."""
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            commit = self._resolve(repo, revision)
            return self._read_object(repo.commits[commit]["files"][path]["sha256"])

    # ------------------------------------------------------------------ storage
    def _object_path(self, sha256: str) -> Path:
        return self.root / "objects" / sha256

    def _store_object(self, content: bytes) -> str:
        sha = hashlib.sha256(content).hexdigest()
        path = self._object_path(sha)
        if not path.exists():
            tmp = path.with_suffix(f".tmp{uuid.uuid4().hex}")
            tmp.write_bytes(content)
            tmp.replace(path)
        return sha

    def _read_object(self, sha256: str) -> bytes:
        return self._object_path(sha256).read_bytes()

    def _save_state(self) -> None:
        state = {
            f"{t}s/{rid}": {
                "private": r.private,
                "refs": r.refs,
                "tags": r.tags,
                "commits": r.commits,
            }
            for (t, rid), r in self.repos.items()
        }
        (self.root / "state.json").write_text(json.dumps(state, indent=1))

    def _checkout(self, repo: Repo) -> None:
        """Mirror branch ``main`` of ``repo`` as plain files under :meth:`repo_dir`."""
        target = self.repo_dir(repo.repo_id, repo.repo_type)
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        head = repo.refs.get("main")
        for path, entry in repo.commits[head]["files"].items() if head else ():
            dest = target / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(self._read_object(entry["sha256"]))

    # ------------------------------------------------------------------ repository model
    def _get_repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, f"Repository {repo_type}s/{repo_id} not found", "RepoNotFound")
        return repo

    def _resolve(self, repo: Repo, revision: str) -> str:
        revision = unquote(revision)
        if revision in repo.refs:
            return repo.refs[revision]
        if revision in repo.tags:
            return repo.tags[revision]
        if revision in repo.commits:
            return revision
        matches = [c for c in repo.commits if len(revision) >= 7 and c.startswith(revision)]
        if len(matches) == 1:
            return matches[0]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _new_commit(
        self, repo: Repo, files: dict[str, dict[str, Any]], title: str, message: str, parents: list[str]
    ) -> str:
        seed = json.dumps([files, title, message, parents, uuid.uuid4().hex], sort_keys=True).encode()
        oid = hashlib.sha1(seed).hexdigest()
        repo.commits[oid] = {
            "id": oid,
            "title": title,
            "message": message,
            "date": _now(),
            "parents": parents,
            "files": files,
        }
        return oid

    def _file_entry(self, content: bytes, lfs: bool) -> dict[str, Any]:
        sha = self._store_object(content)
        oid = git_blob_oid(lfs_pointer(sha, len(content)) if lfs else content)
        return {"size": len(content), "sha256": sha, "oid": oid, "lfs": lfs}

    def create_repo(self, repo_type: str, repo_id: str, private: bool = False) -> Repo:
        """Create a repository with one initial commit holding ``.gitattributes``."""
        repo = Repo(repo_type=repo_type, repo_id=repo_id, private=private)
        files = {".gitattributes": self._file_entry(DEFAULT_GITATTRIBUTES.encode(), lfs=False)}
        repo.refs["main"] = self._new_commit(repo, files, "initial commit", "", [])
        self.repos[(repo_type, repo_id)] = repo
        self._checkout(repo)
        self._save_state()
        return repo


# ------------------------------------------------------------------------------------------
# The HTTP handler
# ------------------------------------------------------------------------------------------

_API_REPO = re.compile(r"^/api/(models|datasets|spaces)/([^/]+/[^/]+)(?:/(.*))?$")
_RESOLVE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_LFS_BATCH = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+?)\.git/info/lfs/objects/batch$")


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer  # set on the bound subclass
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr logging
        pass

    # ------------------------------------------------------------------ plumbing
    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        head_only: bool = False,
        content_length: int | None = None,
    ) -> None:
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if content_length is None else content_length))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if body and not head_only:
            self.wfile.write(body)

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers=headers, head_only=self.command == "HEAD")

    def _dispatch(self) -> None:
        self._status = 0
        split = urlsplit(self.path)
        path = split.path
        self._query = parse_qs(split.query)
        self._body = self._read_body() if self.command in ("POST", "PUT", "PATCH", "DELETE") else b""
        log = LoggedRequest(self.command, self.path, self.headers.get("Authorization"))
        with self.hub._lock:
            self.hub.requests.append(log)
        try:
            self._route(path)
        except HubError as err:
            headers = {"X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            if err.commit:
                headers["X-Repo-Commit"] = err.commit
            self._json(err.status, {"error": err.message}, headers)
        except Exception as err:  # a bug in the fake: answer 500 so the client reports it
            self._json(500, {"error": f"fake hub error: {type(err).__name__}: {err}"})
        log.status = self._status

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

    def _require_token(self) -> None:
        auth = self.headers.get("Authorization") or ""
        if auth != f"Bearer {self.hub.token}":
            raise HubError(401, "Invalid credentials in Authorization header")

    def _can_read(self, repo: Repo) -> None:
        if repo.private and self.headers.get("Authorization") != f"Bearer {self.hub.token}":
            raise HubError(404, f"Repository {repo.repo_id} not found", "RepoNotFound")

    def _form_or_json(self) -> dict[str, Any]:
        ctype = self.headers.get("Content-Type", "")
        if "json" in ctype:
            return json.loads(self._body or b"{}")
        return {k: v for k, v in parse_qs(self._body.decode()).items()}

    # ------------------------------------------------------------------ routing
    def _route(self, path: str) -> None:
        hub = self.hub
        method = self.command
        if path == "/api/whoami-v2":
            self._require_token()
            return self._json(
                200,
                {
                    "type": "user",
                    "name": DEFAULT_USER,
                    "fullname": "Test User",
                    "orgs": [],
                    "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
                },
            )
        if path == "/api/validate-yaml" and method == "POST":
            return self._validate_yaml()
        if path == "/api/repos/create" and method == "POST":
            return self._create_repo()
        if path == "/api/repos/delete" and method == "DELETE":
            self._require_token()
            payload = json.loads(self._body or b"{}")
            repo_type = payload.get("type") or "model"
            repo_id = f"{payload.get('organization') or DEFAULT_USER}/{payload['name']}"
            with hub._lock:
                hub._get_repo(repo_type, repo_id)
                del hub.repos[(repo_type, repo_id)]
                shutil.rmtree(hub.repo_dir(repo_id, repo_type), ignore_errors=True)
                hub._save_state()
            return self._json(200, {})
        if path.startswith("/_lfs/") and method == "PUT":
            return self._lfs_put(path[len("/_lfs/") :])
        match = _LFS_BATCH.match(path)
        if match and method == "POST":
            return self._lfs_batch((match.group(1) or "models")[:-1], match.group(2))
        match = _API_REPO.match(path)
        if match:
            repo_type = match.group(1)[:-1]
            return self._api_repo(repo_type, match.group(2), match.group(3) or "")
        match = _RESOLVE.match(path)
        if match and method in ("GET", "HEAD"):
            repo_type = (match.group(1) or "models")[:-1]
            return self._resolve_file(
                repo_type, match.group(2), unquote(match.group(3)), unquote(match.group(4))
            )
        raise HubError(404, f"fake hub: no route for {method} {path}")

    def _api_repo(self, repo_type: str, repo_id: str, rest: str) -> None:
        method = self.command
        hub = self.hub
        action, _, tail = rest.partition("/")
        if action == "" and method == "GET":
            return self._repo_info(repo_type, repo_id, "main")
        if action == "revision" and method == "GET":
            return self._repo_info(repo_type, repo_id, tail)
        if action == "tree" and method == "GET":
            revision, _, sub = tail.partition("/")
            return self._tree(repo_type, repo_id, revision, unquote(sub))
        if action == "paths-info" and method == "POST":
            return self._paths_info(repo_type, repo_id, tail)
        if action == "preupload" and method == "POST":
            return self._preupload(repo_type, repo_id, tail)
        if action == "commit" and method == "POST":
            return self._commit(repo_type, repo_id, tail)
        if action == "commits" and method == "GET":
            return self._list_commits(repo_type, repo_id, tail)
        if action == "refs" and method == "GET":
            return self._refs(repo_type, repo_id)
        if action == "settings" and method == "PUT":
            self._require_token()
            payload = json.loads(self._body or b"{}")
            with hub._lock:
                repo = hub._get_repo(repo_type, repo_id)
                if "private" in payload:
                    repo.private = bool(payload["private"])
                if "visibility" in payload:
                    repo.private = payload["visibility"] == "private"
                hub._save_state()
            return self._json(200, {})
        if action in ("branch", "tag"):
            return self._branch_or_tag(action, repo_type, repo_id, unquote(tail))
        raise HubError(404, f"fake hub: no route for {method} /api/{repo_type}s/{repo_id}/{rest}")

    # ------------------------------------------------------------------ endpoints
    def _validate_yaml(self) -> None:
        content = json.loads(self._body or b"{}").get("content", "")
        if content.startswith("---"):
            end = content.find("\n---", 3)
            if end < 0:
                return self._json(400, {"errors": [{"message": "unterminated YAML front matter"}]})
            try:
                meta = yaml.safe_load(content[3:end])
            except yaml.YAMLError as err:
                return self._json(400, {"errors": [{"message": f"invalid YAML: {err}"}]})
            if meta is not None and not isinstance(meta, dict):
                return self._json(400, {"errors": [{"message": "metadata must be a mapping"}]})
        return self._json(200, {"errors": [], "warnings": []})

    def _create_repo(self) -> None:
        self._require_token()
        payload = json.loads(self._body or b"{}")
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"invalid repo type {repo_type!r}")
        repo_id = f"{payload.get('organization') or DEFAULT_USER}/{payload['name']}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        url = f"{self.hub.endpoint}/{_URL_PREFIX[repo_type]}{repo_id}"
        with self.hub._lock:
            if (repo_type, repo_id) in self.hub.repos:
                # As the Hub: 409 with the URL, which create_repo(exist_ok=True) returns.
                message = "You already created this model repo"
                return self._json(409, {"error": message, "url": url}, {"X-Error-Message": message})
            self.hub.create_repo(repo_type, repo_id, private=private)
        return self._json(200, {"url": url, "name": repo_id, "id": uuid.uuid4().hex})

    def _siblings(self, files: dict[str, dict[str, Any]], metadata: bool) -> list[dict[str, Any]]:
        siblings = []
        for name, entry in sorted(files.items()):
            item: dict[str, Any] = {"rfilename": name}
            if metadata:
                item.update(size=entry["size"], blobId=entry["oid"])
                if entry["lfs"]:
                    pointer_size = len(lfs_pointer(entry["sha256"], entry["size"]))
                    item["lfs"] = {
                        "size": entry["size"],
                        "sha256": entry["sha256"],
                        "pointerSize": pointer_size,
                    }
            siblings.append(item)
        return siblings

    def _repo_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        with self.hub._lock:
            repo = self.hub._get_repo(repo_type, repo_id)
            self._can_read(repo)
            commit = repo.commits[self.hub._resolve(repo, revision)]
            files = dict(commit["files"])
        card_data = None
        if "README.md" in files:
            card_data = _card_metadata(self.hub._read_object(files["README.md"]["sha256"]))
        metadata = self._query.get("blobs", ["false"])[0].lower() == "true"
        namespace = repo_id.split("/")[0]
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "author": namespace,
            "sha": commit["id"],
            "lastModified": commit["date"],
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": list((card_data or {}).get("tags") or []),
            "siblings": self._siblings(files, metadata),
            "usedStorage": sum(f["size"] for f in files.values()),
        }
        if card_data is not None:
            info["cardData"] = card_data
        if repo_type == "model":
            config = files.get("config.json")
            if config is not None:
                try:
                    info["config"] = json.loads(self.hub._read_object(config["sha256"]))
                except ValueError:
                    pass
            info["library_name"] = (card_data or {}).get("library_name")
        return self._json(200, info)

    def _tree_entries(self, commit: dict[str, Any], prefix: str, recursive: bool) -> list[dict[str, Any]]:
        files = commit["files"]
        prefix = prefix.strip("/")
        base = f"{prefix}/" if prefix else ""
        if prefix and prefix not in _dirs_of(files) and prefix not in files:
            raise HubError(404, f"{prefix} does not exist", "EntryNotFound", commit["id"])
        entries: dict[str, dict[str, Any]] = {}
        for name in sorted(files):
            if not name.startswith(base):
                continue
            rel = name[len(base) :]
            parts = rel.split("/")
            dirs = ["/".join(parts[: i + 1]) for i in range(len(parts) - 1)]
            for d in dirs if recursive else dirs[:1]:
                full = base + d
                entries.setdefault(full, _folder_entry(full, files))
            if recursive or len(parts) == 1:
                entries[name] = _file_entry_json(name, files[name])
        out = list(entries.values())
        if self._query.get("expand", ["false"])[0].lower() == "true":
            last = {"id": commit["id"], "title": commit["title"], "date": commit["date"]}
            for item in out:
                item["lastCommit"] = last
        return out

    def _tree(self, repo_type: str, repo_id: str, revision: str, sub: str) -> None:
        recursive = self._query.get("recursive", ["false"])[0].lower() == "true"
        with self.hub._lock:
            repo = self.hub._get_repo(repo_type, repo_id)
            self._can_read(repo)
            commit = repo.commits[self.hub._resolve(repo, revision)]
            entries = self._tree_entries(commit, sub, recursive)
        return self._json(200, entries)

    def _paths_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        payload = self._form_or_json()
        paths = payload.get("paths") or []
        paths = [paths] if isinstance(paths, str) else paths
        with self.hub._lock:
            repo = self.hub._get_repo(repo_type, repo_id)
            self._can_read(repo)
            commit = repo.commits[self.hub._resolve(repo, revision)]
            files = commit["files"]
            dirs = _dirs_of(files)
            out = []
            for raw in paths:
                name = raw.strip("/")
                if name in files:
                    out.append(_file_entry_json(name, files[name]))
                elif name in dirs:
                    out.append(_folder_entry(name, files))
        return self._json(200, out)

    def _preupload(self, repo_type: str, repo_id: str, revision: str) -> None:
        self._require_token()
        payload = json.loads(self._body or b"{}")
        with self.hub._lock:
            repo = self.hub._get_repo(repo_type, repo_id)
            try:
                existing = repo.commits[self.hub._resolve(repo, revision)]["files"]
            except HubError:
                existing = {}
        answers = []
        for item in payload.get("files", []):
            sample = base64.b64decode(item.get("sample", ""))
            lfs = (
                item["path"].lower().endswith(LFS_SUFFIXES)
                or int(item.get("size", 0)) > LFS_SIZE_THRESHOLD
                or b"\0" in sample
            )
            answer = {"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
            old = existing.get(item["path"])
            if old is not None:
                # The client compares this with its own oid: sha256 for LFS, git sha1 for regular.
                answer["oid"] = old["sha256"] if lfs else git_blob_oid(self.hub._read_object(old["sha256"]))
            answers.append(answer)
        return self._json(200, {"files": answers, "commitOid": None})

    def _lfs_batch(self, repo_type: str, repo_id: str) -> None:
        self._require_token()
        payload = json.loads(self._body or b"{}")
        with self.hub._lock:
            self.hub._get_repo(repo_type, repo_id)
        if payload.get("operation") != "upload":
            raise HubError(400, "fake hub: only the upload operation of the LFS batch API is served")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            answer: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if not self.hub._object_path(oid).exists():
                href = f"{self.hub.endpoint}/_lfs/{oid}?size={size}"
                answer["actions"] = {"upload": {"href": href, "header": {}}}
            objects.append(answer)
        self._send(
            200,
            json.dumps({"transfer": "basic", "objects": objects}).encode(),
            content_type="application/vnd.git-lfs+json",
        )

    def _lfs_put(self, rest: str) -> None:
        oid = rest.split("?")[0]
        content = self._body
        expected = self._query.get("size", [None])[0]
        if hashlib.sha256(content).hexdigest() != oid:
            raise HubError(400, f"LFS upload: content does not match oid {oid}")
        if expected is not None and int(expected) != len(content):
            raise HubError(400, f"LFS upload: size {len(content)} != announced {expected}")
        self.hub._store_object(content)
        self._send(200, b"", headers={"ETag": f'"{oid}"'})

    def _commit(self, repo_type: str, repo_id: str, revision: str) -> None:
        self._require_token()
        revision = unquote(revision)
        lines = [json.loads(line) for line in self._body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "commit payload must start with a header line")
        header = lines[0]["value"]
        create_pr = self._query.get("create_pr", ["0"])[0] in ("1", "true")
        hub = self.hub
        with hub._lock:
            repo = hub._get_repo(repo_type, repo_id)
            base = hub._resolve(repo, revision)
            parent = header.get("parentCommit")
            if parent and parent != base:
                raise HubError(
                    412, f"A commit has happened since. Please refresh and try again (head {base})."
                )
            files = dict(repo.commits[base]["files"])
            for op in lines[1:]:
                key, value = op.get("key"), op.get("value", {})
                path = value.get("path", "").strip("/")
                if key == "file":
                    content = (
                        base64.b64decode(value["content"])
                        if value.get("encoding") == "base64"
                        else value["content"].encode()
                    )
                    files[path] = hub._file_entry(content, lfs=False)
                elif key == "lfsFile":
                    sha = value["oid"]
                    if not hub._object_path(sha).exists():
                        raise HubError(422, f"LFS object {sha} of {path} was never uploaded")
                    size = hub._object_path(sha).stat().st_size
                    if value.get("size") is not None and int(value["size"]) != size:
                        raise HubError(422, f"LFS object {sha}: size {size} != {value['size']}")
                    files[path] = {
                        "size": size,
                        "sha256": sha,
                        "oid": git_blob_oid(lfs_pointer(sha, size)),
                        "lfs": True,
                    }
                elif key == "deletedFile":
                    if path not in files:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    del files[path]
                elif key == "deletedFolder":
                    files = {k: v for k, v in files.items() if not k.startswith(path + "/")}
                else:
                    raise HubError(400, f"fake hub: unknown commit operation {key!r}")
            oid = hub._new_commit(
                repo, files, header.get("summary", ""), header.get("description", ""), [base]
            )
            pr_url = None
            if create_pr:
                num = repo.next_pr
                repo.next_pr += 1
                repo.refs[f"refs/pr/{num}"] = oid
                pr_url = f"{hub.endpoint}/{_URL_PREFIX[repo_type]}{repo_id}/discussions/{num}"
            else:
                if revision not in repo.refs:
                    raise HubError(400, f"cannot commit to {revision}: not a branch")
                repo.refs[revision] = oid
            if revision == "main" and not create_pr:
                hub._checkout(repo)
            hub._save_state()
        url = f"{hub.endpoint}/{_URL_PREFIX[repo_type]}{repo_id}/commit/{oid}"
        return self._json(
            200, {"success": True, "commitOid": oid, "commitUrl": url, "pullRequestUrl": pr_url}
        )

    def _list_commits(self, repo_type: str, repo_id: str, revision: str) -> None:
        with self.hub._lock:
            repo = self.hub._get_repo(repo_type, repo_id)
            self._can_read(repo)
            oid: str | None = self.hub._resolve(repo, revision)
            out = []
            while oid:
                commit = repo.commits[oid]
                out.append(
                    {
                        "id": oid,
                        "title": commit["title"],
                        "message": commit["message"],
                        "date": commit["date"],
                        "authors": [{"user": DEFAULT_USER}],
                    }
                )
                oid = commit["parents"][0] if commit["parents"] else None
        return self._json(200, out)

    def _refs(self, repo_type: str, repo_id: str) -> None:
        with self.hub._lock:
            repo = self.hub._get_repo(repo_type, repo_id)
            self._can_read(repo)
            branches = [
                {"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid}
                for name, oid in repo.refs.items()
                if not name.startswith("refs/")
            ]
            tags = [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": o} for n, o in repo.tags.items()]
            prs = [
                {"name": n, "ref": n, "targetCommit": o}
                for n, o in repo.refs.items()
                if n.startswith("refs/pr/")
            ]
        return self._json(200, {"branches": branches, "tags": tags, "converts": [], "pullRequests": prs})

    def _branch_or_tag(self, kind: str, repo_type: str, repo_id: str, name: str) -> None:
        self._require_token()
        hub = self.hub
        with hub._lock:
            repo = hub._get_repo(repo_type, repo_id)
            table = repo.refs if kind == "branch" else repo.tags
            if self.command == "DELETE":
                if name not in table:
                    raise HubError(404, f"{kind} {name} not found", "RevisionNotFound")
                del table[name]
            elif self.command == "POST":
                payload = json.loads(self._body or b"{}")
                if kind == "branch":
                    if name in table:
                        raise HubError(409, f"Reference already exists: refs/heads/{name}")
                    table[name] = hub._resolve(repo, payload.get("startingPoint") or "main")
                else:
                    tag = payload["tag"]
                    if tag in table:
                        raise HubError(409, f"Tag already exists: {tag}")
                    table[tag] = hub._resolve(repo, name)
            else:
                raise HubError(405, f"{self.command} not allowed on {kind}")
            hub._save_state()
        return self._json(200, {})

    def _resolve_file(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        head_only = self.command == "HEAD"
        with self.hub._lock:
            repo = self.hub._get_repo(repo_type, repo_id)
            self._can_read(repo)
            commit_id = self.hub._resolve(repo, revision)
            entry = repo.commits[commit_id]["files"].get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", commit_id)
        headers = {"X-Repo-Commit": commit_id, "Accept-Ranges": "bytes"}
        if entry["lfs"]:
            headers["ETag"] = f'"{entry["sha256"]}"'
            headers["X-Linked-Etag"] = f'"{entry["sha256"]}"'
            headers["X-Linked-Size"] = str(entry["size"])
        else:
            headers["ETag"] = f'"{entry["oid"]}"'
        size = entry["size"]
        range_header = self.headers.get("Range")
        if range_header and not head_only:
            start, end = _parse_range(range_header, size)
            if start >= size:
                headers["Content-Range"] = f"bytes */{size}"
                return self._send(416, b"", content_type="application/octet-stream", headers=headers)
            content = self.hub._read_object(entry["sha256"])[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            return self._send(206, content, content_type="application/octet-stream", headers=headers)
        if head_only:
            return self._send(
                200, b"", "application/octet-stream", headers, head_only=True, content_length=size
            )
        content = self.hub._read_object(entry["sha256"])
        return self._send(200, content, content_type="application/octet-stream", headers=headers)


# ------------------------------------------------------------------------------------------
# Small pure helpers
# ------------------------------------------------------------------------------------------


def _dirs_of(files: dict[str, Any]) -> set[str]:
    dirs = set()
    for name in files:
        parts = name.split("/")[:-1]
        dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    return dirs


def _file_entry_json(name: str, entry: dict[str, Any]) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "file", "oid": entry["oid"], "size": entry["size"], "path": name}
    if entry["lfs"]:
        pointer_size = len(lfs_pointer(entry["sha256"], entry["size"]))
        item["lfs"] = {"oid": entry["sha256"], "size": entry["size"], "pointerSize": pointer_size}
    return item


def _folder_entry(name: str, files: dict[str, Any]) -> dict[str, Any]:
    inside = sorted((k, v["oid"]) for k, v in files.items() if k.startswith(name + "/"))
    oid = hashlib.sha1(json.dumps(inside).encode()).hexdigest()
    return {"type": "directory", "oid": oid, "size": 0, "path": name}


def _parse_range(header: str, size: int) -> tuple[int, int]:
    """Parse a single ``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` range into inclusive bounds."""
    spec = header.split("=", 1)[1].split(",")[0].strip()
    first, _, last = spec.partition("-")
    if first == "":
        start = max(0, size - int(last))
        return start, size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    return start, end


def _card_metadata(readme: bytes) -> dict[str, Any] | None:
    text = readme.decode("utf-8", errors="replace")
    if not text.startswith("---"):
        return None
    end = text.find("\n---", 3)
    if end < 0:
        return None
    try:
        meta = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return None
    return meta if isinstance(meta, dict) else None


def hub_url(endpoint: str, repo_id: str, repo_type: str = "model") -> str:
    """Web URL of a repository on the fake Hub."""
    return f"{endpoint}/{_URL_PREFIX[repo_type]}{quote(repo_id)}"
