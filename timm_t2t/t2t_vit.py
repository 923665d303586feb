""" T2T-ViT: Tokens-to-Token Vision Transformer

A PyTorch implementation of `Tokens-to-Token ViT: Training Vision Transformers from Scratch on ImageNet`
    - https://arxiv.org/abs/2101.11986 (ICCV 2021)

A Tokens-to-Token module (`tokens_to_token.py`) tokenizes the image progressively into stride-16 tokens; a ViT
backbone runs on them. This file holds the backbone, its checkpoint filter, the pretrained configs and the entry
points.

Checkpoints released with the reference implementation (https://github.com/yitu-opensource/T2T-ViT) load as
they are and give its logits; `checkpoint_filter_fn` maps their keys.
"""
import logging
import math
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Type, Union

import torch
import torch.nn as nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import LayerType, Mlp, get_act_layer, get_norm_layer, resample_abs_pos_embed, trunc_normal_
from timm.models import (
    build_model_with_cfg,
    clean_state_dict,
    generate_default_cfgs,
    register_model,
    resolve_pretrained_cfg,
)
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import global_pool_nlc
from torch.jit import Final

from ._compat import (
    Block,
    calculate_drop_path_rates,
    checkpoint,
    checkpoint_seq,
    get_device_dtype,
    has_model_traits,
    make_layer,
    register_load_state_dict_pre_hook,
    update_model_input_size,
)
from .blocks import Attention, DenseBlock, GhostAttention, GhostMlp, SqueezeExciteAttention, Transition
from .checkpoint import (
    CheckpointMismatchError,
    check_t2t_checkpoint,
    describe_mismatch,
    normalize_state_dict,
    remap_reference_keys,
)
from .digests import FileDigest
from .hub import fetch_pretrained_file, hub_repo_id
from .tokens_to_token import (
    DEFAULT_SOFT_SPLITS,
    ConvTokenizer,
    PerformerAttention,
    TokensToToken,
    adapt_in_chans,
    check_image_batch,
    img_size_2tuple,
)

__all__ = ['T2TViT', 'checkpoint_filter_fn', 'model_args_from_state_dict']

_logger = logging.getLogger(__name__)

T2T_LAYERS = ('performer', 'transformer', 'convolution')
GLOBAL_POOLS = ('', 'token', 'avg', 'max', 'avgmax')


# ---------------------------------------------------------------------------------------------------------------
# Backbone
# ---------------------------------------------------------------------------------------------------------------

