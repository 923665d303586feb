""" T2T-ViT: Tokens-to-Token Vision Transformer

A PyTorch implementation of `Tokens-to-Token ViT: Training Vision Transformers from Scratch on ImageNet`
    - https://arxiv.org/abs/2101.11986 (ICCV 2021)

The Tokens-to-Token (T2T) module tokenizes an image progressively: a soft split (an overlapping unfold) turns
the image into tokens, a T2T layer (a Performer or a Transformer layer) models them, and the tokens are
re-structurized into an image and softly split again. A ViT backbone then runs on the stride-16 tokens.

Checkpoints released with the reference implementation (https://github.com/yitu-opensource/T2T-ViT) load as
they are and give its logits; `checkpoint_filter_fn` maps their keys.
"""
import logging
import math
import re
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    LayerType,
    Mlp,
    get_act_layer,
    get_norm_layer,
    resample_abs_pos_embed,
    to_2tuple,
    trunc_normal_,
)
from timm.models import (
    adapt_input_conv,
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
    custom_op,
    get_device_dtype,
    has_model_traits,
    is_compiling,
    is_exporting,
    make_layer,
    register_load_state_dict_pre_hook,
    register_notrace_function,
    update_model_input_size,
)
from .attention import attention_kernel_flags, dot_product_attention, performer_attention
from .blocks import Attention, DenseBlock, GhostAttention, GhostMlp, SqueezeExciteAttention, Transition
from .digests import FileDigest
from .hub import fetch_pretrained_file, hub_repo_id

__all__ = ['T2TViT', 'TokensToToken', 'ConvTokenizer', 'CheckpointMismatchError']

_logger = logging.getLogger(__name__)

T2T_LAYERS = ('performer', 'transformer', 'convolution')
GLOBAL_POOLS = ('', 'token', 'avg', 'max', 'avgmax')
DEFAULT_SOFT_SPLITS = ((7, 4, 2), (3, 2, 1), (3, 2, 1))  # (kernel, stride, padding) of the three soft splits

# the kernels are called from this module's layers: leaves for torch.fx's own tracer too (timm's knows them)
torch.fx.wrap('performer_attention')
torch.fx.wrap('dot_product_attention')


# ---------------------------------------------------------------------------------------------------------------
# T2T layers
# ---------------------------------------------------------------------------------------------------------------

