"""The Tokens-to-Token module as a patch embedding for any of timm's ViTs.

    vit = timm.create_model('vit_small_patch16_224', embed_layer=T2TPatchEmbed)
    vit.patch_embed.load_tokens_to_token('81.5_T2T_ViT_14.pth.tar')  # the tokenizer of a T2T-ViT checkpoint

`T2TPatchEmbed` has the interface of timm's `PatchEmbed` (constructor arguments, `img_size`, `grid_size`,
`num_patches`, `feat_ratio()`, `dynamic_feat_size()`, `set_input_size()`, flattened, NCHW or NHWC output), so a
stride-16 ViT takes it in place of its hard patch split: training, `features_only`, `dynamic_img_size` and
gradient checkpointing work as with the ViT's own stem.

A class cannot be passed on a command line, so one such ViT is registered by name too:
`deit_tiny_patch16_224_t2t_stem`, DeiT-Tiny with this stem (no pretrained weights), which timm's `train.py` and
`validate.py` build with `--model` like any timm model.
"""
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import LayerType, get_act_layer, get_norm_layer
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer
from torch.jit import Final

from ._compat import make_layer
from .hub import read_checkpoint
from .checkpoint import describe_mismatch, normalize_state_dict
from .tokens_to_token import DEFAULT_SOFT_SPLITS, TokensToToken, adapt_in_chans, check_image_batch, img_size_2tuple

__all__ = ['T2TPatchEmbed']

_PREFIX = 'tokens_to_token.'


