"""Is a downloaded weight file the one expected? Its size and SHA-384 against a published digest, or, where none is
published, against the digest of its first download (trust on first use).

The first-download digests live in a small JSON file beside the cached files (`RECORDS_NAME`), keyed by URL. Each
entry also notes the size and modification time of the cached file when it last matched, so a cached file that has
not changed since is not hashed again on every model creation.
"""
import dataclasses
import datetime
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

__all__ = ['RECORDS_NAME', 'DigestMismatchError', 'DigestRecords', 'FileDigest', 'file_digest']

RECORDS_NAME = 'timm_t2t_digests.json'
_CHUNK = 1 << 20

PathLike = Union[str, Path]


@dataclasses.dataclass(frozen=True)
class FileDigest:
    """A file's size in bytes and SHA-384 (hex)."""
    size: int
    sha384: str


def file_digest(path: PathLike) -> FileDigest:
    """Size and SHA-384 of a file, read in chunks."""
    sha = hashlib.sha384()
    with open(path, 'rb') as f:
        size = os.fstat(f.fileno()).st_size
        for chunk in iter(lambda: f.read(_CHUNK), b''):
            sha.update(chunk)
    return FileDigest(size, sha.hexdigest())


class DigestMismatchError(ValueError):
    """A weight file differs from its published digest or from its first download."""


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def _stamp(path: Path) -> Dict[str, int]:
    stat = path.stat()
    return {'size': stat.st_size, 'mtime_ns': stat.st_mtime_ns}


class DigestRecords:
    """The digests of files as first downloaded into one cache folder, and the stamp of each cached file last
    found to match."""

    def __init__(self, folder: PathLike) -> None:
        self.path = Path(folder) / RECORDS_NAME

    def _read(self) -> Dict[str, Dict[str, Any]]:
        if not self.path.is_file():
            return {}
        try:
            records = json.loads(self.path.read_text(encoding='utf-8'))
            if not isinstance(records, dict):
                raise ValueError('not a JSON object')
        except (OSError, ValueError) as e:
            raise ValueError(
                f'Cannot read the weight digest records {self.path} ({e}); delete the file to record the digests '
                f'of the next downloads anew.') from e
        return records

    def _write(self, records: Dict[str, Dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f'.{RECORDS_NAME}.', dir=self.path.parent)
        try:
            with os.fdopen(fd, 'w', encoding='utf-8') as f:
                json.dump(records, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)  # whole or not at all, also with several processes downloading
        except BaseException:
            os.remove(tmp)
            raise

    def first_download(self, url: str) -> Optional[Tuple[FileDigest, str]]:
        """The digest recorded at the first download of `url` into this folder, and when (UTC); None if none."""
        entry = self._read().get(url)
        if entry is None:
            return None
        return FileDigest(entry['size'], entry['sha384']), entry['first_download']

    def verify(self, url: str, path: Path, published: Optional[FileDigest], cached: bool) -> FileDigest:
        """The digest of `path`, the file from `url`, after checking it against the published digest, else against
        the first download's: size first, then SHA-384. A cached file unchanged since it last matched is not hashed
        again. On a mismatch the file is removed and DigestMismatchError says, in one line, what was expected and
        what was found.
        """
        entry = self._read().get(url)
        if published is not None:
            expected, against = published, 'its published digest'
        elif entry is not None:
            expected = FileDigest(entry['size'], entry['sha384'])
            against = f'the digest of its first download on {entry["first_download"]} (recorded in {self.path})'
        else:
            expected, against = None, ''
        if cached and entry is not None and entry.get('checked') == _stamp(path) and (
                expected == FileDigest(entry['size'], entry['sha384'])):
            return expected
        size = path.stat().st_size
        found = None if expected is not None and size != expected.size else file_digest(path)
        if expected is not None and found != expected:
            os.remove(path)
            what = f'{expected.size:,} bytes, found {size:,} bytes' if found is None else \
                f'sha384 {expected.sha384}, found sha384 {found.sha384}'
            advice = '' if published is not None else f' If it was changed on purpose, delete its entry in {self.path}.'
            raise DigestMismatchError(
                f'The weight file {url} does not match {against}: expected {what}. It was removed from the cache.'
                f'{advice}')
        return found

    def record(self, url: str, digest: FileDigest, cached: Path) -> bool:
        """Note `digest` as that of `url` (dated now unless already recorded) and the stamp of its cached copy.
        Returns whether this was the first record of `url`."""
        records = self._read()
        entry = records.get(url)
        first = entry is None or FileDigest(entry['size'], entry['sha384']) != digest
        new = {
            'size': digest.size,
            'sha384': digest.sha384,
            'first_download': _utc_now() if first else entry['first_download'],
            'checked': _stamp(cached),
        }
        if new != entry:
            records[url] = new
            self._write(records)
        return first
