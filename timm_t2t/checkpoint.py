"""T2T-ViT checkpoints in the reference's format and timm's: unwrapping, key names, and what does not fit.

The reference stores its Performer T2T layers under other names (`kqv`, `w`, `mlp.0`, ...) and with the q, k, v
projection in k, q, v order; its T2T-ViT-SE keeps the squeeze-excitation in an nn.Sequential. Everything else is
this package's format already.
"""
import re
from typing import Any, Dict, Mapping, Optional

import torch
from timm.models import clean_state_dict

from ._text import plural

__all__ = [
    'CheckpointMismatchError', 'check_t2t_checkpoint', 'describe_mismatch', 'normalize_state_dict',
    'remap_reference_keys',
]


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
        f'{plural(len(keys), "key")} {label}: {", ".join(keys[:3])}'
        f'{f" and {len(keys) - 3} more" if len(keys) > 3 else ""}'
        for label, keys in groups if keys]
    return '; '.join(problems)