def sinusoid_pos_embed(num_positions: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    """Fixed sine-cosine table (1, num_positions, dim) over flattened token positions, as in the reference.

    Entry (p, j) is sin(p / 10000^(2 * (j // 2) / dim)) for even j and cos(...) for odd j, computed in float64.
    """
    position = torch.arange(num_positions, dtype=torch.float64).unsqueeze(1)
    channel = torch.arange(dim)
    angle = position / torch.pow(10000., 2 * (channel // 2).double() / dim)
    table = torch.where(channel % 2 == 0, angle.sin(), angle.cos())
    return table.unsqueeze(0).to(device=device, dtype=dtype or torch.float32)


def _stage_depths(depth: Union[int, Sequence[int]], growth_rate: int, block_fn: Callable[..., nn.Module]) -> List[int]:
    """The backbone's depth as a list of stage depths (one stage unless the backbone is dense), checked."""
    if not growth_rate:
        if not isinstance(depth, int):
            raise ValueError(f'depth must be an int unless growth_rate is set (a dense backbone), got {depth}.')
        return [depth]
    if isinstance(depth, int) or not depth:
        raise ValueError(f'A dense backbone (growth_rate={growth_rate}) takes depth as blocks per stage, got {depth}.')
    if not (isinstance(block_fn, type) and issubclass(block_fn, DenseBlock)):
        raise ValueError('A dense backbone (growth_rate > 0) needs block_fn=DenseBlock.')
    return list(depth)


def _dense_blocks(
        block_fn: Callable[..., nn.Module],
        width: int,
        stage_depths: Sequence[int],
        growth_rate: int,
        drop_path_rates: Sequence[float],
        act_layer: Type[nn.Module],
        block_args: Dict[str, Any],
) -> Tuple[List[nn.Module], List[int]]:
    """DenseNet-style stages: each block appends `growth_rate` channels, a transition halves the width between
    stages. Returns the modules in order and the width each one outputs.

    Stochastic depth rises linearly over the blocks. The reference indexes its rates by stage instead, which only
    changes training; in eval the path is the same.
    """
    modules, widths = [], []
    for stage, num_blocks in enumerate(stage_depths):
        for _ in range(num_blocks):
            drop_path = drop_path_rates[len(modules) - stage]
            modules.append(block_fn(dim=width, growth_rate=growth_rate, drop_path=drop_path, **block_args))
            width += growth_rate
            widths.append(width)
        if stage < len(stage_depths) - 1:
            modules.append(Transition(width, width // 2, act_layer=act_layer, device=block_args['device'],
                                      dtype=block_args['dtype']))
            width //= 2
            widths.append(width)
    return modules, widths


class T2TViT(nn.Module):
    """T2T-ViT: a Tokens-to-Token module, then a ViT backbone on its tokens.

    The positional table is the reference's fixed sinusoid (a buffer, not trained), built for `img_size`. Inputs
    must have that size unless `dynamic_img_size=True`, when the table is resampled to any input size.

    The paper's ablations are options: `block_fn`, `attn_layer` and `mlp_layer` choose the backbone's parts
    (squeeze-excitation, ghost), `growth_rate` with per-stage depths makes it dense, `t2t_layer='convolution'`
    replaces the T2T module by convolutions (one 16x16 convolution: ViT's hard split).
    """
    dynamic_img_size: Final[bool]

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'token',
            embed_dim: int = 768,
            depth: Union[int, Sequence[int]] = 12,
            num_heads: int = 12,
            mlp_ratio: float = 4.,
            qkv_bias: bool = False,
            t2t_layer: str = 'performer',
            token_dim: int = 64,
            soft_splits: Sequence[Sequence[int]] = DEFAULT_SOFT_SPLITS,
            growth_rate: int = 0,
            dynamic_img_size: bool = False,
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            norm_layer: Optional[LayerType] = None,
            act_layer: Optional[LayerType] = None,
            block_fn: Callable[..., nn.Module] = Block,
            attn_layer: Type[nn.Module] = Attention,
            mlp_layer: Type[nn.Module] = Mlp,
            device=None,
            dtype=None,
    ) -> None:
        """
        Args:
            img_size: Input image size, int or (height, width).
            in_chans: Number of image channels.
            num_classes: Number of classes of the head, 0 for none.
            global_pool: Pooling of the final tokens: 'token' (class token), 'avg', 'max', 'avgmax' or '' (none).
            embed_dim: Backbone width (the input width of a dense backbone).
            depth: Number of backbone blocks; for a dense backbone, the number of blocks of each stage.
            num_heads: Number of attention heads in the backbone.
            mlp_ratio: Backbone MLP hidden width as a multiple of the block width.
            qkv_bias: Bias in the backbone's q, k, v projections.
            t2t_layer: Kind of T2T layer, 'performer' or 'transformer'; or 'convolution' for convolutions instead
                of the T2T module, one per soft split.
            token_dim: Token width inside the T2T module.
            soft_splits: (kernel, stride, padding) of each soft split: three for a T2T module, any number of
                convolutions for t2t_layer='convolution'.
            growth_rate: Channels each block of a dense backbone adds (0: not dense).
            dynamic_img_size: Accept any input size, resampling the positional table at run time.
            drop_rate: Dropout before the head.
            pos_drop_rate: Dropout after adding the positional table.
            proj_drop_rate: Dropout after the backbone's attention projection and MLP.
            attn_drop_rate: Dropout on backbone attention weights.
            drop_path_rate: Stochastic depth rate, increasing linearly over the blocks.
            norm_layer: Normalization layer (default nn.LayerNorm, eps 1e-5, as the reference).
            act_layer: MLP activation (default GELU).
            block_fn: Backbone block (timm's `Block` interface; `DenseBlock` with `growth_rate`).
            attn_layer: Attention of each block (`Attention`, `SqueezeExciteAttention`, `GhostAttention`).
            mlp_layer: MLP of each block (timm's `Mlp`, `GhostMlp`).
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f'Unknown global_pool {global_pool!r}, expected one of {GLOBAL_POOLS}.')
        if t2t_layer not in T2T_LAYERS:
            raise ValueError(f'Unknown T2T layer {t2t_layer!r}, expected one of {T2T_LAYERS}.')
        stage_depths = _stage_depths(depth, growth_rate, block_fn)
        norm_layer = get_norm_layer(norm_layer) or nn.LayerNorm
        act_layer = get_act_layer(act_layer) or nn.GELU

        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.dynamic_img_size = dynamic_img_size
        self.grad_checkpointing = False
        if t2t_layer != 'convolution':
            # the first layer is a LayerNorm + Linear on unfolded patches, not a conv: checkpoint_filter_fn adapts it
            self._traits = {'first_conv': None}

        if t2t_layer == 'convolution':
            self.tokens_to_token = ConvTokenizer(
                in_chans=in_chans, embed_dim=embed_dim, token_dim=token_dim, soft_splits=soft_splits, **dd)
        else:
            self.tokens_to_token = TokensToToken(
                in_chans=in_chans,
                embed_dim=embed_dim,
                token_dim=token_dim,
                t2t_layer=t2t_layer,
                soft_splits=soft_splits,
                act_layer=act_layer,
                norm_layer=norm_layer,
                **dd,
            )
        self.num_stem_features = len(self.tokens_to_token.map_info)
        self.img_size = img_size_2tuple(img_size)
        self.grid_size = self._grid_size(self.img_size)
        self.cls_token = nn.Parameter(torch.empty(1, 1, embed_dim, **dd))
        self.register_buffer('pos_embed', torch.empty(1, self.grid_size[0] * self.grid_size[1] + 1, embed_dim, **dd))
        self.pos_drop = nn.Dropout(pos_drop_rate)

        block_args = dict(
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            proj_drop=proj_drop_rate,
            attn_drop=attn_drop_rate,
            act_layer=act_layer,
            norm_layer=norm_layer,
            mlp_layer=mlp_layer,
            attn_layer=attn_layer,
            **dd,
        )
        dpr = calculate_drop_path_rates(drop_path_rate, sum(stage_depths))
        if growth_rate:
            blocks, widths = _dense_blocks(block_fn, embed_dim, stage_depths, growth_rate, dpr, act_layer, block_args)
        else:
            blocks = [block_fn(dim=embed_dim, drop_path=dpr[i], **block_args) for i in range(stage_depths[0])]
            widths = [embed_dim] * len(blocks)
        self.blocks = nn.Sequential(*blocks)
        stride = self.tokens_to_token.reductions[-1]
        self.feature_info = [
            dict(info, module=f'tokens_to_token.{info["module"]}') for info in self.tokens_to_token.map_info
        ] + [dict(module=f'blocks.{i}', num_chs=width, reduction=stride) for i, width in enumerate(widths)]
        self.num_features = self.head_hidden_size = widths[-1]
        self.norm = make_layer(norm_layer, self.num_features, **dd)

        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()

        self.init_weights()
        register_load_state_dict_pre_hook(self, _load_state_dict_pre_hook)

    def _grid_size(self, img_size: Tuple[int, int]) -> Tuple[int, int]:
        grid = self.tokens_to_token.feat_size(img_size[0], img_size[1])
        if grid[0] < 1 or grid[1] < 1:
            raise ValueError(f'img_size {img_size} is too small for the soft splits of the T2T module.')
        return grid

    def init_weights(self) -> None:
        """Initialize as the reference: trunc-normal Linear weights (std .02), zero biases, unit LayerNorms,
        trunc-normal class token, sinusoid positional table, fresh Performer random features."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, PerformerAttention):
                module.reset_random_features()
        trunc_normal_(self.cls_token, std=.02)
        with torch.no_grad():
            self.pos_embed.copy_(sinusoid_pos_embed(self.pos_embed.shape[1], self.embed_dim))

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Load weights in this model's format or the reference's (prefixes, key names and the positional
        table's size are converted). With `strict`, weights that do not fit raise one RuntimeError naming them."""
        prepared = OrderedDict(_prepare_state_dict(dict(state_dict), self, root=True))
        if hasattr(state_dict, '_metadata'):
            prepared._metadata = state_dict._metadata
        if strict:
            mismatch = describe_mismatch(self.state_dict(), prepared)
            if mismatch:
                raise CheckpointMismatchError(f'The checkpoint does not fit this {type(self).__name__}', mismatch)
        return super().load_state_dict(prepared, strict=strict, assign=assign)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        return {'cls_token'}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^cls_token|^pos_embed|^tokens_to_token',
            blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the T2T layers and the blocks in backward instead of keeping their activations."""
        self.grad_checkpointing = enable
        self.tokens_to_token.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in GLOBAL_POOLS:
                raise ValueError(f'Unknown global_pool {global_pool!r}, expected one of {GLOBAL_POOLS}.')
            if global_pool == 'token' and self.cls_token is None:
                raise ValueError("global_pool='token' needs the class token, which pruning removed.")
            self.global_pool = global_pool
        dd = get_device_dtype(self)
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.head.train(self.training)

    def set_input_size(self, img_size: Union[int, Tuple[int, int]]) -> None:
        """Build the model for another input size: the positional table is resampled to the new token grid."""
        img_size = img_size_2tuple(img_size)
        grid_size = self._grid_size(img_size)
        if grid_size != self.grid_size:
            self.pos_embed = resample_abs_pos_embed(
                self.pos_embed,
                new_size=list(grid_size),
                old_size=list(self.grid_size),
                num_prefix_tokens=1,
                antialias=False,
                verbose=True,
            )
        self.img_size, self.grid_size = img_size, grid_size
        update_model_input_size(self, img_size)

    def _token_grid(self, x: torch.Tensor) -> Tuple[int, int]:
        """Grid of the tokens the T2T module makes of `x`, after checking that `x` is a batch of images the model
        takes (channels, dtype and, unless it is dynamic, size)."""
        check_image_batch(x, self.in_chans, self.img_size, not self.dynamic_img_size)
        if self.dynamic_img_size:
            return self.tokens_to_token.feat_size(x.shape[-2], x.shape[-1])
        return self.grid_size

    def _pos_embed(self, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        if self.dynamic_img_size:
            pos_embed = resample_abs_pos_embed(
                self.pos_embed,
                new_size=[grid[0], grid[1]],
                old_size=[self.grid_size[0], self.grid_size[1]],
                num_prefix_tokens=1,
                antialias=False,
            )
        else:
            pos_embed = self.pos_embed
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.pos_drop(x + pos_embed)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            return_prefix_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward features that also returns intermediates, a feature pyramid (strides 4, 8 and 16 by default).

        Indices count over `feature_info`: first the feature maps of the T2T module (the outputs of its two T2T
        layers: token_dim channels, strides 4 and 8), then the outputs of the blocks (stride 16).

        Args:
            x: Input image tensor.
            indices: Take the last n features if int, all if None, those listed if a sequence.
            return_prefix_tokens: Pair each intermediate with its prefix (class) token; T2T maps have none.
            norm: Apply the final norm to block intermediates (those of its width, in a dense backbone).
            stop_early: Stop running blocks after the last intermediate taken.
            output_fmt: 'NCHW' maps or 'NLC' tokens.
            intermediates_only: Return only the intermediates.
        """
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}.")
        reshape = output_fmt == 'NCHW'
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)

        B = x.shape[0]
        grid = self._token_grid(x)
        x, t2t_maps = self.tokens_to_token(x)
        intermediates: List[torch.Tensor] = []
        prefix_tokens: List[torch.Tensor] = []
        for i, fmap in enumerate(t2t_maps):
            if i in take_indices:
                tokens = fmap.flatten(2).transpose(1, 2)
                intermediates.append(fmap if reshape else tokens)
                prefix_tokens.append(tokens[:, :0])
        if self.cls_token is not None:
            x = self._pos_embed(x, grid)

        if torch.jit.is_scripting() or not stop_early:
            blocks = self.blocks
        else:
            blocks = self.blocks[:max(max_index - self.num_stem_features + 1, 0)]
        for i, blk in enumerate(blocks):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x)
            else:
                x = blk(x)
            if i + self.num_stem_features in take_indices:
                y = self.norm(x) if norm and x.shape[-1] == self.num_features else x
                prefix_tokens.append(y[:, :self.num_prefix_tokens])
                y = y[:, self.num_prefix_tokens:]
                if reshape:
                    y = y.reshape(B, grid[0], grid[1], -1).permute(0, 3, 1, 2).contiguous()
                intermediates.append(y)

        if not torch.jit.is_scripting() and return_prefix_tokens:
            intermediates = list(zip(intermediates, prefix_tokens))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Remove the layers after the last of `indices` (counted over `feature_info`).

        Pruning to a T2T layer output also removes the T2T layers after it, the projection, the class token and
        the final norm: `forward_features` then returns that layer's tokens.
        """
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        if max_index < self.num_stem_features:
            self.tokens_to_token.prune(max_index + 1)
            self.cls_token = None
            self.num_prefix_tokens = 0
            self.blocks = nn.Sequential()
            self.norm = nn.Identity()
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        else:
            self.blocks = self.blocks[:max_index - self.num_stem_features + 1]
            width = self.feature_info[max_index]['num_chs']
            if prune_norm or width != self.num_features:  # a dense backbone's final norm fits its last width only
                self.norm = nn.Identity()
            self.num_features = self.head_hidden_size = width
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized tokens (B, 1 + N, embed_dim), the class token first."""
        grid = self._token_grid(x)
        x = self.tokens_to_token.forward_tokens(x)
        if self.cls_token is not None:
            x = self._pos_embed(x, grid)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = global_pool_nlc(x, pool_type=self.global_pool, num_prefix_tokens=self.num_prefix_tokens)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.forward_head(x)


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------------

