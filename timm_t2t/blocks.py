"""Backbone blocks of T2T-ViT and of the paper's ablations, as parts for `T2TViT`'s block factory.

`Attention` is the backbone's multi-head self-attention; its kernel follows the device and dtype
(`dot_product_attention`). The ablations of the paper (Yuan et al., section 4.4, "from CNN to ViT") swap parts of
the block and keep the reference's parameter names:

- `SqueezeExciteAttention`: squeeze-excitation on the attention's projected output (T2T-ViT-SE).
- `GhostAttention`, `GhostMlp`: half of each projection computed, the other half a cheap per-channel copy
  (T2T-ViT-Ghost).
- `DenseBlock`, `Transition`: each block appends `growth_rate` channels to its input; a transition halves the width
  between stages (T2T-ViT-Dense).
"""
from typing import Optional, Type

import torch
import torch.nn as nn
from torch.jit import Final

from ._compat import Block
from .attention import attention_kernel_flags, dot_product_attention

__all__ = [
    'Attention', 'AttentionBase', 'CheapOperation', 'DenseBlock', 'GhostAttention', 'GhostMlp', 'SqueezeExciteAttention',
    'TokenSqueezeExcite', 'Transition',
]


class AttentionBase(nn.Module):
    """Multi-head attention over (B, N, C) queries, keys and values, then the output projection.

    Subclasses make q, k and v. The kernel is chosen per call from the device and dtype (see
    `dot_product_attention`), within timm's fused-attention switch as it was when the layer was built.
    """
    fused_attn: Final[bool]
    fused_attn_forced: Final[bool]

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            qk_norm: bool = False,
            scale_norm: bool = False,
            proj_bias: bool = True,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            norm_layer: Optional[Type[nn.Module]] = None,
            device=None,
            dtype=None,
    ) -> None:
        """
        Args:
            dim: Token width.
            num_heads: Number of attention heads; must divide `dim`.
            proj_bias: Bias in the output projection.
            attn_drop: Dropout on the attention weights.
            proj_drop: Dropout after the output projection.
            qk_norm, scale_norm, norm_layer: Taken for timm's block interface; these norms are not supported.
        """
        super().__init__()
        if qk_norm or scale_norm:
            raise ValueError('T2T-ViT attention layers have no qk_norm or scale_norm.')
        if dim % num_heads:
            raise ValueError(f'The attention width {dim} is not divisible by num_heads={num_heads}.')
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn, self.fused_attn_forced = attention_kernel_flags()
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, bias=proj_bias, device=device, dtype=dtype)
        self.proj_drop = nn.Dropout(proj_drop)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, heads, N, head_dim)"""
        return x.reshape(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention over (B, N, C) queries, keys and values, heads merged back: (B, N, C), not yet projected."""
        x = dot_product_attention(
            self._heads(q), self._heads(k), self._heads(v), self.scale,
            dropout_p=self.attn_drop.p if self.training else 0.,
            fused=self.fused_attn,
            forced=self.fused_attn_forced,
        )
        return x.transpose(1, 2).flatten(2)


class Attention(AttentionBase):
    """The backbone's multi-head self-attention: one q, k, v projection, the output projection."""

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            qkv_bias: bool = False,
            device=None,
            dtype=None,
            **kwargs,
    ) -> None:
        super().__init__(dim, num_heads=num_heads, device=device, dtype=dtype, **kwargs)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, device=device, dtype=dtype)

    def forward(
            self,
            x: torch.Tensor,
            attn_mask: Optional[torch.Tensor] = None,
            is_causal: bool = False,
    ) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.proj_drop(self.proj(self.attend(q, k, v)))


