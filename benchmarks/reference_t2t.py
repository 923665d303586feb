"""An eager re-implementation of the reference T2T-ViT's math, for side-by-side benchmarks and parity tests.

It computes what the reference (https://github.com/yitu-opensource/T2T-ViT) computes, the way the reference
computes it: the T2T Transformer layers materialize L x L softmax attention, the Performer runs on einsums with
`.repeat` broadcasts and adds eps=1e-8 in whatever dtype autocast gives it, token maps are reshaped with
sqrt(L) (square inputs only), nothing is fused. Its parameter names are the reference's, so reference
checkpoints load into it once their `module.` prefixes are stripped.

Written from the reference's documented behaviour; it shares no code with the reference. The tests check it
against logits produced by running the reference itself (tests/fixtures).
"""
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['ReferenceT2TViT', 'REFERENCE_VARIANTS', 'reference_config', 'strip_module_prefix', 'training_checkpoint']

# The reference entry points: (token layer, embed_dim, depth, num_heads, mlp_ratio).
REFERENCE_VARIANTS = {
    't2t_vit_7': ('performer', 256, 7, 4, 2.),
    't2t_vit_10': ('performer', 256, 10, 4, 2.),
    't2t_vit_12': ('performer', 256, 12, 4, 2.),
    't2t_vit_14': ('performer', 384, 14, 6, 3.),
    't2t_vit_19': ('performer', 448, 19, 7, 3.),
    't2t_vit_24': ('performer', 512, 24, 8, 3.),
    't2t_vit_t_14': ('transformer', 384, 14, 6, 3.),
    't2t_vit_t_19': ('transformer', 448, 19, 7, 3.),
    't2t_vit_t_24': ('transformer', 512, 24, 8, 3.),
    't2t_vit_14_resnext': ('performer', 384, 14, 32, 3.),
    't2t_vit_14_wide': ('performer', 768, 4, 12, 3.),
}


def reference_config(variant: str, **overrides) -> dict:
    """Constructor arguments of the reference model for one of its entry points (pretrained=False path)."""
    tokens_type, embed_dim, depth, num_heads, mlp_ratio = REFERENCE_VARIANTS[variant]
    config = dict(tokens_type=tokens_type, embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio)
    config.update(overrides)
    return config


class _FeedForward(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout (backbone blocks and Transformer T2T layers)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class _PerformerT2TLayer(nn.Module):
    """The reference Performer T2T layer: one head, k/q/v projection with bias, m = dim_out / 2 features."""

    def __init__(self, dim: int, dim_out: int) -> None:
        super().__init__()
        self.dim_out = dim_out
        self.num_random = dim_out // 2
        self.norm1 = nn.LayerNorm(dim)
        self.kqv = nn.Linear(dim, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)
        self.attn_dropout = nn.Dropout(0.1)
        self.norm2 = nn.LayerNorm(dim_out)
        self.mlp = nn.Sequential(
            nn.Linear(dim_out, dim_out), nn.GELU(), nn.Linear(dim_out, dim_out), nn.Dropout(0.1))
        random = nn.init.orthogonal_(torch.empty(self.num_random, dim_out)) * math.sqrt(self.num_random)
        self.w = nn.Parameter(random, requires_grad=False)

    def _features(self, t: torch.Tensor) -> torch.Tensor:
        # |t|^2 / 2 stays in t's dtype and is repeated over the features, as the reference does
        half_sq_norm = (t * t).sum(dim=-1, keepdim=True).repeat(1, 1, self.num_random) / 2
        projected = torch.einsum('bld,md->blm', t.float(), self.w)
        return torch.exp(projected - half_sq_norm) / math.sqrt(self.num_random)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        k, q, v = torch.split(self.kqv(x), self.dim_out, dim=-1)
        k_feat, q_feat = self._features(k), self._features(q)
        normalizer = torch.einsum('blm,bm->bl', q_feat, k_feat.sum(dim=1)).unsqueeze(-1)
        kv = torch.einsum('bld,blm->bdm', v.float(), k_feat)
        y = torch.einsum('blm,bdm->bld', q_feat, kv) / (normalizer.repeat(1, 1, self.dim_out) + 1e-8)
        y = v + self.attn_dropout(self.proj(y))
        return y + self.mlp(self.norm2(y))


class _SoftmaxT2TAttention(nn.Module):
    """One head over all tokens, scale from the input width, residual through v."""

    def __init__(self, dim: int, dim_out: int) -> None:
        super().__init__()
        self.scale = dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim_out, bias=False)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        weights = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, L, L)
        return v + self.proj(weights @ v)