def _source_grid(num_tokens: int, model: T2TViT) -> Tuple[int, int]:
    """Token grid of a checkpoint's positional table: that of its pretrained cfg if it fits, else square."""
    cfg_size = getattr(model, 'pretrained_cfg', {}).get('input_size')
    if cfg_size is not None:
        grid = model.tokens_to_token.feat_size(cfg_size[-2], cfg_size[-1])
        if grid[0] * grid[1] == num_tokens:
            return grid
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(
            f'Cannot tell the token grid of a checkpoint pos_embed with {num_tokens} tokens (not square).')
    return side, side


def _resample_pos_embed(state_dict: Dict[str, torch.Tensor], model: T2TViT) -> Dict[str, torch.Tensor]:
    """Resample a checkpoint's positional table to the model's token grid (class entry kept), bicubic as the
    reference does. A table of another width is left for load_state_dict to report."""
    pos_embed = state_dict.get('pos_embed')
    target = model.pos_embed
    if pos_embed is None or pos_embed.ndim != 3 or pos_embed.shape[-1] != target.shape[-1]:
        return state_dict
    if pos_embed.shape[1] != target.shape[1]:
        state_dict['pos_embed'] = resample_abs_pos_embed(
            pos_embed,
            new_size=list(model.grid_size),
            old_size=list(_source_grid(pos_embed.shape[1] - 1, model)),
            num_prefix_tokens=1,
            antialias=False,
            verbose=True,
        )
    return state_dict


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: T2TViT) -> Dict[str, torch.Tensor]:
    """Convert a reference or timm checkpoint for `model`: normalize it, resample the positional table to the
    model's grid and adapt the first layer to the model's channel count."""
    state_dict = _resample_pos_embed(normalize_state_dict(state_dict), model)
    return adapt_in_chans(state_dict, model)


