"""Where pretrained T2T-ViT weights come from: the Hugging Face Hub first, the official release files second.

Each pretrained cfg names a Hub repo in timm's format (``model.safetensors`` + ``config.json``) under the
organisation in ``TIMM_T2T_HUB_ORG`` (read when the package is imported), and the reference release URL. Weights
already in the cache load without a request. A Hub repo that cannot be found falls back to the release file,
which the model's checkpoint filter converts on the fly. Every download is checked before use: a file that is
truncated or not a checkpoint raises an error and is removed from the cache, so the next attempt fetches it anew.

A Hub id may pin a commit in timm's form ``ORG/REPO@COMMIT``: then that commit, and only it, is downloaded and looked
up in the cache. A release file must match its published digest where one is known (the caller passes it), else
the digest recorded at its first download (see `digests`), before it is converted or kept in the cache.

Without a network the answer comes fast and says so: a host that cannot be reached is not retried (each source is
checked with one quick connection first), and with ``HF_HUB_OFFLINE=1`` only the caches are looked at.
"""
import logging
import os
import re
import socket
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
from timm.models._hub import hf_split

from ._compat import load_state_dict
from .digests import DigestRecords, FileDigest

__all__ = [
    'HUB_ORG_ENV', 'DEFAULT_HUB_ORG', 'InvalidCheckpointError', 'WeightsUnavailableError', 'cached_weights',
    'fetch_pretrained_file', 'hub_repo_id', 'is_commit', 'read_checkpoint', 'release_records',
]

_logger = logging.getLogger(__name__)

HUB_ORG_ENV = 'TIMM_T2T_HUB_ORG'
DEFAULT_HUB_ORG = 'timm-t2t'
HUB_WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')  # as timm writes them, safetensors first
# the Hub has no such repo, revision or weight file (locally too, when offline): try the release file
_HUB_MISSING = (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError)
CONNECT_TIMEOUT = 5.  # seconds to wait for one connection to a weight host before calling it unreachable
_OFFLINE = 'HF_HUB_OFFLINE is set: no downloads'

PathLike = Union[str, Path]


class InvalidCheckpointError(ValueError):
    """A weight file is truncated, corrupted or not a checkpoint of this model family."""


class WeightsUnavailableError(OSError):
    """Pretrained weights are neither in the local cache nor downloadable from here (offline, unreachable).

    `problem` says which sources failed and why; the message adds what to do about it.
    """

    def __init__(self, problem: str, advice: str = "Connect to the internet, or load weights you have with "
                                                   "pretrained_cfg_overlay=dict(file='PATH').") -> None:
        super().__init__(f'{problem} {advice}')
        self.problem = problem


def is_commit(revision: Optional[str]) -> bool:
    """Whether a Hub revision is a commit id (40 hex digits), which pins a file, rather than a branch or tag."""
    return bool(revision and re.fullmatch('[0-9a-f]{40}', revision))


def hub_repo_id(model_name: str, commit: Optional[str] = None) -> str:
    """The Hub id of the weights of `model_name` ('architecture.tag') under the configured organisation, pinned
    to `commit` in timm's form 'ORG/REPO@COMMIT' if given."""
    if commit is not None and not is_commit(commit):
        raise ValueError(f'{model_name}: a pinned Hub revision must be a commit id (40 hex digits), got {commit!r}.')
    repo_id = f'{os.environ.get(HUB_ORG_ENV, "").strip() or DEFAULT_HUB_ORG}/{model_name}'
    return f'{repo_id}@{commit}' if commit else repo_id


def _checkpoint_problem(path: Path, error: Exception) -> str:
    """What is wrong with a weight file that did not load, in words, from its first bytes and the error."""
    with open(path, 'rb') as f:
        head = f.read(9)
    zipped, pickled, safetensors = head[:4] == b'PK\x03\x04', head[:1] == b'\x80', head[8:9] == b'{'
    if not (zipped or pickled or safetensors):
        return 'not a PyTorch or safetensors weight file'
    text = str(error)
    if 'weights_only' in text or 'Weights only' in text:
        return 'it holds Python objects besides weights, which are not loaded (unsafe)'
    return 'the file is truncated or corrupted'