class _TransformerT2TLayer(nn.Module):
    def __init__(self, dim: int, dim_out: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _SoftmaxT2TAttention(dim, dim_out)
        self.norm2 = nn.LayerNorm(dim_out)
        self.mlp = _FeedForward(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _MultiHeadAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, drop: float = 0.) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        weights = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.drop(self.proj((weights @ v).transpose(1, 2).reshape(B, L, D)))


class _Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop: float = 0.) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _MultiHeadAttention(dim, num_heads, drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _FeedForward(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _square_map(tokens: torch.Tensor) -> torch.Tensor:
    side = int(math.sqrt(tokens.shape[1]))  # the reference's sqrt reshape: square token grids only
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)


class _ReferenceT2TModule(nn.Module):
    def __init__(self, tokens_type: str, in_chans: int, embed_dim: int, token_dim: int) -> None:
        super().__init__()
        layer = {'performer': _PerformerT2TLayer, 'transformer': _TransformerT2TLayer}[tokens_type]
        self.attention1 = layer(in_chans * 7 * 7, token_dim)
        self.attention2 = layer(token_dim * 3 * 3, token_dim)
        self.project = nn.Linear(token_dim * 3 * 3, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention1(F.unfold(x, 7, padding=2, stride=4).transpose(1, 2))
        x = self.attention2(F.unfold(_square_map(x), 3, padding=1, stride=2).transpose(1, 2))
        return self.project(F.unfold(_square_map(x), 3, padding=1, stride=2).transpose(1, 2))


def _sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    angles = torch.tensor(
        [[p / 10000 ** (2 * (j // 2) / dim) for j in range(dim)] for p in range(num_positions)], dtype=torch.float64)
    angles[:, 0::2] = angles[:, 0::2].sin()
    angles[:, 1::2] = angles[:, 1::2].cos()
    return angles.float().unsqueeze(0)


class ReferenceT2TViT(nn.Module):
    """The reference T2T-ViT (its constructor arguments; square inputs of `img_size` only)."""

    def __init__(
            self,
            img_size: int = 224,
            tokens_type: str = 'performer',
            in_chans: int = 3,
            num_classes: int = 1000,
            embed_dim: int = 768,
            depth: int = 12,
            num_heads: int = 12,
            mlp_ratio: float = 4.,
            token_dim: int = 64,
            drop_rate: float = 0.,
    ) -> None:
        super().__init__()
        num_patches = (img_size // 16) ** 2
        self.tokens_to_token = _ReferenceT2TModule(tokens_type, in_chans, embed_dim, token_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(_sinusoid_table(num_patches + 1, embed_dim), requires_grad=False)
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = nn.ModuleList([_Block(embed_dim, num_heads, mlp_ratio, drop_rate) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        nn.init.trunc_normal_(self.cls_token, std=.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tokens_to_token(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(x + self.pos_embed)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


def strip_module_prefix(state_dict: dict) -> dict:
    """Keys of a DataParallel / DistributedDataParallel checkpoint without their `module.` prefix."""
    return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state_dict.items()}


def training_checkpoint(state_dict: dict, ema_state_dict: Optional[dict] = None) -> dict:
    """A checkpoint laid out as the reference's training saves one: `module.` keys, `state_dict` and, when given,
    `state_dict_ema`."""
    checkpoint = {'state_dict': {f'module.{k}': v.detach() for k, v in state_dict.items()}, 'epoch': 309}
    if ema_state_dict is not None:
        checkpoint['state_dict_ema'] = {f'module.{k}': v.detach() for k, v in ema_state_dict.items()}
    return checkpoint