def model_args_from_state_dict(
        state_dict: Mapping[str, torch.Tensor],
        soft_splits: Optional[Sequence[Sequence[int]]] = None,
) -> Dict[str, Any]:
    """The classes, channels and (square) input size a normalized state dict was made for, read from its weights.

    Args:
        state_dict: Weights in this model's key format (see `normalize_state_dict`).
        soft_splits: The model's soft splits if not the default ones (they set the stride and first kernel).
    """
    soft_splits = soft_splits or DEFAULT_SOFT_SPLITS
    args = {}
    first = state_dict.get('tokens_to_token.attention1.attn.qkv.weight')
    if first is not None:
        args['in_chans'] = first.shape[1] // soft_splits[0][0] ** 2
    elif 'tokens_to_token.convs.0.weight' in state_dict:
        args['in_chans'] = state_dict['tokens_to_token.convs.0.weight'].shape[1]
    if 'head.weight' in state_dict:
        args['num_classes'] = state_dict['head.weight'].shape[0]
    if 'pos_embed' in state_dict:
        num_tokens = state_dict['pos_embed'].shape[1] - 1
        side = math.isqrt(num_tokens)
        if side * side == num_tokens:
            args['img_size'] = side * math.prod(s[1] for s in soft_splits)
    return args


def _prepare_state_dict(state_dict: Dict[str, Any], model: T2TViT, root: bool) -> Dict[str, torch.Tensor]:
    if root:
        state_dict = clean_state_dict(state_dict)
    return _resample_pos_embed(remap_reference_keys(state_dict), model)


