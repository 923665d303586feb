"""T2T-ViT (Tokens-to-Token Vision Transformer) for timm.

Importing this package registers the ``t2t_vit_*`` models with timm. Installed, it is imported for you as soon as
``timm`` is (see ``_timm_t2t_autoload.py``), so ``timm.create_model('t2t_vit_14')`` works in any script.
``T2TPatchEmbed`` puts the Tokens-to-Token module in any of timm's ViTs (``embed_layer=T2TPatchEmbed``).
"""
from .patch_embed import T2TPatchEmbed
from .t2t_vit import ConvTokenizer, T2TViT, TokensToToken, checkpoint_filter_fn, remap_reference_keys
from .version import __version__

__all__ = [
    'ConvTokenizer', 'T2TPatchEmbed', 'T2TViT', 'TokensToToken', 'checkpoint_filter_fn', 'remap_reference_keys',
    '__version__',
]