def read_checkpoint(path: PathLike, use_ema: bool = True) -> Dict[str, Any]:
    """The state dict in a local weight file (EMA weights first unless `use_ema=False`), weights only.

    Raises FileNotFoundError when there is no file, InvalidCheckpointError naming the file when it cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'No checkpoint file at {path}.')
    try:
        return load_state_dict(path, use_ema=use_ema)
    except Exception as e:
        raise InvalidCheckpointError(f'{path} is not a readable checkpoint: {_checkpoint_problem(path, e)}.') from e


def _hub_offline() -> bool:
    return bool(getattr(hub_constants, 'HF_HUB_OFFLINE', False))


def _unreachable(url: str) -> Optional[str]:
    """Why the host serving `url` cannot be reached (one quick connection, through the proxy if one applies), or
    None when it answers."""
    parsed = urllib.parse.urlparse(url)
    host, port = parsed.hostname or '', parsed.port or (443 if parsed.scheme == 'https' else 80)
    proxy = urllib.request.getproxies().get(parsed.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxied = urllib.parse.urlparse(proxy if '://' in proxy else f'http://{proxy}')
        host, port = proxied.hostname or '', proxied.port or 80
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
    except OSError as e:
        return f'{host}:{port}: {e.strerror or e}'
    return None


def _cached_hub_file(repo_id: str, revision: Optional[str], cache_dir: Optional[PathLike]) -> Optional[str]:
    for filename in HUB_WEIGHT_FILES:
        path = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision)
        if isinstance(path, str):
            return path
    return None


def _download_hub_file(repo_id: str, revision: Optional[str], cache_dir: Optional[PathLike]) -> str:
    for filename in HUB_WEIGHT_FILES[:-1]:
        try:
            return hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir)
        except EntryNotFoundError:
            continue
    return hf_hub_download(repo_id, HUB_WEIGHT_FILES[-1], revision=revision, cache_dir=cache_dir)


def _url_cache_path(url: str, cache_dir: Optional[PathLike]) -> Path:
    directory = Path(cache_dir) if cache_dir else Path(torch.hub.get_dir()) / 'checkpoints'
    return directory / os.path.basename(urllib.parse.urlparse(url).path)


def release_records(url: str, cache_dir: Optional[PathLike] = None) -> DigestRecords:
    """The first-download digest records of the cache folder that holds the release file at `url`."""
    return DigestRecords(_url_cache_path(url, cache_dir).parent)


def _download_url_file(url: str, path: Path) -> Path:
    """Download `url` to a hidden file beside `path`, where it waits to be checked."""
    path.parent.mkdir(parents=True, exist_ok=True)
    download = path.with_name(f'.{path.name}.unchecked')
    try:
        torch.hub.download_url_to_file(url, str(download), progress=False)  # into a temp file, moved when complete
    except OSError as e:
        raise WeightsUnavailableError(f'Could not download {url} ({e}).') from e
    return download


def _remove_cached(path: str) -> None:
    """Remove a cached file; for the Hub cache, both the snapshot link and the blob it points to."""
    target = os.path.realpath(path)
    for p in {path, target}:
        if os.path.lexists(p):
            os.remove(p)


def _checked(path: str, source: str, validate: Callable[[Dict[str, Any]], None]) -> str:
    try:
        validate(load_state_dict(path))
    except Exception as e:
        _remove_cached(path)
        raise InvalidCheckpointError(
            f'The weights downloaded from {source} are not a usable checkpoint ({type(e).__name__}: {e}). '
            f'The file was removed from the cache; the next attempt downloads it again.') from e
    return path


def _checked_release(
        path: Path,
        url: str,
        published: Optional[FileDigest],
        validate: Callable[[Dict[str, Any]], None],
        cache_path: Path,
        name: str,
) -> str:
    """A release file (cached at `cache_path`, or downloaded to `path` beside it) checked against its digest, then
    as a checkpoint, in the cache, with its digest recorded. A file that fails either check is removed."""
    records = DigestRecords(cache_path.parent)
    digest = records.verify(url, path, published, cached=path == cache_path)
    _checked(str(path), url, validate)
    os.replace(path, cache_path)
    if records.record(url, digest, cache_path) and published is None:
        _logger.info(f'{name}: {url} has no published digest; recorded sha384 {digest.sha384} ({digest.size:,} '
                     f'bytes) in {records.path}, and later copies of the file must match it.')
    return str(cache_path)


def cached_weights(pretrained_cfg: Dict[str, Any], cache_dir: Optional[PathLike] = None) -> Optional[str]:
    """The local file holding a pretrained cfg's weights if it is cached already (Hub cache, then release file)."""
    hub_id, url = pretrained_cfg.get('hf_hub_id'), pretrained_cfg.get('url')
    if hub_id:
        path = _cached_hub_file(*hf_split(hub_id), cache_dir)
        if path:
            return path
    if url and _url_cache_path(url, cache_dir).is_file():
        return str(_url_cache_path(url, cache_dir))
    return None