def _load_state_dict_pre_hook(
        module: T2TViT,
        state_dict: Dict[str, Any],
        prefix: str,
        local_metadata: Dict[str, Any],
        strict: bool,
        missing_keys: List[str],
        unexpected_keys: List[str],
        error_msgs: List[str],
) -> None:
    """Let `load_state_dict` take reference state dicts too, at any depth: prefixes, key names, table size."""
    own = {k[len(prefix):]: state_dict.pop(k) for k in [k for k in state_dict if k.startswith(prefix)]}
    state_dict.update({prefix + k: v for k, v in _prepare_state_dict(own, module, root=not prefix).items()})


# ---------------------------------------------------------------------------------------------------------------
# Pretrained configs
# ---------------------------------------------------------------------------------------------------------------

_RELEASE_URL = 'https://github.com/yitu-opensource/T2T-ViT/releases/download/main/'
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)  # used for both CIFAR fine-tunes


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    return {
        'url': url,
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': None,
        'crop_pct': 0.9,
        'interpolation': 'bicubic',
        'fixed_input_size': True,
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'tokens_to_token.attention1.attn.qkv',
        'classifier': 'head',
        'license': 'bsd-3-clause-clear',
        'origin_url': 'https://github.com/yitu-opensource/T2T-ViT',
        'paper_ids': 'arXiv:2101.11986',
        'paper_name': 'Tokens-to-Token ViT: Training Vision Transformers from Scratch on ImageNet',
        **kwargs,
    }


