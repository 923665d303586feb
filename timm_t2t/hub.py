"""Where pretrained T2T-ViT weights come from: the Hugging Face Hub first, the official release files second.

Each pretrained cfg names a Hub repo in timm's format (``model.safetensors`` + ``config.json``) under the
organisation in ``TIMM_T2T_HUB_ORG`` (read when the package is imported), and the reference release URL. Weights
already in the cache load without a request. A Hub repo that cannot be found falls back to the release file,
which the model's checkpoint filter converts on the fly. Every download is checked before use: a file that is
truncated or not a checkpoint raises an error and is removed from the cache, so the next attempt fetches it anew.
"""
import logging
import os
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

import torch
from huggingface_hub import hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
from timm.models import load_state_dict
from timm.models._hub import hf_split

__all__ = ['HUB_ORG_ENV', 'DEFAULT_HUB_ORG', 'InvalidCheckpointError', 'fetch_pretrained_file', 'hub_repo_id']

_logger = logging.getLogger(__name__)

HUB_ORG_ENV = 'TIMM_T2T_HUB_ORG'
DEFAULT_HUB_ORG = 'timm-t2t'
HUB_WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')  # as timm writes them, safetensors first
# the Hub has no such repo, revision or weight file (locally too, when offline): try the release file
_HUB_MISSING = (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError)

PathLike = Union[str, Path]


class InvalidCheckpointError(ValueError):
    """A downloaded weight file is truncated, corrupted or not a checkpoint of this model family."""


def hub_repo_id(model_name: str) -> str:
    """The Hub repo holding the weights of `model_name` ('architecture.tag') under the configured organisation."""
    return f'{os.environ.get(HUB_ORG_ENV, "").strip() or DEFAULT_HUB_ORG}/{model_name}'


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


def _download_url_file(url: str, cache_dir: Optional[PathLike]) -> str:
    directory = Path(cache_dir) if cache_dir else Path(torch.hub.get_dir()) / 'checkpoints'
    path = directory / os.path.basename(urllib.parse.urlparse(url).path)
    if not path.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(path), progress=False)  # into a temp file, moved when complete
        except OSError as e:
            raise OSError(f'Could not download {url} ({e}).') from e
    return str(path)


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


def fetch_pretrained_file(
        pretrained_cfg: Dict[str, Any],
        validate: Callable[[Dict[str, Any]], None],
        cache_dir: Optional[PathLike] = None,
) -> Optional[str]:
    """Local path of checked weights for a pretrained cfg: from the Hub, else from the release URL.

    Returns None when the cfg brings its own `file` or `state_dict` for timm to load.

    Args:
        pretrained_cfg: A resolved timm pretrained cfg (dict).
        validate: Raises if a loaded state dict is not a checkpoint of the model family.
        cache_dir: Cache directory for Hub and URL downloads (defaults: the Hub cache, torch.hub's checkpoints).
    """
    from_hub_name = pretrained_cfg.get('source') == 'hf-hub'  # created as 'hf-hub:ORG/REPO'
    if pretrained_cfg.get('state_dict') is not None or (pretrained_cfg.get('file') and not from_hub_name):
        return None
    name = '.'.join(filter(None, (pretrained_cfg.get('architecture'), pretrained_cfg.get('tag'))))
    hub_id, url = pretrained_cfg.get('hf_hub_id'), pretrained_cfg.get('url')
    if hub_id:
        repo_id, revision = hf_split(hub_id)
        try:
            path = _cached_hub_file(repo_id, revision, cache_dir) or _download_hub_file(repo_id, revision, cache_dir)
        except _HUB_MISSING as e:
            if from_hub_name or not url:
                raise
            _logger.warning(
                f'{name}: {hub_id} is not on the Hugging Face Hub ({type(e).__name__}); '
                f'falling back to the official release file {url}, converted on the fly.')
        else:
            _logger.info(f'{name}: loading weights from the Hugging Face Hub ({hub_id}).')
            return _checked(path, f'the Hugging Face Hub ({hub_id})', validate)
    if url:
        _logger.info(f'{name}: loading weights from the official release ({url}).')
        return _checked(_download_url_file(url, cache_dir), url, validate)
    raise RuntimeError(f'No pretrained weights are available for {name or "this model"}.')
