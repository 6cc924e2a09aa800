"""A local HTTP stand-in for the Hugging Face Hub: just enough of its API for huggingface_hub's
create_repo + upload_folder and for snapshot_download (model info, tree listing, HEAD and GET of
/{repo}/resolve/{revision}/{file}), recording what it received (repos, files, the Authorization header,
the files downloaded). A served repo can be gated (401 without a token, 403 with a token not granted) or
drop the connection halfway through every file it sends; `write_tokens`, when given, are the only tokens that
may create a repo (others get 401, as the Hub answers a wrong or read-only token)."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote


class HubStandIn:
    def __init__(self, write_tokens: tuple[str, ...] | None = None):
        self.write_tokens = write_tokens
        # repo_id -> {"private": bool, "files": {path: bytes}, and for served repos "gated": bool,
        # "granted": tokens that accepted a gated model's licence, "drop": cut every file halfway}
        self.repos: dict[str, dict] = {}
        self.tokens: list[str] = []
        self.downloads: list[str] = []  # "repo_id/path" of every file body sent (GET of /resolve/)
        self.unhandled: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def serve_model(self, repo_id: str, folder: Path, gated: bool = False, granted: tuple = (),
                    drop: bool = False, extra_files: dict | None = None) -> None:
        """Serve the model saved in `folder` (plus `extra_files`: path -> bytes) as `repo_id`."""
        files = {f.relative_to(folder).as_posix(): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}
        self.repos[repo_id] = {"private": False, "files": {**files, **(extra_files or {})}, "gated": gated,
                               "granted": set(granted), "drop": drop}

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, body: dict | list) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _repo_from(self, path: str, marker: str) -> str:
                return path.split("/api/models/", 1)[1].split(marker, 1)[0]

            def do_POST(self):
                hub.tokens.append(self.headers.get("Authorization", ""))
                body = self._body()
                path = self.path.split("?", 1)[0]
                if path == "/api/repos/create":
                    token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                    if hub.write_tokens is not None and token not in hub.write_tokens:
                        return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
                    request = json.loads(body)
                    repo_id = f"{request['organization']}/{request['name']}" if request.get("organization") else request["name"]
                    private = request.get("visibility") == "private" or bool(request.get("private"))
                    hub.repos.setdefault(repo_id, {"private": private, "files": {}})
                    return self._reply(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})
                if path == "/api/validate-yaml":
                    return self._reply(200, {"errors": [], "warnings": []})
                if "/preupload/" in path:
                    files = json.loads(body)["files"]
                    return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                       for f in files], "commitOid": "0" * 40})
                if "/commit/" in path:
                    repo_id = self._repo_from(path, "/commit/")
                    files = hub.repos.setdefault(repo_id, {"private": False, "files": {}})["files"]
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    return self._reply(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/1", "commitOid": "1" * 40,
                                             "success": True})
                hub.unhandled.append(f"POST {self.path}")
                return self._reply(404, {"error": f"stand-in does not serve POST {path}"})

            def _error(self, status: int, code: str, message: str, commit: str | None = None) -> None:
                payload = json.dumps({"error": message}).encode()
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", message)
                if commit:
                    self.send_header("X-Repo-Commit", commit)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _served(self, repo_id: str) -> dict | None:
                repo = hub.repos.get(repo_id)
                if repo is None:
                    self._error(404, "RepoNotFound", "Repository not found")
                return repo

            def _commit(self, repo: dict) -> str:
                return hashlib.sha1(json.dumps(sorted(repo["files"])).encode()
                                    + b"".join(repo["files"][p] for p in sorted(repo["files"]))).hexdigest()

            def _model_info(self, repo_id: str) -> None:
                if (repo := self._served(repo_id)) is not None:
                    self._reply(200, {"id": repo_id, "sha": self._commit(repo), "private": repo["private"],
                                      "gated": "manual" if repo.get("gated") else False,
                                      "siblings": [{"rfilename": p, "size": len(data)}  # sizes: ?blobs=true
                                                   for p, data in sorted(repo["files"].items())]})

            def _tree(self, repo_id: str) -> None:
                if (repo := self._served(repo_id)) is not None:
                    self._reply(200, [{"type": "file", "path": p, "size": len(data),
                                       "oid": hashlib.sha1(data).hexdigest()} for p, data in sorted(repo["files"].items())])

            def _resolve(self, repo_id: str, path: str) -> None:
                if (repo := self._served(repo_id)) is None:
                    return
                commit = self._commit(repo)
                token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                if repo.get("gated") and not token:
                    return self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have "
                                       "access to it and be authenticated to access it. Please log in.", commit)
                if repo.get("gated") and token not in repo["granted"]:
                    return self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted and you are not "
                                       f"in the authorized list. Visit {hub.url}/{repo_id} to ask for access.", commit)
                data = repo["files"].get(path)
                if data is None:
                    return self._error(404, "EntryNotFound", f"{path} does not exist on main", commit)
                self.send_response(200)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("X-Repo-Commit", commit)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                hub.downloads.append(f"{repo_id}/{path}")
                if repo.get("drop"):  # the connection drops halfway: the client sees fewer bytes than announced
                    self.wfile.write(data[: len(data) // 2])
                    self.close_connection = True
                    return
                self.wfile.write(data)

            def _download_route(self) -> bool:
                path = unquote(self.path.split("?", 1)[0])
                if path.startswith("/api/models/") and "/tree/" in path:
                    self._tree(self._repo_from(path, "/tree/"))
                elif path.startswith("/api/models/"):  # model info, of the default branch or of /revision/{rev}
                    self._model_info(self._repo_from(path, "/revision/"))
                elif "/resolve/" in path:
                    repo_id, rest = path.lstrip("/").split("/resolve/", 1)
                    self._resolve(repo_id, rest.split("/", 1)[1])
                else:
                    return False
                return True

            def do_HEAD(self):
                hub.tokens.append(self.headers.get("Authorization", ""))
                if not self._download_route():
                    hub.unhandled.append(f"HEAD {self.path}")
                    self._error(404, "NotFound", "not found")

            def do_GET(self):
                hub.tokens.append(self.headers.get("Authorization", ""))
                if not self._download_route():
                    hub.unhandled.append(f"GET {self.path}")
                    self._reply(404, {"error": "not found"})

        return Handler