def check_weights_reachable(pretrained_cfg: Dict[str, Any], cache_dir: Optional[PathLike] = None) -> None:
    """Raise WeightsUnavailableError at once, naming the source and why, when the pretrained weights of a timm model
    (not a T2T-ViT: `fetch_pretrained_file` gets those) are neither cached nor reachable; timm's own download
    would retry for most of a minute first. timm takes them from the Hub when the cfg names a Hub repo, else from
    its URL."""
    if cached_weights(pretrained_cfg, cache_dir):
        return
    name = '.'.join(filter(None, (pretrained_cfg.get('architecture'), pretrained_cfg.get('tag')))) or 'this model'
    hub_id, url = pretrained_cfg.get('hf_hub_id'), pretrained_cfg.get('url')
    if hub_id:
        problem = _OFFLINE if _hub_offline() else _unreachable(hub_constants.ENDPOINT)
        source = f'{hub_id} is not in the local cache and the Hugging Face Hub cannot be asked'
    elif url:
        problem = _OFFLINE if _hub_offline() else _unreachable(url)
        source = f'{url} is not cached and cannot be downloaded'
    else:
        return
    if problem:
        raise WeightsUnavailableError(f'Cannot get the pretrained weights of {name}: {source} ({problem}).')


def fetch_pretrained_file(
        pretrained_cfg: Dict[str, Any],
        validate: Callable[[Dict[str, Any]], None],
        cache_dir: Optional[PathLike] = None,
        release_digest: Optional[FileDigest] = None,
) -> Optional[str]:
    """Local path of checked weights for a pretrained cfg: from the Hub (at the commit its id pins, if any), else
    from the release URL.

    Returns None when the cfg brings its own `file` or `state_dict` for timm to load. Raises
    WeightsUnavailableError, in one line naming each source and why it failed, when neither is cached nor
    reachable; DigestMismatchError when the release file differs from its published or first-download digest.

    Args:
        pretrained_cfg: A resolved timm pretrained cfg (dict).
        validate: Raises if a loaded state dict is not a checkpoint of the model family.
        cache_dir: Cache directory for Hub and URL downloads (defaults: the Hub cache, torch.hub's checkpoints).
        release_digest: The published size and SHA-384 of the release file, if known.
    """
    from_hub_name = pretrained_cfg.get('source') == 'hf-hub'  # created as 'hf-hub:ORG/REPO'
    if pretrained_cfg.get('state_dict') is not None or (pretrained_cfg.get('file') and not from_hub_name):
        return None
    name = '.'.join(filter(None, (pretrained_cfg.get('architecture'), pretrained_cfg.get('tag')))) or 'this model'
    hub_id, url = pretrained_cfg.get('hf_hub_id'), pretrained_cfg.get('url')
    failures = []
    if hub_id:
        repo_id, revision = hf_split(hub_id)
        path = _cached_hub_file(repo_id, revision, cache_dir)
        if path:
            _logger.info(f'{name}: loading weights from the Hugging Face Hub cache ({hub_id}).')
            return _checked(path, f'the Hugging Face Hub ({hub_id})', validate)
        problem = _OFFLINE if _hub_offline() else _unreachable(hub_constants.ENDPOINT)
        if problem:
            failures.append(f'{hub_id} is not in the local cache and the Hugging Face Hub cannot be asked ({problem})')
        else:
            try:
                path = _download_hub_file(repo_id, revision, cache_dir)
            except _HUB_MISSING as e:
                if from_hub_name or not url:
                    raise
                _logger.warning(
                    f'{name}: {hub_id} is not on the Hugging Face Hub ({type(e).__name__}); '
                    f'falling back to the official release file {url}, converted on the fly.')
            else:
                _logger.info(f'{name}: loading weights from the Hugging Face Hub ({hub_id}).')
                return _checked(path, f'the Hugging Face Hub ({hub_id})', validate)
    if url and not from_hub_name:
        cached = _url_cache_path(url, cache_dir)
        if cached.is_file():
            _logger.info(f'{name}: loading weights from the official release, cached ({cached}).')
            return _checked_release(cached, url, release_digest, validate, cached, name)
        problem = _OFFLINE if _hub_offline() else _unreachable(url)
        if not problem:
            _logger.info(f'{name}: loading weights from the official release ({url}).')
            return _checked_release(_download_url_file(url, cached), url, release_digest, validate, cached, name)
        failures.append(f'the release file {url} is not cached and cannot be downloaded ({problem})')
    if failures:
        raise WeightsUnavailableError(f'Cannot get the pretrained weights of {name}: {"; ".join(failures)}.')
    raise RuntimeError(f'No pretrained weights are available for {name}.')
