"""What differs between the timm (1.0.9 onwards) and torch (2.2 onwards) releases this package supports, in one place.

Each name here is timm's or torch's own where the installed release has it, and a small local equivalent where it
does not. The model code imports these names from here, never the version-dependent ones directly.
"""
import argparse
import contextlib
import inspect
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Type, Union

import timm
import torch
import torch.nn as nn
import torch.utils.checkpoint
from timm.layers import DropPath
from timm.layers import Mlp
from timm.models import checkpoint_seq as _timm_checkpoint_seq
from timm.models import load_state_dict as _timm_load_state_dict
from timm.models._hub import save_for_hf
from timm.models.vision_transformer import Block as _TimmBlock
from timm.models.vision_transformer import LayerScale

__all__ = [
    'TIMM_VERSION', 'Block', 'calculate_drop_path_rates', 'checkpoint', 'checkpoint_seq', 'create_model_from_folder',
    'get_device_dtype', 'has_model_traits', 'is_autocast_available', 'load_checkpoint', 'load_state_dict', 'make_layer',
    'register_notrace_function', 'register_load_state_dict_pre_hook', 'save_for_hf', 'update_model_input_size',
    'x86_has_bf16_instructions',
]


def _version_tuple(version: str) -> tuple:
    return tuple(int(part) for part in version.split('+')[0].split('.')[:3] if part.isdigit())


TIMM_VERSION = _version_tuple(timm.__version__)


def _accepts(fn: Callable, *names: str) -> bool:
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # no signature to read
        return False
    return all(name in parameters for name in names)


def make_layer(layer: Callable[..., nn.Module], *args, device=None, dtype=None, **kwargs) -> nn.Module:
    """Build a layer on the device and dtype asked for, whether or not its constructor takes them (timm's layers
    take them from 1.0.21): without them it is built, then moved."""
    if _accepts(layer, 'device', 'dtype'):
        return layer(*args, device=device, dtype=dtype, **kwargs)
    module = layer(*args, **kwargs)
    if device is not None or dtype is not None:
        module.to(device=device, dtype=dtype)
    return module


try:  # timm >= 1.0.17
    from timm.layers import register_notrace_function
except ImportError:
    from timm.models._features_fx import register_notrace_function

try:  # timm >= 1.0.20
    from timm.layers import calculate_drop_path_rates
except ImportError:
    def calculate_drop_path_rates(drop_path_rate: float, depths: int) -> List[float]:
        """Stochastic depth rates rising linearly from 0 to `drop_path_rate` over `depths` blocks."""
        return [x.item() for x in torch.linspace(0, drop_path_rate, depths, device='cpu')]

try:  # timm >= 1.0.21
    from timm.layers import get_device_dtype
except ImportError:
    def get_device_dtype(module: nn.Module, device=None, dtype=None) -> Dict[str, Any]:
        """Factory kwargs of a module: the given device and dtype, else those of its first parameter."""
        parameter = next(module.parameters(), None)
        if parameter is not None:
            device = parameter.device if device is None else device
            dtype = parameter.dtype if dtype is None else dtype
        return {'device': device, 'dtype': dtype}

try:  # timm >= 1.0.31: models carry traits (input size, first conv) that create_model and resizing update
    from timm.models._input import update_model_input_size
    has_model_traits = True
except ImportError:
    has_model_traits = False

    def update_model_input_size(model: nn.Module, img_size: Optional[Sequence[int]], **model_args: Any) -> None:
        """Releases without model traits keep no record of a model's input size: nothing to update."""

if _accepts(_timm_checkpoint_seq, 'use_reentrant'):  # timm >= 1.0.13
    from timm.models import checkpoint, checkpoint_seq