def _cifar_cfg(num_classes: int) -> Dict[str, Any]:
    # fine-tuned and evaluated on CIFAR images resized to 224 (bilinear), no center crop
    return dict(num_classes=num_classes, mean=CIFAR10_MEAN, std=CIFAR10_STD, crop_pct=1.0, interpolation='bilinear')


# (pretrained tag, release file, cfg changes): weights on the Hub, the release file as the fallback source
_RELEASES = [
    ('t2t_vit_7.in1k', '71.7_T2T_ViT_7.pth.tar', {}),
    ('t2t_vit_10.in1k', '75.2_T2T_ViT_10.pth.tar', {}),
    ('t2t_vit_12.in1k', '76.5_T2T_ViT_12.pth.tar', {}),
    ('t2t_vit_14.in1k', '81.5_T2T_ViT_14.pth.tar', {}),
    ('t2t_vit_14.in1k_384', '83.3_T2T_ViT_14.pth.tar', dict(input_size=(3, 384, 384))),
    ('t2t_vit_14.in1k_ft_cifar10', 'cifar10_t2t-vit_14_98.3.pth', _cifar_cfg(10)),
    ('t2t_vit_14.in1k_ft_cifar100', 'cirfar100_t2t-vit-14_88.4.pth', _cifar_cfg(100)),
    ('t2t_vit_19.in1k', '81.9_T2T_ViT_19.pth.tar', {}),
    ('t2t_vit_19.in1k_ft_cifar10', 'cifar10_t2t-vit_19_98.4.pth', _cifar_cfg(10)),
    ('t2t_vit_19.in1k_ft_cifar100', 'cifar100_t2t-vit-19_89.0.pth', _cifar_cfg(100)),
    ('t2t_vit_24.in1k', '82.3_T2T_ViT_24.pth.tar', {}),
    ('t2t_vit_24.tl_in1k', '84.2_T2T_ViT_24.pth.tar', dict(notes=('trained with token labeling',))),
    ('t2t_vit_t_14.in1k', '81.7_T2T_ViTt_14.pth.tar', {}),
    ('t2t_vit_t_19.in1k', '82.4_T2T_ViTt_19.pth.tar', {}),
    ('t2t_vit_t_24.in1k', '82.6_T2T_ViTt_24.pth.tar', {}),
]

# Size and SHA-384 of release files as published by others: a download must match before it is converted or cached.
# Source: the OpenVINO Open Model Zoo, models/public/t2t-vit-14/model.yml (its checksums are SHA-384). Release files
# not listed are checked against the digest recorded at their first download instead.
RELEASE_DIGESTS: Dict[str, FileDigest] = {
    _RELEASE_URL + '81.5_T2T_ViT_14.pth.tar': FileDigest(
        size=86_212_823,
        sha384='98c8ae06a1e9997f3e83ad2dfbac49985bf7bd7723eb64e4b8462338163be02657998f0bd9f8997367417003caeaf7a1'),
}

# The Hub commit each tag's weights are pinned to (`timm-t2t convert --push-to-hub` prints it): a pinned tag
# downloads that commit and nothing else, whatever the repo holds later. None is published yet.
_HUB_COMMITS: Dict[str, str] = {}

_CONV_STEM = dict(first_conv='tokens_to_token.convs.0')

default_cfgs = generate_default_cfgs({
    **{name: _cfg(url=_RELEASE_URL + file, hf_hub_id=hub_repo_id(name, _HUB_COMMITS.get(name)), **kwargs)
       for name, file, kwargs in _RELEASES},
    't2t_vit_14_resnext': _cfg(),
    't2t_vit_14_wide': _cfg(),
    # the paper's ablations (no released weights)
    't2t_vit_14_se': _cfg(),
    't2t_vit_dense': _cfg(),
    't2t_vit_16_ghost': _cfg(),
    't2t_vit_14_wo_t2t': _cfg(**_CONV_STEM),
    't2t_vit_c_14': _cfg(**_CONV_STEM),
    't2t_vit_d768_4': _cfg(),
})


