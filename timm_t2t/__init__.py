"""T2T-ViT (Tokens-to-Token Vision Transformer) for timm.

Installed, the package registers its ``t2t_vit_*`` models with timm whenever ``timm`` is imported (see
``_timm_t2t_autoload.py``), so ``timm.create_model('t2t_vit_14')`` works in any script. Importing this package
registers them too, and stays light: torch and timm load with the first model class used (or with timm).
``T2TPatchEmbed`` puts the Tokens-to-Token module in any of timm's ViTs (``embed_layer=T2TPatchEmbed``).
"""
import importlib
from typing import Any, List

from _timm_t2t_autoload import register_with_timm

from .version import __version__

_EXPORTS = {
    'CheckpointMismatchError': 'checkpoint',
    'ConvTokenizer': 'tokens_to_token',
    'T2TViT': 't2t_vit',
    'TokensToToken': 'tokens_to_token',
    'checkpoint_filter_fn': 't2t_vit',
    'remap_reference_keys': 'checkpoint',
    'T2TPatchEmbed': 'patch_embed',
}

__all__ = sorted(_EXPORTS) + ['__version__']

register_with_timm()


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f'.{_EXPORTS[name]}', __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_EXPORTS))
