"""A loopback HTTP server that answers file downloads and uploads the way the Hugging Face Hub does.

`/{org}/{repo}/resolve/{revision}/{filename}` serves Hub repo files, with the headers huggingface_hub reads
(X-Repo-Commit, ETag, Content-Length) and the Hub's error codes for missing repos, revisions and files. `repos` holds
each repo's files on main; every `add_folder` and upload is also kept as a commit (its id: the SHA-1 of the files),
which stays downloadable by that id after main has moved on.
`/releases/{filename}` serves plain downloads, like GitHub release assets. `POST /api/repos/create`,
`/api/validate-yaml`, `/api/models/{repo}/preupload/{revision}` and `/api/models/{repo}/commit/{revision}` take what
`HfApi.create_repo` and `HfApi.upload_folder` send (every file as a regular, non-LFS upload). Every request is recorded.
"""
import base64
import hashlib
import http.server
import json
import threading
from pathlib import Path
from typing import Dict, List, Tuple


class LoopbackHub:
    def __init__(self) -> None:
        self.repos: Dict[str, Dict[str, bytes]] = {}
        self.commits: Dict[str, Dict[str, Dict[str, bytes]]] = {}
        self.releases: Dict[str, bytes] = {}
        self.requests: List[Tuple[str, str]] = []
        self._server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f'http://{host}:{port}'

    def add_folder(self, repo_id: str, folder: Path) -> str:
        """Put a folder's files on the repo's main branch, as a new commit; returns its id."""
        self.repos[repo_id] = {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}
        return self._commit(repo_id)

    def requests_to(self, path_prefix: str) -> List[Tuple[str, str]]:
        return [r for r in self.requests if r[1].startswith(path_prefix)]

    def requested_revisions(self, repo_id: str) -> List[str]:
        """The revisions of `repo_id` that file requests asked for, in order."""
        return [path.split('?')[0].split('/')[4] for _, path in self.requests_to(f'/{repo_id}/resolve/')]

    @staticmethod
    def _commit_id(files: Dict[str, bytes]) -> str:
        return hashlib.sha1(b''.join(sorted(files.values()))).hexdigest()

    def _commit(self, repo_id: str) -> str:
        commit = self._commit_id(self.repos[repo_id])
        self.commits.setdefault(repo_id, {})[commit] = dict(self.repos[repo_id])
        return commit

    def __enter__(self) -> 'LoopbackHub':
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _lookup(self, path: str) -> Tuple[int, Dict[str, str], bytes]:
        parts = path.split('?')[0].strip('/').split('/')
        if parts[0] == 'releases' and len(parts) == 2:
            if parts[1] not in self.releases:
                return 404, {}, b'Not Found'
            return 200, {}, self.releases[parts[1]]
        if len(parts) >= 5 and parts[2] == 'resolve':
            repo_id, revision, filename = '/'.join(parts[:2]), parts[3], '/'.join(parts[4:])
            if repo_id not in self.repos:
                return 404, {'X-Error-Code': 'RepoNotFound'}, b'{"error": "Repository not found"}'
            head = self._commit_id(self.repos[repo_id])
            if revision in ('main', head):
                files, commit = self.repos[repo_id], head
            elif revision in self.commits.get(repo_id, {}):
                files, commit = self.commits[repo_id][revision], revision
            else:
                return 404, {'X-Error-Code': 'RevisionNotFound'}, b'{"error": "Revision not found"}'
            if filename not in files:
                return 404, {'X-Error-Code': 'EntryNotFound'}, b'{"error": "Entry not found"}'
            content = files[filename]
            return 200, {'X-Repo-Commit': commit, 'ETag': f'"{hashlib.sha256(content).hexdigest()}"'}, content
        return 404, {}, b'Not Found'

    def _post(self, path: str, body: bytes) -> Tuple[int, dict]:
        parts = path.strip('/').split('/')
        if parts == ['api', 'validate-yaml']:  # the model card's metadata, checked before an upload
            return 200, {'errors': [], 'warnings': []}
        if parts == ['api', 'repos', 'create']:
            request = json.loads(body)
            repo_id = f'{request["organization"]}/{request["name"]}'
            self.repos.setdefault(repo_id, {})
            return 200, {'url': f'{self.url}/{repo_id}'}
        if len(parts) == 6 and parts[:2] == ['api', 'models'] and parts[4] in ('preupload', 'commit'):
            repo_id = '/'.join(parts[2:4])
            if repo_id not in self.repos:
                return 404, {'error': 'Repository not found'}
            if parts[4] == 'preupload':
                files = json.loads(body)['files']
                return 200, {'files': [{'path': f['path'], 'uploadMode': 'regular', 'shouldIgnore': False}
                                       for f in files]}
            for line in body.splitlines():
                item = json.loads(line)
                if item['key'] == 'file':
                    self.repos[repo_id][item['value']['path']] = base64.b64decode(item['value']['content'])
            commit = self._commit(repo_id)
            return 200, {'commitUrl': f'{self.url}/{repo_id}/commit/{commit}', 'commitOid': commit,
                         'pullRequestUrl': None}
        return 404, {'error': 'Not Found'}

    def _handler(self):
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _respond(self, with_body: bool) -> None:
                hub.requests.append((self.command, self.path))
                status, headers, body = hub._lookup(self.path)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header('Content-Type', 'application/octet-stream')
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def do_HEAD(self) -> None:
                self._respond(with_body=False)

            def do_GET(self) -> None:
                self._respond(with_body=True)

            def do_POST(self) -> None:
                hub.requests.append((self.command, self.path))
                body = self.rfile.read(int(self.headers.get('Content-Length', 0)))
                status, reply = hub._post(self.path.split('?')[0], body)
                payload = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header('Content-Type', 'application/json')
                self.send_header('Content-Length', str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        return Handler
