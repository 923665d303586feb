""" The Tokens-to-Token module of T2T-ViT

The T2T module tokenizes an image progressively: a soft split (an overlapping unfold) turns the image into tokens, a
T2T layer (a Performer or a Transformer layer) models them, and the tokens are re-structurized into an image and
softly split again; a last soft split and a projection give the backbone its stride-16 tokens.

Reads top to bottom as the paper: T2T layers, soft split, the module (and its convolutional ablation), then the
checks of the images it takes and the adaptation of its first layer to another channel count.
"""
import logging
import math
from typing import Dict, List, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerType, Mlp, to_2tuple
from timm.models import adapt_input_conv
from torch.jit import Final

from ._compat import (
    checkpoint,
    custom_op,
    is_compiling,
    is_exporting,
    is_fx_tracing,
    make_layer,
    register_notrace_function,
)
from ._text import plural
from .attention import attention_kernel_flags, dot_product_attention, performer_attention

__all__ = [
    'DEFAULT_SOFT_SPLITS', 'SLICE_TOKENS', 'ConvTokenizer', 'PerformerAttention', 'SoftSplit', 'TokenAttention',
    'TokenLayer', 'TokensToToken', 'adapt_in_chans', 'check_image_batch', 'img_size_2tuple', 'restructurize',
    'soft_split', 'soft_split_adjoint',
]

_logger = logging.getLogger(__name__)

DEFAULT_SOFT_SPLITS = ((7, 4, 2), (3, 2, 1), (3, 2, 1))  # (kernel, stride, padding) of the three soft splits
# First-layer tokens in one batch slice of an eager forward (4 images at 224): see `TokensToToken.forward_tokens`
SLICE_TOKENS = 4 * 56 * 56

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


def soft_split_adjoint(
        grad: torch.Tensor,
        image_size: Tuple[int, int],
        kernel_size: int,
        stride: int,
        padding: int,
        token_map: bool = False,
) -> torch.Tensor:
    """The gradient of `soft_split` with respect to its input: each token's gradient (B, L, C * k * k) added back
    onto the pixels it was gathered from, an image (B, C, H, W).

    For a token map the k * k kernel offsets are accumulated one strided slice at a time into a channels-last
    image, the layout the map has in memory (3-5x faster than autograd's unfold backward and 2x faster than
    `F.fold` for T2T-ViT-14's maps); an image is folded with `F.fold`, which is faster for its few channels.
    """
    k, s, p = kernel_size, stride, padding
    height, width = image_size
    if not token_map:
        return F.fold(grad.transpose(1, 2), image_size, k, padding=p, stride=s)
    rows, cols = _split_size(height, k, s, p), _split_size(width, k, s, p)
    B, C = grad.shape[0], grad.shape[2] // (k * k)
    per_offset = grad.view(B, rows, cols, C, k, k)
    image = grad.new_zeros(B, height + 2 * p, width + 2 * p, C)
    for dy in range(k):
        for dx in range(k):
            image[:, dy:dy + s * (rows - 1) + 1:s, dx:dx + s * (cols - 1) + 1:s].add_(per_offset[..., dy, dx])
    return image[:, p:p + height, p:p + width].permute(0, 3, 1, 2)


@custom_op('timm_t2t::soft_split')
def _soft_split_op(x: torch.Tensor, kernel_size: int, stride: int, padding: int, token_map: bool) -> torch.Tensor:
    """`soft_split` as one operator, its backward `soft_split_adjoint`. Eager runs take it where a gradient flows
    back, for that backward (autograd's own, through the unfold views, is 3-5x slower); compiled graphs always,
    because inductor's code for these gathers runs 3-9x slower on the CPU than the eager kernels (T2T-ViT-14, bf16,
    batch 8: 27 against 4.5 ms for the three soft splits)."""
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
        x, ctx.kernel_size, ctx.stride, ctx.padding, ctx.token_map = inputs
        ctx.image_size = (x.shape[2], x.shape[3])

    def _soft_split_backward(ctx, grad: torch.Tensor):
        grad_image = soft_split_adjoint(
            grad, ctx.image_size, ctx.kernel_size, ctx.stride, ctx.padding, ctx.token_map)
        return grad_image, None, None, None, None

    _soft_split_op.register_autograd(_soft_split_backward, setup_context=_soft_split_context)


class SoftSplit(nn.Module):
    """Soft split: an overlapping unfold of an image (B, C, H, W) into tokens (B, L, C * k * k); see `soft_split`.

    Compiled graphs, and eager runs where a gradient flows back to the input, take it as one operator
    (`timm_t2t::soft_split`, backward `soft_split_adjoint`); the rest, and scripted, traced, FX-traced and exported
    graphs, run the plain ops (the reference path: the same tokens, and gradients equal to float32 round-off).
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
        if _soft_split_op is not None and not (is_exporting() or torch.jit.is_tracing() or is_fx_tracing()):
            if is_compiling() or (x.requires_grad and torch.is_grad_enabled()):
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

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The output tokens alone (B, N, embed_dim), in batch slices of at most `SLICE_TOKENS` first-layer tokens
        in eager runs.

        Every image is tokenized on its own, so slices give the tokens of the whole batch. They keep the module's
        short-lived tensors small: over a whole batch they take tens of megabytes, more than glibc's malloc keeps
        between calls, so each forward would fault that memory in again page by page (T2T-ViT-14, batch 8 at 224:
        5,700 page faults a bf16 forward and 15,000 in fp32, none in slices of 4 images). Compiled, scripted and
        traced graphs run the whole batch: their memory is planned.
        """
        if torch.jit.is_scripting():
            return self(x)[0]
        return self._forward_tokens_sliced(x)

    @torch.jit.unused
    def _forward_tokens_sliced(self, x: torch.Tensor) -> torch.Tensor:
        if is_compiling() or is_exporting() or torch.jit.is_tracing() or is_fx_tracing():
            return self(x)[0]
        rows, cols = self.soft_split0.feat_size(x.shape[-2], x.shape[-1])
        images_per_slice = max(1, SLICE_TOKENS // (rows * cols))
        if x.shape[0] <= images_per_slice:
            return self(x)[0]
        return torch.cat([self(part)[0] for part in x.split(images_per_slice)])


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

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The output tokens alone (B, N, embed_dim)."""
        return self(x)[0]

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
# Inputs and weights
# ---------------------------------------------------------------------------------------------------------------

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
        raise ValueError(f'Expected {in_chans}-channel images (B, {in_chans}, H, W), got shape {shape}{hint}.')
    if not x.is_floating_point():
        raise ValueError(
            f'Expected a floating-point image tensor, got {str(x.dtype).replace("torch.", "")}: convert it with '
            f'x.float() / 255, then normalize it as the model\'s data config says.')
    height, width = x.shape[-2], x.shape[-1]
    if fixed_size and (height != img_size[0] or width != img_size[1]):
        raise ValueError(
            f'Input size ({height}x{width}) does not match the model img_size ({img_size[0]}x{img_size[1]}). '
            f'Create the model with img_size=({height}, {width}), or with dynamic_img_size=True.')


def img_size_2tuple(img_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    size = to_2tuple(img_size)
    if len(size) != 2:
        raise ValueError(f'img_size must be an int or (height, width), got {img_size}.')
    return int(size[0]), int(size[1])


def adapt_in_chans(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
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
    _logger.info(f'Adapted the first T2T layer from {source_chans} to {plural(model.in_chans, "input channel")}.')
    return state_dict
