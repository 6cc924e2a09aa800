"""A local HTTP stand-in for the Hugging Face Hub: just enough of its API for huggingface_hub's
create_repo + upload_folder, recording what it received (repos, files, the Authorization header)."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HubStandIn:
    def __init__(self):
        self.repos: dict[str, dict] = {}  # repo_id -> {"private": bool, "files": {path: bytes}}
        self.tokens: list[str] = []
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

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, body: dict) -> None:
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

            def do_GET(self):
                hub.tokens.append(self.headers.get("Authorization", ""))
                hub.unhandled.append(f"GET {self.path}")
                return self._reply(404, {"error": "not found"})

        return Handler