else:
    def checkpoint(function: Callable, *args, **kwargs):
        """torch's activation checkpoint, non-reentrant (as timm's own wrapper defaults to)."""
        return torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=False, **kwargs)

    def checkpoint_seq(functions: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        """Checkpoint each module of a sequence in turn, non-reentrant."""
        for function in functions:
            x = checkpoint(function, x)
        return x

if _accepts(_TimmBlock, 'attn_layer', 'device'):  # timm >= 1.0.25
    Block = _TimmBlock
else:
    class Block(nn.Module):
        """Pre-norm transformer block with timm's parameter names, taking `attn_layer` as timm's does from 1.0.25."""

        def __init__(
                self,
                dim: int,
                num_heads: int,
                mlp_ratio: float = 4.,
                qkv_bias: bool = False,
                qk_norm: bool = False,
                proj_bias: bool = True,
                proj_drop: float = 0.,
                attn_drop: float = 0.,
                init_values: Optional[float] = None,
                drop_path: float = 0.,
                act_layer: Type[nn.Module] = nn.GELU,
                norm_layer: Type[nn.Module] = nn.LayerNorm,
                mlp_layer: Type[nn.Module] = Mlp,
                attn_layer: Optional[Type[nn.Module]] = None,
                device=None,
                dtype=None,
        ) -> None:
            super().__init__()
            if attn_layer is None:
                raise ValueError('Block needs an attn_layer.')
            dd = {'device': device, 'dtype': dtype}
            self.norm1 = make_layer(norm_layer, dim, **dd)
            self.attn = attn_layer(
                dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_norm=qk_norm, proj_bias=proj_bias,
                attn_drop=attn_drop, proj_drop=proj_drop, norm_layer=norm_layer, **dd)
            self.ls1 = make_layer(LayerScale, dim, init_values=init_values, **dd) if init_values else nn.Identity()
            self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
            self.norm2 = make_layer(norm_layer, dim, **dd)
            self.mlp = make_layer(
                mlp_layer, in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer,
                bias=proj_bias, drop=proj_drop, **dd)
            self.ls2 = make_layer(LayerScale, dim, init_values=init_values, **dd) if init_values else nn.Identity()
            self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
            x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
            return x


def is_compiling() -> bool:
    """Whether torch.compile is tracing the caller (`torch.compiler.is_compiling` from torch 2.3)."""
    if hasattr(torch, 'compiler') and hasattr(torch.compiler, 'is_compiling'):
        return torch.compiler.is_compiling()
    return torch._dynamo.is_compiling()


def is_exporting() -> bool:
    """Whether torch.export is tracing the caller (`torch.compiler.is_exporting`; False before it existed)."""
    is_exporting_fn = getattr(getattr(torch, 'compiler', None), 'is_exporting', None)
    return bool(is_exporting_fn()) if is_exporting_fn is not None else False


def is_fx_tracing() -> bool:
    """Whether torch.fx is symbolically tracing the caller (timm's feature extraction and FX tests do)."""
    fx_trace = torch.fx._symbolic_trace
    is_tracing_fn = getattr(fx_trace, 'is_fx_symbolic_tracing', None) or getattr(fx_trace, 'is_fx_tracing', None)
    return bool(is_tracing_fn()) if is_tracing_fn is not None else False


def custom_op(name: str) -> Callable[[Callable], Optional[Any]]:
    """`torch.library.custom_op(name, mutates_args=())` from torch 2.4; before it, a decorator that gives None
    (callers then keep to their plain code)."""
    if hasattr(torch.library, 'custom_op'):
        return torch.library.custom_op(name, mutates_args=())
    return lambda fn: None


def is_autocast_available(device_type: str) -> bool:
    """Whether `torch.autocast` takes this device type (torch.amp's own test from torch 2.4)."""
    if hasattr(torch.amp, 'is_autocast_available'):
        return torch.amp.is_autocast_available(device_type)
    return device_type in ('cpu', 'cuda', 'xpu', 'hpu')


def x86_has_bf16_instructions() -> Optional[bool]:
    """Whether this x86 CPU has AVX512-BF16 or AMX, as cpuinfo reports them (`torch.cpu`'s checks from torch 2.3);
    None before those existed."""
    checks = [getattr(torch.cpu, name, None) for name in ('_is_avx512_bf16_supported', '_is_amx_tile_supported')]
    return None if None in checks else any(check() for check in checks)


def register_load_state_dict_pre_hook(module: nn.Module, hook: Callable) -> Any:
    """`module.register_load_state_dict_pre_hook(hook)` (torch >= 2.5), or the private method it wraps before."""
    if hasattr(module, 'register_load_state_dict_pre_hook'):
        return module.register_load_state_dict_pre_hook(hook)
    return module._register_load_state_dict_pre_hook(hook, with_module=True)


def create_model_from_folder(folder: Union[str, Path], **kwargs: Any) -> nn.Module:
    """The model saved in a folder as `save_for_hf` writes it (config.json, model.safetensors), with its weights:
    timm's `local-dir:` source from 1.0.17, the same from the folder's config before. `kwargs` override the
    folder's model arguments."""
    folder = Path(folder)
    if TIMM_VERSION >= (1, 0, 17):
        return timm.create_model(f'local-dir:{folder}', pretrained=True, **kwargs)
    config = json.loads((folder / 'config.json').read_text(encoding='utf-8'))
    overlay = dict(config['pretrained_cfg'], file=str(folder / 'model.safetensors'))
    overlay.update({k: config[k] for k in ('label_names', 'label_descriptions') if k in config})  # as local-dir: does
    return timm.create_model(
        config['architecture'], pretrained=True, pretrained_cfg_overlay=overlay,
        **{**config.get('model_args', {}), **kwargs})


def _training_args_allowed() -> contextlib.AbstractContextManager:
    """Weights-only loading that accepts the argparse.Namespace training checkpoints carry (torch >= 2.5)."""
    allow_args = getattr(torch.serialization, 'safe_globals', None)
    return allow_args([argparse.Namespace]) if allow_args else contextlib.nullcontext()


def load_state_dict(path: Union[str, Path], use_ema: bool = True) -> Dict[str, Any]:
    """timm's `load_state_dict` (EMA weights first, prefixes cleaned), loading weights only, with the
    argparse.Namespace that training checkpoints carry allowed (as timm allows it itself from 1.0.2x)."""
    with _training_args_allowed():
        return _timm_load_state_dict(str(path), use_ema=use_ema, weights_only=True)


def load_checkpoint(path: Union[str, Path]) -> Any:
    """A checkpoint file as it was saved, training state and arguments too (what timm's `load_checkpoint_metadata`
    reads where timm has it), loading weights only, with training checkpoints' argparse.Namespace allowed."""
    with _training_args_allowed():
        return torch.load(str(path), map_location='cpu', weights_only=True)