def _pretrained_file_overlay(variant: str, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """The pretrained cfg overlay that points timm at checked local weights (Hub first, then the release)."""
    overlay = dict(kwargs.get('pretrained_cfg_overlay') or {})
    pretrained_cfg = resolve_pretrained_cfg(
        variant, pretrained_cfg=kwargs.get('pretrained_cfg'), pretrained_cfg_overlay=overlay)
    path = fetch_pretrained_file(
        pretrained_cfg.to_dict(), check_t2t_checkpoint, cache_dir=kwargs.get('cache_dir'),
        release_digest=RELEASE_DIGESTS.get(pretrained_cfg.url))
    if path is not None:
        overlay.update(file=path, source='')  # timm then loads this file through checkpoint_filter_fn
    return overlay


def _default_out_indices(kwargs: Dict[str, Any]) -> Tuple[int, ...]:
    """features_only: every feature map of the T2T module (strides 4 and 8), then the last block (stride 16)."""
    if kwargs.get('t2t_layer') == 'convolution':
        num_maps = len(kwargs.get('soft_splits', DEFAULT_SOFT_SPLITS)) - 1
    else:
        num_maps = 2
    return tuple(range(num_maps)) + (-1,)


def _create_t2t_vit(variant: str, pretrained: bool = False, **kwargs) -> T2TViT:
    out_indices = kwargs.pop('out_indices', None) or _default_out_indices(kwargs)
    if pretrained:
        kwargs['pretrained_cfg_overlay'] = _pretrained_file_overlay(variant, kwargs)
        if not has_model_traits and kwargs.get('in_chans', 3) != 3 and kwargs.get('t2t_layer') != 'convolution':
            # timm before 1.0.31 adapts `first_conv` as a convolution; checkpoint_filter_fn adapts this Linear
            kwargs['pretrained_cfg_overlay']['first_conv'] = None
    return build_model_with_cfg(
        T2TViT,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


# ---------------------------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------------------------

@register_model
def t2t_vit_7(pretrained: bool = False, **kwargs) -> T2TViT:
    """T2T-ViT-7: Performer T2T layers, 7 blocks of width 256."""
    model_args = dict(t2t_layer='performer', embed_dim=256, depth=7, num_heads=4, mlp_ratio=2.)
    return _create_t2t_vit('t2t_vit_7', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def t2t_vit_10(pretrained: bool = False, **kwargs) -> T2TViT:
    """T2T-ViT-10: Performer T2T layers, 10 blocks of width 256."""
    model_args = dict(t2t_layer='performer', embed_dim=256, depth=10, num_heads=4, mlp_ratio=2.)
    return _create_t2t_vit('t2t_vit_10', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def t2t_vit_12(pretrained: bool = False, **kwargs) -> T2TViT:
    """T2T-ViT-12: Performer T2T layers, 12 blocks of width 256."""
    model_args = dict(t2t_layer='performer', embed_dim=256, depth=12, num_heads=4, mlp_ratio=2.)
    return _create_t2t_vit('t2t_vit_12', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def t2t_vit_14(pretrained: bool = False, **kwargs) -> T2TViT:
    """T2T-ViT-14: Performer T2T layers, 14 blocks of width 384."""
    model_args = dict(t2t_layer='performer', embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.)
    return _create_t2t_vit('t2t_vit_14', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def t2t_vit_19(pretrained: bool = False, **kwargs) -> T2TViT:
    """T2T-ViT-19: Performer T2T layers, 19 blocks of width 448."""
    model_args = dict(t2t_layer='performer', embed_dim=448, depth=19, num_heads=7, mlp_ratio=3.)
    return _create_t2t_vit('t2t_vit_19', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def t2t_vit_24(pretrained: bool = False, **kwargs) -> T2TViT:
    """T2T-ViT-24: Performer T2T layers, 24 blocks of width 512."""
    model_args = dict(t2t_layer='performer', embed_dim=512, depth=24, num_heads=8, mlp_ratio=3.)
    return _create_t2t_vit('t2t_vit_24', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def t2t_vit_t_14(pretrained: bool = False, **kwargs) -> T2TViT:
    """T2T-ViT_t-14: Transformer T2T layers, 14 blocks of width 384."""
    model_args = dict(t2t_layer='transformer', embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.)
    return _create_t2t_vit('t2t_vit_t_14', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def t2t_vit_t_19(pretrained: bool = False, **kwargs) -> T2TViT:
    """T2T-ViT_t-19: Transformer T2T layers, 19 blocks of width 448."""
    model_args = dict(t2t_layer='transformer', embed_dim=448, depth=19, num_heads=7, mlp_ratio=3.)
    return _create_t2t_vit('t2t_vit_t_19', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def t2t_vit_t_24(pretrained: bool = False, **kwargs) -> T2TViT:
    """T2T-ViT_t-24: Transformer T2T layers, 24 blocks of width 512."""
    model_args = dict(t2t_layer='transformer', embed_dim=512, depth=24, num_heads=8, mlp_ratio=3.)
    return _create_t2t_vit('t2t_vit_t_24', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def t2t_vit_14_resnext(pretrained: bool = False, **kwargs) -> T2TViT:
    """T2T-ViT-14 ResNeXt-like: 32 heads of width 12 (no released weights)."""
    model_args = dict(t2t_layer='performer', embed_dim=384, depth=14, num_heads=32, mlp_ratio=3.)
    return _create_t2t_vit('t2t_vit_14_resnext', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def t2t_vit_14_wide(pretrained: bool = False, **kwargs) -> T2TViT:
    """T2T-ViT-14 wide: 4 blocks of width 768, 12 heads (no released weights)."""
    model_args = dict(t2t_layer='performer', embed_dim=768, depth=4, num_heads=12, mlp_ratio=3.)
    return _create_t2t_vit('t2t_vit_14_wide', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def t2t_vit_14_se(pretrained: bool = False, **kwargs) -> T2TViT:
    """T2T-ViT-14-SE (paper ablation): squeeze-excitation on each block's attention output."""
    model_args = dict(
        t2t_layer='performer', embed_dim=384, depth=14, num_heads=6, mlp_ratio=3., attn_layer=SqueezeExciteAttention)
    return _create_t2t_vit('t2t_vit_14_se', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def t2t_vit_dense(pretrained: bool = False, **kwargs) -> T2TViT:
    """T2T-ViT-Dense (paper ablation): dense stages of 3, 6, 6 and 4 blocks from width 128, growth rate 64."""
    model_args = dict(
        t2t_layer='performer', embed_dim=128, depth=(3, 6, 6, 4), growth_rate=64, num_heads=8, mlp_ratio=2.,
        block_fn=DenseBlock)
    return _create_t2t_vit('t2t_vit_dense', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def t2t_vit_16_ghost(pretrained: bool = False, **kwargs) -> T2TViT:
    """T2T-ViT-16-Ghost (paper ablation): ghost attention and MLP, 16 blocks of width 384."""
    model_args = dict(
        t2t_layer='performer', embed_dim=384, depth=16, num_heads=6, mlp_ratio=3., attn_layer=GhostAttention,
        mlp_layer=GhostMlp)
    return _create_t2t_vit('t2t_vit_16_ghost', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def t2t_vit_14_wo_t2t(pretrained: bool = False, **kwargs) -> T2TViT:
    """T2T-ViT-14 without T2T (paper ablation): the T2T-ViT-14 backbone over ViT's hard 16x16 patch split."""
    model_args = dict(
        t2t_layer='convolution', soft_splits=((16, 16, 0),), embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.)
    return _create_t2t_vit('t2t_vit_14_wo_t2t', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def t2t_vit_c_14(pretrained: bool = False, **kwargs) -> T2TViT:
    """T2T-ViTc-14 (paper ablation): the T2T module replaced by convolutions 7x7/4, 3x3/2, 3x3/2."""
    model_args = dict(t2t_layer='convolution', embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.)
    return _create_t2t_vit('t2t_vit_c_14', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def t2t_vit_d768_4(pretrained: bool = False, **kwargs) -> T2TViT:
    """T2T-ViT-d768-4 (paper ablation): the shallow-wide counterpart of T2T-ViT-14, 4 blocks of width 768.

    The reference registers this architecture as `t2t_vit_14_wide`.
    """
    model_args = dict(t2t_layer='performer', embed_dim=768, depth=4, num_heads=12, mlp_ratio=3.)
    return _create_t2t_vit('t2t_vit_d768_4', pretrained=pretrained, **dict(model_args, **kwargs))