class T2TPatchEmbed(nn.Module):
    """Image to tokens through a Tokens-to-Token module (soft splits and T2T layers), timm's PatchEmbed interface.

    Its stride is the product of the soft splits' strides (16 by default), which must equal the ViT's patch size.
    Any input size works: the token grid follows the soft splits (with `dynamic_img_pad`, the image is first padded
    to a multiple of the stride, as PatchEmbed does).
    """
    flatten: Final[bool]
    output_nhwc: Final[bool]
    strict_img_size: Final[bool]
    dynamic_img_pad: Final[bool]
    img_size: Optional[Tuple[int, int]]
    grid_size: Optional[Tuple[int, int]]
    num_patches: Optional[int]

    def __init__(
            self,
            img_size: Optional[Union[int, Tuple[int, int]]] = 224,
            patch_size: Union[int, Tuple[int, int]] = 16,
            in_chans: int = 3,
            embed_dim: int = 768,
            norm_layer: Optional[Callable[..., nn.Module]] = None,
            flatten: bool = True,
            output_fmt: Optional[str] = None,
            bias: bool = True,
            strict_img_size: bool = True,
            dynamic_img_pad: bool = False,
            t2t_layer: str = 'performer',
            token_dim: int = 64,
            soft_splits: Sequence[Sequence[int]] = DEFAULT_SOFT_SPLITS,
            t2t_act_layer: LayerType = 'gelu',
            t2t_norm_layer: LayerType = nn.LayerNorm,
            device=None,
            dtype=None,
    ) -> None:
        """
        Args:
            img_size: Input image size (None: any size, no grid).
            patch_size: The ViT's patch size; must equal the stride of the soft splits.
            in_chans: Number of image channels.
            embed_dim: Width of the output tokens.
            norm_layer: Normalization of the output tokens (none by default).
            flatten: Output tokens (B, N, C) rather than a map, unless `output_fmt` says otherwise.
            output_fmt: 'NCHW' or 'NHWC' map output (timm's ViTs ask for NHWC with dynamic_img_size).
            bias: Bias in the projection to `embed_dim`.
            strict_img_size: Inputs must have `img_size`.
            dynamic_img_pad: Pad inputs to a multiple of the stride.
            t2t_layer: 'performer' or 'transformer' T2T layers.
            token_dim: Token width inside the T2T module.
            soft_splits: (kernel, stride, padding) of the three soft splits.
            t2t_act_layer: Activation of the T2T layers' MLPs.
            t2t_norm_layer: Normalization of the T2T layers (nn.LayerNorm, as T2T-ViT, so its weights load).
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.tokens_to_token = TokensToToken(
            in_chans=in_chans,
            embed_dim=embed_dim,
            token_dim=token_dim,
            t2t_layer=t2t_layer,
            soft_splits=soft_splits,
            proj_bias=bias,
            act_layer=get_act_layer(t2t_act_layer),
            norm_layer=get_norm_layer(t2t_norm_layer),
            **dd,
        )
        self.in_chans = in_chans
        self.stride = self.tokens_to_token.reductions[-1]
        self.patch_size = self._check_patch_size(patch_size)
        if output_fmt is not None and output_fmt not in ('NCHW', 'NHWC'):
            raise ValueError(f"T2TPatchEmbed output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}.")
        self.flatten = flatten and output_fmt is None
        self.output_nhwc = output_fmt == 'NHWC'
        self.strict_img_size = strict_img_size
        self.dynamic_img_pad = dynamic_img_pad
        self._set_img_size(img_size)
        self.norm = make_layer(norm_layer, embed_dim, **dd) if norm_layer else nn.Identity()

    def _check_patch_size(self, patch_size: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
        size = tuple(patch_size) if isinstance(patch_size, (tuple, list)) else (patch_size, patch_size)
        if size != (self.stride, self.stride):
            raise ValueError(
                f'T2TPatchEmbed has stride {self.stride} (its soft splits), so it replaces the patch embedding of a '
                f'patch-{self.stride} ViT; got patch_size={patch_size}.')
        return size

    def _set_img_size(self, img_size: Optional[Union[int, Tuple[int, int]]]) -> None:
        if img_size is None:
            self.img_size, self.grid_size, self.num_patches = None, None, None
            return
        self.img_size = img_size_2tuple(img_size)
        self.grid_size = self.dynamic_feat_size(self.img_size)
        if self.grid_size[0] < 1 or self.grid_size[1] < 1:
            raise ValueError(f'img_size {self.img_size} is too small for the soft splits of the T2T module.')
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def feat_ratio(self, as_scalar: bool = True) -> Union[Tuple[int, int], int]:
        """The stride of the output tokens."""
        return self.stride if as_scalar else (self.stride, self.stride)

    def dynamic_feat_size(self, img_size: Tuple[int, int]) -> Tuple[int, int]:
        """Token grid for an input of the given size (after padding, with `dynamic_img_pad`)."""
        height, width = img_size[0], img_size[1]
        if self.dynamic_img_pad:
            height += (self.stride - height % self.stride) % self.stride
            width += (self.stride - width % self.stride) % self.stride
        return self.tokens_to_token.feat_size(height, width)

    def set_input_size(
            self,
            img_size: Optional[Union[int, Tuple[int, int]]] = None,
            patch_size: Optional[Union[int, Tuple[int, int]]] = None,
    ) -> None:
        """Change the input size; the patch size (the soft splits' stride) cannot change."""
        if patch_size is not None:
            self._check_patch_size(patch_size)
        if img_size is not None:
            self._set_img_size(img_size)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the T2T layers in backward instead of keeping their activations."""
        self.tokens_to_token.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def load_tokens_to_token(
            self,
            checkpoint: Union[str, Path, Mapping[str, Any]],
            strict: bool = True,
            use_ema: bool = True,
    ) -> List[str]:
        """Load the tokenizer weights (`tokens_to_token.*`) of a T2T-ViT checkpoint, in the reference's format or
        timm's: a file or a loaded checkpoint / state dict. The first T2T layer is adapted to this stem's channel
        count.

        Args:
            checkpoint: Checkpoint file or dict.
            strict: Raise a ValueError naming the weights that do not fit (e.g. a projection to another width);
                otherwise load those that fit.
            use_ema: Prefer the checkpoint's EMA weights, as timm does.

        Returns:
            The names of this stem's weights that were not loaded (empty when strict).
        """
        source = str(checkpoint) if isinstance(checkpoint, (str, Path)) else None
        if source is not None:
            checkpoint = read_checkpoint(source, use_ema=use_ema)
        elif not use_ema:
            checkpoint = {k: v for k, v in checkpoint.items() if k not in ('state_dict_ema', 'model_ema')}
        state_dict = adapt_in_chans(normalize_state_dict(dict(checkpoint)), self)
        weights = {k: v for k, v in state_dict.items() if k.startswith(_PREFIX)}
        name = source or 'the checkpoint'
        if not weights:
            raise ValueError(f'{name} holds no T2T-ViT tokenizer weights (no tokens_to_token.* keys).')
        own = {k: v for k, v in self.state_dict().items() if k.startswith(_PREFIX)}
        if strict:
            mismatch = describe_mismatch(own, weights)
            if mismatch:
                raise ValueError(f'The tokenizer in {name} does not fit this T2TPatchEmbed: {mismatch}.')
        fitting = {k: v for k, v in weights.items() if k in own and v.shape == own[k].shape}
        self.tokens_to_token.load_state_dict({k[len(_PREFIX):]: v for k, v in fitting.items()}, strict=False)
        return [k for k in own if k not in fitting]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        img_size = self.img_size
        if img_size is None:
            check_image_batch(x, self.in_chans, (0, 0), False)
        else:
            check_image_batch(x, self.in_chans, img_size, self.strict_img_size)
        if self.dynamic_img_pad:
            height, width = x.shape[-2], x.shape[-1]
            x = F.pad(x, [0, (self.stride - width % self.stride) % self.stride,
                          0, (self.stride - height % self.stride) % self.stride])
        grid = self.tokens_to_token.feat_size(x.shape[-2], x.shape[-1])
        x = self.norm(self.tokens_to_token.forward_tokens(x))
        if self.flatten:
            return x
        x = x.reshape(x.shape[0], grid[0], grid[1], x.shape[-1])
        return x if self.output_nhwc else x.permute(0, 3, 1, 2)


default_cfgs = generate_default_cfgs({
    'deit_tiny_patch16_224_t2t_stem': dict(
        url='', num_classes=1000, input_size=(3, 224, 224), pool_size=None, crop_pct=0.9, interpolation='bicubic',
        fixed_input_size=True, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
        first_conv=f'patch_embed.{_PREFIX}attention1.attn.qkv', classifier='head'),
})


@register_model
def deit_tiny_patch16_224_t2t_stem(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """DeiT-Tiny (timm's `deit_tiny_patch16_224`: 12 blocks of width 192) with `T2TPatchEmbed` as its stem in place
    of its hard patch split: the Tokens-to-Token module alone on a plain ViT. No pretrained weights."""
    model_args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, embed_layer=T2TPatchEmbed)
    return build_model_with_cfg(
        VisionTransformer, 'deit_tiny_patch16_224_t2t_stem', pretrained,
        feature_cfg=dict(out_indices=kwargs.pop('out_indices', 3), feature_cls='getter'), **dict(model_args, **kwargs))