class PerformerAttention(nn.Module):
    """Single-head Performer attention of a T2T layer, with the residual through v.

    A T2T layer changes the token width (dim -> dim_out), so the residual adds v, not the input. The reference
    stores the projection in k, q, v order (`kqv`); `checkpoint_filter_fn` reorders it to q, k, v on load.
    """

    def __init__(
            self,
            dim: int,
            dim_out: int,
            kernel_ratio: float = 0.5,
            qkv_bias: bool = True,
            proj_drop: float = 0.1,
            eps: float = 1e-8,
            device=None,
            dtype=None,
    ) -> None:
        """
        Args:
            dim: Input token width.
            dim_out: Output token width.
            kernel_ratio: Number of random features m as a fraction of dim_out.
            qkv_bias: Bias in the q, k, v projection.
            proj_drop: Dropout after the output projection.
            eps: Added to the attention normalizer.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.eps = eps
        self.qkv = nn.Linear(dim, dim_out * 3, bias=qkv_bias, **dd)
        self.proj = nn.Linear(dim_out, dim_out, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        # drawn once, never trained, saved with the weights: a model must load it, not draw its own
        self.register_buffer('random_features', torch.empty(int(dim_out * kernel_ratio), dim_out, **dd))
        self.reset_random_features()

    def reset_random_features(self) -> None:
        """Draw the random feature matrix: orthogonal rows scaled by sqrt(m)."""
        num_features = self.random_features.shape[0]
        with torch.no_grad():
            nn.init.orthogonal_(self.random_features).mul_(math.sqrt(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        x = performer_attention(q, k, v, self.random_features, self.eps)
        return v + self.proj_drop(self.proj(x))


class TokenAttention(nn.Module):
    """Single-head softmax attention of a T2T layer, with the residual through v.

    As in the reference, the scale comes from the input width (dim ** -0.5), not from the head width.
    """
    fused_attn: Final[bool]
    fused_attn_forced: Final[bool]

    def __init__(
            self,
            dim: int,
            dim_out: int,
            qkv_bias: bool = False,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.scale = dim ** -0.5
        self.fused_attn, self.fused_attn_forced = attention_kernel_flags()
        self.qkv = nn.Linear(dim, dim_out * 3, bias=qkv_bias, **dd)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim_out, dim_out, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).unsqueeze(1).chunk(3, dim=-1)  # (B, 1, L, D): one head
        x = dot_product_attention(
            q, k, v, self.scale,
            dropout_p=self.attn_drop.p if self.training else 0.,
            fused=self.fused_attn,
            forced=self.fused_attn_forced,
        )
        return v.squeeze(1) + self.proj_drop(self.proj(x.squeeze(1)))


class TokenLayer(nn.Module):
    """A T2T layer: x = attn(norm1(x)) with the residual through v, then x = x + mlp(norm2(x)).

    'performer' layers follow the reference's Performer: q, k, v bias and a fixed 0.1 dropout after the attention
    projection and after the MLP. 'transformer' layers have neither. The MLP keeps the width (ratio 1).
    """

    def __init__(
            self,
            dim: int,
            dim_out: int,
            kind: str = 'performer',
            act_layer: LayerType = nn.GELU,
            norm_layer: LayerType = nn.LayerNorm,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.norm1 = make_layer(norm_layer, dim, **dd)
        if kind == 'performer':
            self.attn = PerformerAttention(dim, dim_out, qkv_bias=True, proj_drop=0.1, **dd)
            mlp_drop = 0.1
        elif kind == 'transformer':
            self.attn = TokenAttention(dim, dim_out, qkv_bias=False, **dd)
            mlp_drop = 0.
        else:
            raise ValueError(f'Unknown T2T layer {kind!r}, expected performer or transformer.')
        self.norm2 = make_layer(norm_layer, dim_out, **dd)
        self.mlp = make_layer(Mlp, dim_out, hidden_features=dim_out, act_layer=act_layer, drop=(0., mlp_drop), **dd)
        self.grad_checkpointing = False

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint(self._forward, x)  # recomputed in backward; dropout masks replayed
        return self._forward(x)


# ---------------------------------------------------------------------------------------------------------------
# Tokens-to-Token module
# ---------------------------------------------------------------------------------------------------------------

def _split_size(size: int, kernel_size: int, stride: int, padding: int) -> int:
    """Length of one side after a soft split (or a convolution) with the given geometry."""
    return (size + 2 * padding - kernel_size) // stride + 1


def _check_soft_splits(soft_splits: Sequence[Sequence[int]], exactly_three: bool) -> None:
    if (exactly_three and len(soft_splits) != 3) or not soft_splits or any(len(s) != 3 for s in soft_splits):
        count = 'three' if exactly_three else 'one or more'
        raise ValueError(f'soft_splits must hold {count} (kernel, stride, padding) triples, got {soft_splits}.')


def soft_split(x: torch.Tensor, kernel_size: int, stride: int, padding: int, token_map: bool = False) -> torch.Tensor:
    """Overlapping patches of an image (B, C, H, W) as tokens (B, L, C * k * k), flattened channel-major as
    `F.unfold` orders them.

    They are gathered straight into token-major layout, in the order the input's memory favours: an image is read
    channel by channel; a re-structurized token map (`token_map=True`: channels last in memory) is read pixel by
    pixel, whole channel vectors at a time, and each patch transposed to channel-major after (several times faster
    than reading it strided). Either order gives the same tokens for any input.
    """
    B, C = x.shape[0], x.shape[1]
    k = kernel_size
    if padding:
        x = F.pad(x, [padding] * 4)
    patches = x.unfold(2, k, stride).unfold(3, k, stride)  # (B, C, rows, cols, k, k)
    if token_map:
        pixel_major = patches.permute(0, 2, 3, 4, 5, 1).reshape(B, -1, k * k, C)
        return pixel_major.transpose(-2, -1).reshape(B, -1, C * k * k)
    return patches.permute(0, 2, 3, 1, 4, 5).reshape(B, -1, C * k * k)


@custom_op('timm_t2t::soft_split')
def _soft_split_op(x: torch.Tensor, kernel_size: int, stride: int, padding: int, token_map: bool) -> torch.Tensor:
    """`soft_split` as one opaque operator for torch.compile: inductor's code for these gathers runs 3-9x slower on
    the CPU than the eager kernels (T2T-ViT-14, bf16, batch 8: 27 against 4.5 ms for the three soft splits)."""
    tokens = soft_split(x, kernel_size, stride, padding, token_map)
    # an operator's output must not share the input's memory (a soft split is a copy but for trivial geometries)
    return tokens.clone() if tokens.untyped_storage().data_ptr() == x.untyped_storage().data_ptr() else tokens


if _soft_split_op is not None:
    @_soft_split_op.register_fake
    def _soft_split_shape(x, kernel_size, stride, padding, token_map):
        rows = _split_size(x.shape[2], kernel_size, stride, padding)
        cols = _split_size(x.shape[3], kernel_size, stride, padding)
        return x.new_empty(x.shape[0], rows * cols, x.shape[1] * kernel_size * kernel_size)

    def _soft_split_context(ctx, inputs, output) -> None:
        x, ctx.kernel_size, ctx.stride, ctx.padding, _ = inputs
        ctx.image_size = (x.shape[2], x.shape[3])

    def _soft_split_backward(ctx, grad: torch.Tensor):
        # the adjoint of a soft split: each token's gradient added back onto the pixels it was gathered from
        grad_image = F.fold(
            grad.transpose(1, 2), ctx.image_size, ctx.kernel_size, padding=ctx.padding, stride=ctx.stride)
        return grad_image, None, None, None, None

    _soft_split_op.register_autograd(_soft_split_backward, setup_context=_soft_split_context)


class SoftSplit(nn.Module):
    """Soft split: an overlapping unfold of an image (B, C, H, W) into tokens (B, L, C * k * k); see `soft_split`.

    Under torch.compile it runs as one operator (`timm_t2t::soft_split`), in eager code; exported and scripted graphs
    keep the plain ops.
    """
    token_map: Final[bool]

    def __init__(self, kernel_size: int, stride: int, padding: int, token_map: bool = False) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.token_map = token_map

    def feat_size(self, height: int, width: int) -> Tuple[int, int]:
        """Token grid (rows, columns) of an image of the given size."""
        return (
            _split_size(height, self.kernel_size, self.stride, self.padding),
            _split_size(width, self.kernel_size, self.stride, self.padding),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return soft_split(x, self.kernel_size, self.stride, self.padding, self.token_map)
        return self._forward_python(x)

    @torch.jit.unused
    def _forward_python(self, x: torch.Tensor) -> torch.Tensor:
        if _soft_split_op is not None and is_compiling() and not is_exporting():
            return _soft_split_op(x, self.kernel_size, self.stride, self.padding, self.token_map)
        return soft_split(x, self.kernel_size, self.stride, self.padding, self.token_map)

    def extra_repr(self) -> str:
        return f'kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, token_map={self.token_map}'


def restructurize(tokens: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """Re-structurization: tokens (B, H * W, C) back into an image (B, C, H, W)."""
    B, _, C = tokens.shape
    return tokens.transpose(1, 2).reshape(B, C, grid[0], grid[1])


def _cumulative_strides(soft_splits: Sequence[Sequence[int]]) -> Tuple[int, ...]:
    return tuple(math.prod(s[1] for s in soft_splits[:i + 1]) for i in range(len(soft_splits)))


class TokensToToken(nn.Module):
    """Tokens-to-Token module.

    soft split -> T2T layer -> re-structurize -> soft split -> T2T layer -> re-structurize -> soft split -> project

    `map_info` describes the re-structurized outputs of the T2T layers (the module's feature maps), `reductions`
    the stride of each soft split's tokens.
    """

    def __init__(
            self,
            in_chans: int = 3,
            embed_dim: int = 768,
            token_dim: int = 64,
            t2t_layer: str = 'performer',
            soft_splits: Sequence[Sequence[int]] = DEFAULT_SOFT_SPLITS,
            proj_bias: bool = True,
            act_layer: LayerType = nn.GELU,
            norm_layer: LayerType = nn.LayerNorm,
            device=None,
            dtype=None,
    ) -> None:
        """
        Args:
            in_chans: Number of image channels.
            embed_dim: Width of the output tokens.
            token_dim: Width of the tokens inside the module.
            t2t_layer: Kind of T2T layer, 'performer' or 'transformer'.
            soft_splits: (kernel, stride, padding) of each of the three soft splits.
            proj_bias: Bias in the final projection to `embed_dim`.
            act_layer: Activation of the T2T layers' MLPs.
            norm_layer: Normalization layer of the T2T layers.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        _check_soft_splits(soft_splits, exactly_three=True)
        layer_args = dict(kind=t2t_layer, act_layer=act_layer, norm_layer=norm_layer, **dd)
        kernels = [s[0] for s in soft_splits]
        self.soft_split0 = SoftSplit(*soft_splits[0])
        self.attention1 = TokenLayer(in_chans * kernels[0] ** 2, token_dim, **layer_args)
        self.soft_split1 = SoftSplit(*soft_splits[1], token_map=True)
        self.attention2 = TokenLayer(token_dim * kernels[1] ** 2, token_dim, **layer_args)
        self.soft_split2 = SoftSplit(*soft_splits[2], token_map=True)
        self.project = nn.Linear(token_dim * kernels[2] ** 2, embed_dim, bias=proj_bias, **dd)
        self.reductions = _cumulative_strides(soft_splits)
        self.map_info = [
            dict(module=f'attention{i + 1}', num_chs=token_dim, reduction=self.reductions[i]) for i in range(2)]

    def feat_size(self, height: int, width: int) -> Tuple[int, int]:
        """Grid of the output tokens for an image of the given size."""
        grid = self.soft_split0.feat_size(height, width)
        grid = self.soft_split1.feat_size(grid[0], grid[1])
        return self.soft_split2.feat_size(grid[0], grid[1])

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for layer in (self.attention1, self.attention2):
            if layer is not None:
                layer.grad_checkpointing = enable

    def prune(self, num_maps: int) -> None:
        """Keep the first `num_maps` T2T layers and drop what follows; forward then ends at the last kept one."""
        if num_maps < 2:
            self.soft_split1 = None
            self.attention2 = None
        self.soft_split2 = None
        self.project = None
        self.map_info = self.map_info[:num_maps]

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Output tokens (B, N, embed_dim) and the re-structurized outputs of the T2T layers (B, token_dim, H, W)."""
        maps: List[torch.Tensor] = []
        grid = self.soft_split0.feat_size(x.shape[-2], x.shape[-1])
        x = restructurize(self.attention1(self.soft_split0(x)), grid)
        maps.append(x)
        if self.soft_split1 is not None and self.attention2 is not None:
            grid = self.soft_split1.feat_size(grid[0], grid[1])
            x = restructurize(self.attention2(self.soft_split1(x)), grid)
            maps.append(x)
        if self.soft_split2 is not None and self.project is not None:
            return self.project(self.soft_split2(x)), maps
        return x.flatten(2).transpose(1, 2), maps


class ConvTokenizer(nn.Module):
    """The T2T module replaced by convolutions, one per soft split (the paper's T2T-ViTc ablation).

    As the reference's 'convolution' tokens type: plain convolutions with no activation between them, `token_dim`
    channels inside and `embed_dim` out. With a single 16x16, stride-16 convolution it is ViT's hard patch split.
    The outputs of all but the last convolution are the module's feature maps.
    """

    def __init__(
            self,
            in_chans: int = 3,
            embed_dim: int = 768,
            token_dim: int = 64,
            soft_splits: Sequence[Sequence[int]] = DEFAULT_SOFT_SPLITS,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        _check_soft_splits(soft_splits, exactly_three=False)
        widths = [in_chans] + [token_dim] * (len(soft_splits) - 1) + [embed_dim]
        self.convs = nn.ModuleList([
            nn.Conv2d(widths[i], widths[i + 1], kernel_size=k, stride=s, padding=p, device=device, dtype=dtype)
            for i, (k, s, p) in enumerate(soft_splits)])
        self.soft_splits = tuple(tuple(s) for s in soft_splits)
        self.reductions = _cumulative_strides(soft_splits)
        self.num_maps = len(soft_splits) - 1
        self.map_info = [
            dict(module=f'convs.{i}', num_chs=token_dim, reduction=self.reductions[i]) for i in range(self.num_maps)]

    def feat_size(self, height: int, width: int) -> Tuple[int, int]:
        """Grid of the output tokens for an image of the given size."""
        for kernel_size, stride, padding in self.soft_splits:
            height = _split_size(height, kernel_size, stride, padding)
            width = _split_size(width, kernel_size, stride, padding)
        return height, width

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Convolutions are cheap to keep: nothing to checkpoint."""

    def prune(self, num_maps: int) -> None:
        """Keep the convolutions up to the `num_maps`-th feature map; forward then ends there."""
        self.convs = self.convs[:num_maps]
        self.soft_splits = self.soft_splits[:num_maps]
        self.num_maps = num_maps
        self.map_info = self.map_info[:num_maps]

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Output tokens (B, N, C) and the outputs of the inner convolutions (B, token_dim, H, W)."""
        maps: List[torch.Tensor] = []
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < self.num_maps:
                maps.append(x)
        return x.flatten(2).transpose(1, 2), maps


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


def _shape_str(shape: List[int]) -> str:
    return '(' + ', '.join([str(size) for size in shape]) + ')'


@torch.fx.wrap
@register_notrace_function
def check_image_batch(x: torch.Tensor, in_chans: int, img_size: Tuple[int, int], fixed_size: bool) -> None:
    """Raise a one-line ValueError naming what was expected and what came, unless `x` is a floating-point batch of
    images (B, in_chans, H, W) and, if `fixed_size`, of the size `img_size`."""
    shape = _shape_str(x.shape)
    if x.dim() != 4:
        hint = ': add the batch dimension with x.unsqueeze(0)' if x.dim() == 3 else ''
        raise ValueError(f'Expected a batch of images (B, {in_chans}, H, W), got a tensor of shape {shape}{hint}.')
    if x.shape[1] != in_chans:
        if x.shape[-1] == in_chans:
            hint = ': the channels look last, permute them with x.permute(0, 3, 1, 2)'
        else:
            hint = f', or create the model with in_chans={x.shape[1]}'
        raise ValueError(f'Expected images with {in_chans} channels (B, {in_chans}, H, W), got shape {shape}{hint}.')
    if not x.is_floating_point():
        raise ValueError(
            f'Expected a floating-point image tensor, got {str(x.dtype).replace("torch.", "")}: convert it with '
            f'x.float() / 255, then normalize it as the model\'s data config says.')
    height, width = x.shape[-2], x.shape[-1]
    if fixed_size and (height != img_size[0] or width != img_size[1]):
        raise ValueError(
            f'Input size ({height}x{width}) does not match the model img_size ({img_size[0]}x{img_size[1]}). '
            f'Create the model with img_size=({height}, {width}), or with dynamic_img_size=True.')


def _img_size_2tuple(img_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    size = to_2tuple(img_size)
    if len(size) != 2:
        raise ValueError(f'img_size must be an int or (height, width), got {img_size}.')
    return int(size[0]), int(size[1])


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
        self.img_size = _img_size_2tuple(img_size)
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
        img_size = _img_size_2tuple(img_size)
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
        x, _ = self.tokens_to_token(x)
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

_REFERENCE_T2T_KEY = re.compile(r'^(tokens_to_token\.attention[12])\.(w|kqv|proj|mlp\.0|mlp\.2)(\.weight|\.bias)?$')
_REFERENCE_T2T_NAMES = {
    'w': 'attn.random_features',
    'kqv': 'attn.qkv',
    'proj': 'attn.proj',
    'mlp.0': 'mlp.fc1',
    'mlp.2': 'mlp.fc2',
}
# T2T-ViT-SE: the squeeze-excitation's bottleneck is an nn.Sequential in the reference
_REFERENCE_SE_KEY = re.compile(r'^(blocks\.\d+\.attn)\.se_layer\.fc\.([02])\.weight$')


def _kqv_to_qkv(tensor: torch.Tensor) -> torch.Tensor:
    k, q, v = tensor.chunk(3, dim=0)
    return torch.cat([q, k, v], dim=0)


def remap_reference_keys(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename the reference's keys to this model's where they differ: its Performer T2T layers (with k, q, v
    reordered to q, k, v) and the squeeze-excitation of T2T-ViT-SE.

    The reference's other keys (Transformer T2T layers, backbones, ghost and dense blocks) are this model's. A
    state dict in this model's own format passes through unchanged.
    """
    out = {}
    for key, value in state_dict.items():
        match = _REFERENCE_T2T_KEY.match(key)
        if match:
            layer, name, suffix = match.groups()
            key = f'{layer}.{_REFERENCE_T2T_NAMES[name]}{suffix or ""}'
            if name == 'kqv':
                value = _kqv_to_qkv(value)
        match = _REFERENCE_SE_KEY.match(key)
        if match:
            key = f'{match.group(1)}.se.fc{1 if match.group(2) == "0" else 2}.weight'
        out[key] = value
    return out


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


def _adapt_in_chans(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Adapt the first T2T layer to the channel count of `model` (a T2TViT or a T2TPatchEmbed).

    Its q, k, v projection reads unfolded patches (channel-major C x k x k), so it is viewed as a k x k conv and
    adapted the way timm adapts first convs. The LayerNorm before it gets the channel mean (one channel) or its
    channels tiled (more channels).
    """
    if not isinstance(model.tokens_to_token, TokensToToken):
        return state_dict  # a convolutional stem: timm adapts its first conv itself
    prefix = 'tokens_to_token.attention1.'
    weight = state_dict.get(prefix + 'attn.qkv.weight')
    kernel = model.tokens_to_token.soft_split0.kernel_size
    patch = kernel * kernel
    if weight is None or weight.shape[1] == model.in_chans * patch or weight.shape[1] % patch:
        return state_dict
    source_chans = weight.shape[1] // patch
    weight = weight.reshape(weight.shape[0], source_chans, kernel, kernel)
    state_dict[prefix + 'attn.qkv.weight'] = adapt_input_conv(model.in_chans, weight).flatten(1)
    for name in ('norm1.weight', 'norm1.bias'):
        param = state_dict.get(prefix + name)
        if param is not None and param.numel() == source_chans * patch:
            param = param.reshape(source_chans, patch)
            if model.in_chans == 1:
                param = param.mean(dim=0, keepdim=True)
            else:
                param = param.repeat(math.ceil(model.in_chans / source_chans), 1)[:model.in_chans]
            state_dict[prefix + name] = param.flatten()
    _logger.info(f'Adapted the first T2T layer from {source_chans} to {model.in_chans} input channels.')
    return state_dict


def _unwrap_checkpoint(checkpoint: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The state dict in a checkpoint: EMA weights first (as timm prefers), then the plain ones.

    Reference training checkpoints hold `state_dict` and `state_dict_ema`, its CIFAR fine-tunes `net`.
    """
    for key in ('state_dict_ema', 'model_ema', 'state_dict', 'model', 'net'):
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint


def normalize_state_dict(checkpoint: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The state dict of a reference or timm checkpoint in this model's key format.

    Unwraps training checkpoints, strips DDP / torch.compile prefixes and renames reference keys.
    """
    return remap_reference_keys(clean_state_dict(_unwrap_checkpoint(checkpoint)))


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: T2TViT) -> Dict[str, torch.Tensor]:
    """Convert a reference or timm checkpoint for `model`: normalize it, resample the positional table to the
    model's grid and adapt the first layer to the model's channel count."""
    state_dict = _resample_pos_embed(normalize_state_dict(state_dict), model)
    return _adapt_in_chans(state_dict, model)


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


def check_t2t_checkpoint(checkpoint: Dict[str, Any]) -> None:
    """Raise a ValueError unless a loaded checkpoint holds T2T-ViT weights (in reference or timm format)."""
    state_dict = normalize_state_dict(checkpoint)
    if 'pos_embed' not in state_dict or not any(k.startswith('tokens_to_token.') for k in state_dict):
        raise ValueError(f'it holds no T2T-ViT weights (keys: {", ".join(sorted(state_dict)[:4])}, ...)')


def _t2t_layer_kind(state_dict: Mapping[str, Any]) -> Optional[str]:
    if 'tokens_to_token.attention1.attn.random_features' in state_dict:
        return 'performer'
    if 'tokens_to_token.attention1.attn.qkv.weight' in state_dict:
        return 'transformer'
    return None


class CheckpointMismatchError(RuntimeError):
    """Weights that do not fit a model; `mismatch` names the keys (see `describe_mismatch`)."""

    def __init__(self, context: str, mismatch: str) -> None:
        super().__init__(f'{context}: {mismatch}.')
        self.mismatch = mismatch


def describe_mismatch(own: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor]) -> str:
    """One line naming the keys by which a state dict (in this model's format) does not fit a model's own state
    dict `own`; '' if it fits."""
    problems = []
    source_kind, model_kind = _t2t_layer_kind(state_dict), _t2t_layer_kind(own)
    if source_kind and model_kind and source_kind != model_kind:
        problems.append(f'the checkpoint has {source_kind} T2T layers, the model has {model_kind} T2T layers')
    groups = (
        ('missing', [k for k in own if k not in state_dict]),
        ('unexpected', [k for k in state_dict if k not in own]),
        ('of another shape (checkpoint vs model)', [
            f'{k} {tuple(v.shape)} vs {tuple(own[k].shape)}'
            for k, v in state_dict.items() if k in own and v.shape != own[k].shape]),
    )
    problems += [
        f'{len(keys)} keys {label}: {", ".join(keys[:3])}{f" and {len(keys) - 3} more" if len(keys) > 3 else ""}'
        for label, keys in groups if keys]
    return '; '.join(problems)


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