class TokenSqueezeExcite(nn.Module):
    """Squeeze-excitation over tokens: channel gates from the mean token (bias-free bottleneck, ReLU, sigmoid)."""

    def __init__(self, dim: int, reduction: int = 16, device=None, dtype=None) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.fc1 = nn.Linear(dim, dim // reduction, bias=False, **dd)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(dim // reduction, dim, bias=False, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc2(self.act(self.fc1(x.mean(dim=1, keepdim=True))))
        return x * gate.sigmoid()


class SqueezeExciteAttention(Attention):
    """Attention whose projected output is gated by squeeze-excitation before its dropout (T2T-ViT-SE)."""

    def __init__(self, dim: int, num_heads: int = 8, se_reduction: int = 16, device=None, dtype=None, **kwargs) -> None:
        super().__init__(dim, num_heads=num_heads, device=device, dtype=dtype, **kwargs)
        self.se = TokenSqueezeExcite(dim, reduction=se_reduction, device=device, dtype=dtype)

    def forward(
            self,
            x: torch.Tensor,
            attn_mask: Optional[torch.Tensor] = None,
            is_causal: bool = False,
    ) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.proj_drop(self.se(self.proj(self.attend(q, k, v))))


class CheapOperation(nn.Module):
    """GhostNet's cheap operation on tokens: a depthwise 1x1 convolution, i.e. one learned scale per channel.

    The weight keeps the (channels, 1, 1) shape of the reference's `nn.Conv1d(C, C, 1, groups=C, bias=False)`,
    and its initialization (uniform in [-1, 1]).
    """

    def __init__(self, dim: int, device=None, dtype=None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, 1, 1, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.weight, -1., 1.)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.flatten()


class GhostAttention(AttentionBase):
    """Attention whose q, k and v are each half computed by a projection, half a cheap copy of that half."""

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            qkv_bias: bool = False,
            device=None,
            dtype=None,
            **kwargs,
    ) -> None:
        super().__init__(dim, num_heads=num_heads, device=device, dtype=dtype, **kwargs)
        if dim % 2:
            raise ValueError(f'GhostAttention needs an even width, got {dim}.')
        dd = {'device': device, 'dtype': dtype}
        half = dim // 2
        self.q = nn.Linear(dim, half, bias=qkv_bias, **dd)
        self.k = nn.Linear(dim, half, bias=qkv_bias, **dd)
        self.v = nn.Linear(dim, half, bias=qkv_bias, **dd)
        self.cheap_operation_q = CheapOperation(half, **dd)
        self.cheap_operation_k = CheapOperation(half, **dd)
        self.cheap_operation_v = CheapOperation(half, **dd)

    def forward(
            self,
            x: torch.Tensor,
            attn_mask: Optional[torch.Tensor] = None,
            is_causal: bool = False,
    ) -> torch.Tensor:
        q, k, v = self.q(x), self.k(x), self.v(x)
        q = torch.cat([q, self.cheap_operation_q(q)], dim=-1)
        k = torch.cat([k, self.cheap_operation_k(k)], dim=-1)
        v = torch.cat([v, self.cheap_operation_v(v)], dim=-1)
        return self.proj_drop(self.proj(self.attend(q, k, v)))


class GhostMlp(nn.Module):
    """Ghost MLP: fc1 keeps the width, two cheap copies of its activations make it three times as wide, fc2 maps
    back. The hidden width must be three times the input width (MLP ratio 3)."""

    def __init__(
            self,
            in_features: int,
            hidden_features: Optional[int] = None,
            out_features: Optional[int] = None,
            act_layer: Type[nn.Module] = nn.GELU,
            norm_layer: Optional[Type[nn.Module]] = None,
            bias: bool = True,
            drop: float = 0.,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        hidden_features = hidden_features or 3 * in_features
        if hidden_features != 3 * in_features:
            raise ValueError(
                f'GhostMlp widens by exactly 3 (mlp_ratio=3), got {hidden_features} hidden for {in_features} in.')
        if norm_layer is not None:
            raise ValueError('GhostMlp has no hidden norm.')
        dd = {'device': device, 'dtype': dtype}
        self.fc1 = nn.Linear(in_features, in_features, bias=bias, **dd)
        self.act = act_layer()
        self.cheap_operation2 = CheapOperation(in_features, **dd)
        self.cheap_operation3 = CheapOperation(in_features, **dd)
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features or in_features, bias=bias, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1(x))
        x = torch.cat([x, self.act(self.cheap_operation2(x)), self.act(self.cheap_operation3(x))], dim=-1)
        return self.drop(self.fc2(self.drop(x)))


class DenseBlock(Block):
    """A transformer block whose output, projected to `growth_rate` channels, is appended to its input."""

    def __init__(self, dim: int, num_heads: int, growth_rate: int = 32, device=None, dtype=None, **kwargs) -> None:
        super().__init__(dim=dim, num_heads=num_heads, device=device, dtype=dtype, **kwargs)
        self.dense_linear = nn.Linear(dim, growth_rate, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        y = y + self.drop_path2(self.ls2(self.mlp(self.norm2(y))))
        return torch.cat([x, self.dense_linear(y)], dim=-1)


class Transition(nn.Module):
    """Between dense stages: a Linear to `out_features` channels, then the activation."""

    def __init__(
            self,
            in_features: int,
            out_features: int,
            act_layer: Type[nn.Module] = nn.GELU,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, device=device, dtype=dtype)
        self.act = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(x))
