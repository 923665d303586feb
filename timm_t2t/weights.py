"""Weights to a model: a pretrained tag, a checkpoint file or a saved model folder, each checked before use; how
the model's images were prepared where the weights record it; and the check that settings given with a model fit it.

    model = load_classifier('t2t_vit_14')                                  # pretrained weights (Hub / release)
    model = load_classifier(weights='71.7_T2T_ViT_7.pth.tar')              # a checkpoint (reference or timm)
    model = load_classifier(weights='runs/digits/t2t_vit_7')               # a folder written by save_for_hf
    model = load_model('resnet50.a1_in1k')                                 # any timm model (features)

A checkpoint's classes, channels and input size are read from its weights, and its variant too unless named; a
folder names its own architecture, arguments, preprocessing and labels. classify (`timm_t2t.predict`), features and
convert take their models from here; this module depends on none of them.
"""
import argparse
import json
import logging
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import timm
import torch
from safetensors import SafetensorError, safe_open
from timm.layers import to_2tuple
from torch import nn

from ._compat import create_model_from_folder, load_checkpoint
from ._text import plural
from .catalog import check_model_name, check_pretrained_tag
from .checkpoint import CheckpointMismatchError, check_t2t_checkpoint, describe_mismatch, normalize_state_dict
from .hub import InvalidCheckpointError, check_weights_reachable, read_checkpoint
from .patch_embed import T2TPatchEmbed
from .t2t_vit import model_args_from_state_dict

__all__ = [
    'DATA_CONFIG_KEYS', 'DataConfigError', 'check_data_config', 'check_model_folder', 'infer_variant',
    'load_classifier', 'load_model', 'model_from_folder', 'read_t2t_checkpoint', 'training_data_config',
]

_logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

# the preprocessing settings a model's config carries and a user may give instead, as timm names them
DATA_CONFIG_KEYS = ('mean', 'std', 'crop_pct', 'interpolation')


class DataConfigError(ValueError):
    """A setting of a model's config (its preprocessing, its label names) that does not fit the model or timm's
    meaning of it; `key` names the setting."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f'{key}: {problem}')
        self.key = key
        self.problem = problem


def check_data_config(data_config: Mapping[str, Any], in_chans: int) -> None:
    """Raise DataConfigError for settings timm would reject with a bare assertion or silently replace."""
    for key in ('mean', 'std'):
        values = data_config.get(key)
        if values is not None and len(values) not in (1, in_chans):
            raise DataConfigError(
                key, f'expected {plural(in_chans, "value")} (one per input channel of the model) or 1 (for every '
                     f'channel), got {len(values)}')
    crop_pct = data_config.get('crop_pct')
    if crop_pct is not None and not 0 < crop_pct <= 1:
        raise DataConfigError('crop_pct', f'expected a fraction of the resized image in (0, 1], got {crop_pct}')


# weights whose shape depends on the input size, channels or classes rather than on the architecture
_ADAPTED = ('pos_embed', 'head.', 'tokens_to_token.attention1.norm1.', 'tokens_to_token.attention1.attn.qkv.',
            'tokens_to_token.convs.0.')


def _architecture(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, Tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state_dict.items() if not k.startswith(_ADAPTED)}


def _describe_backbone(state_dict: Mapping[str, torch.Tensor]) -> Tuple[int, int]:
    """Token width and number of blocks of a normalized state dict."""
    blocks = {key.split('.')[1] for key in state_dict if key.startswith('blocks.')}
    return state_dict['cls_token'].shape[-1], len(blocks)


def infer_variant(state_dict: Mapping[str, torch.Tensor], source: str = 'The checkpoint') -> str:
    """The registered T2T-ViT variant whose architecture a normalized state dict fits: one with released weights
    first when several fit (e.g. t2t_vit_14 and t2t_vit_14_resnext differ only in heads)."""
    target = _architecture(state_dict)
    fitting = [
        name for name in timm.list_models('t2t_vit*')
        if _architecture(timm.create_model(name, device='meta').state_dict()) == target]
    if not fitting:
        width, depth = _describe_backbone(state_dict)
        raise ValueError(
            f'{source} fits no registered T2T-ViT variant (width {width}, {plural(depth, "block")}): name the variant '
            f'it was built from and the arguments it changed, e.g. --model t2t_vit_7 --model-kwargs embed_dim={width} '
            f'depth={depth} num_heads=N.')
    fitting.sort(key=lambda name: (not timm.list_pretrained(f'{name}.*'), name))
    if len(fitting) > 1:
        _logger.warning(f'{source} fits {", ".join(fitting)}; using {fitting[0]} (name another with --model).')
    return fitting[0]


def _key_format(checkpoint: Mapping[str, Any]) -> Optional[str]:
    """'timm' or 'reference' where a checkpoint's Performer T2T layers tell (the other layers' keys are alike)."""
    keys = set(checkpoint) | {k for v in checkpoint.values() if isinstance(v, dict) for k in v}
    if any(k.endswith('attention1.attn.random_features') for k in keys):
        return 'timm'
    if any(k.endswith('attention1.w') for k in keys):
        return 'reference'
    return None


def read_t2t_checkpoint(path: PathLike, use_ema: bool = True) -> Tuple[Dict[str, torch.Tensor], Optional[str]]:
    """The T2T-ViT weights of a checkpoint file (EMA weights first unless `use_ema=False`) in this package's key
    format, and the format the file was in: 'timm' or 'reference' where its keys tell, else None.

    Raises FileNotFoundError when there is no file, InvalidCheckpointError naming the file when it cannot be read,
    ValueError naming it when it holds no T2T-ViT weights.
    """
    checkpoint = read_checkpoint(path, use_ema=use_ema)
    try:
        check_t2t_checkpoint(checkpoint)
    except ValueError as e:
        raise ValueError(f'{path} is not a T2T-ViT checkpoint: {e}') from e
    return normalize_state_dict(checkpoint), _key_format(checkpoint)


def training_data_config(path: PathLike) -> Optional[Dict[str, Any]]:
    """The preprocessing a timm training checkpoint records: the arguments of timm's train.py, which its
    CheckpointSaver stores under 'args', name `mean`, `std`, `crop_pct` and `interpolation`. Only those given are
    returned (train.py takes the model's own config for the others). None when the file records no preprocessing:
    a checkpoint without training arguments, or with arguments of another script."""
    path = Path(path)
    if path.suffix == '.safetensors':
        return None
    checkpoint = load_checkpoint(path)
    args = checkpoint.get('args') if isinstance(checkpoint, dict) else None
    if not isinstance(args, argparse.Namespace) or not any(hasattr(args, key) for key in DATA_CONFIG_KEYS):
        return None
    given = {key: getattr(args, key, None) for key in DATA_CONFIG_KEYS}
    return {key: tuple(value) if isinstance(value, (list, tuple)) else value
            for key, value in given.items() if value not in (None, '')}


def _model_from_checkpoint(model_name: Optional[str], path: Path, model_kwargs: Mapping[str, Any]) -> nn.Module:
    state_dict, _ = read_t2t_checkpoint(path)
    model_name = model_name or infer_variant(state_dict, source=str(path))
    args = {**model_args_from_state_dict(state_dict), **model_kwargs}
    overlay = dict(file=str(path))
    if 'num_classes' in args:
        overlay['num_classes'] = args['num_classes']
    if 'img_size' in args:
        overlay['input_size'] = (args.get('in_chans', 3), *to_2tuple(args['img_size']))
    _logger.info(f'{path}: {model_name} with {", ".join(f"{k}={v}" for k, v in args.items())}.')
    try:
        return timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=overlay, **args)
    except CheckpointMismatchError as e:
        raise CheckpointMismatchError(f'{path} does not fit {model_name}', e.mismatch) from e


def check_model_folder(folder: PathLike) -> Dict[str, Any]:
    """A saved model folder's config.json, after checking that it parses and names an architecture and that its
    model.safetensors is whole (its header read, not its weights); each problem raises an error naming the file."""
    folder = Path(folder)
    config_file = folder / 'config.json'
    if not config_file.is_file():
        raise FileNotFoundError(f'{folder} is a folder without config.json: not a saved model folder.')
    try:
        config = json.loads(config_file.read_text(encoding='utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f'{config_file} is not valid JSON ({e}).') from e
    if not isinstance(config, dict) or not isinstance(config.get('architecture'), str):
        raise ValueError(f'{config_file} names no architecture: not a config.json as timm\'s save_for_hf writes it.')
    weights_file = folder / 'model.safetensors'
    if weights_file.is_file():
        try:
            with safe_open(str(weights_file), framework='pt'):
                pass
        except SafetensorError as e:
            problem = str(e).split(': ', 1)[-1]  # past safetensors' 'Error while deserializing header: '
            raise InvalidCheckpointError(
                f'{weights_file} is not a readable checkpoint: the file is truncated or corrupted ({problem}).') from e
    return config


def _folder_model_args(config: Mapping[str, Any]) -> Dict[str, Any]:
    """Model arguments a folder's config.json can only name: a timm ViT with the T2T stem records its embed_layer
    as 'T2TPatchEmbed' (JSON holds no class), built here with the class."""
    if config.get('model_args', {}).get('embed_layer') == T2TPatchEmbed.__name__:
        return dict(embed_layer=T2TPatchEmbed)
    return {}


def model_from_folder(
        folder: PathLike,
        model_name: Optional[str] = None,
        model_kwargs: Optional[Mapping[str, Any]] = None,
) -> nn.Module:
    """The model in a folder written by `save_for_hf`, in eval mode, after checking the folder (see
    `check_model_folder`). ValueError when model arguments are given (the folder names its own) or `model_name`
    names another architecture."""
    folder = Path(folder)
    config = check_model_folder(folder)
    if model_kwargs:
        raise ValueError(f'{folder} is a saved model folder, which names its own arguments: leave out the model '
                         f'arguments.')
    model = create_model_from_folder(folder, **_folder_model_args(config))
    architecture = model.pretrained_cfg.get('architecture')
    if model_name and model_name.split('.')[0] != architecture:
        raise ValueError(f'{folder} holds a {architecture}, not a {model_name}; leave out the model name.')
    _logger.info(f'{folder}: a saved {architecture}.')
    return model.eval()


def load_classifier(
        model_name: Optional[str] = 't2t_vit_14',
        weights: Optional[PathLike] = None,
        model_kwargs: Optional[Mapping[str, Any]] = None,
) -> nn.Module:
    """A T2T-ViT in eval mode with its weights: `model_name`'s pretrained ones, or those of `weights`, a checkpoint
    file (its classes, channels and input size are read from it, and the variant too unless `model_name` says) or a
    folder written by `save_for_hf` (which names its own architecture). `model_kwargs` go to `timm.create_model`
    (for a checkpoint of an architecture no entry point builds as it is, e.g. `depth=2`)."""
    model_kwargs = dict(model_kwargs or {})
    if model_name:
        check_model_name(model_name)
    if weights is None:
        return timm.create_model(model_name, pretrained=True, **model_kwargs).eval()
    weights = Path(weights)
    if weights.is_dir():
        return model_from_folder(weights, model_name, model_kwargs)
    if model_kwargs and not model_name:
        raise ValueError('Model arguments need the variant they change: name it too (--model).')
    return _model_from_checkpoint(model_name, weights, model_kwargs).eval()


def _is_t2t_vit(name: str) -> bool:
    return name.split('.')[0] in timm.list_models('t2t_vit*')


def _check_architecture(architecture: str) -> None:
    if not timm.is_model(architecture):
        raise ValueError(f'Unknown model {architecture!r}: not a timm model (timm.list_models() lists them).')


def _check_timm_name(name: str) -> None:
    """Raise ValueError naming the problem unless `name` is a timm model with pretrained weights (of its tag)."""
    architecture, _, tag = name.partition('.')
    _check_architecture(architecture)
    if not timm.list_pretrained(f'{architecture}.*'):
        raise ValueError(f'{architecture} has no pretrained weights in timm: give a checkpoint or model folder with '
                         f'--weights.')
    check_pretrained_tag(architecture, tag)


def _model_from_timm_checkpoint(name: str, path: Path) -> nn.Module:
    """A timm model (not a T2T-ViT) as `name` builds it, with the class count of a checkpoint in timm's format."""
    state_dict = read_checkpoint(path)
    model = timm.create_model(name, pretrained=False)
    classifier = model.pretrained_cfg.get('classifier')
    head = state_dict.get(f'{classifier}.weight') if isinstance(classifier, str) else None
    if head is not None and head.shape[0] != model.num_classes:
        model = timm.create_model(name, pretrained=False, num_classes=head.shape[0])
    mismatch = describe_mismatch(model.state_dict(), state_dict)
    if mismatch:
        raise CheckpointMismatchError(f'{path} does not fit {name} (a checkpoint of another configuration needs a '
                                      f'model folder, which names its arguments)', mismatch)
    model.load_state_dict(state_dict)
    return model.eval()


def load_model(name: Optional[str] = None, weights: Optional[PathLike] = None) -> nn.Module:
    """Any timm model in eval mode with its weights: `name`'s pretrained ones (its tag picks them), or those of
    `weights`: a model folder (which names its own architecture), a T2T-ViT checkpoint (reference or timm format,
    variant inferred unless named, as `load_classifier` loads it) or another timm model's checkpoint in timm's
    format, fitting `name` as timm builds it (its class count read from it)."""
    if weights is None:
        if name is None:
            raise ValueError('Name a model or give its weights.')
        if _is_t2t_vit(name):
            return load_classifier(name)
        _check_timm_name(name)
        check_weights_reachable(timm.models.get_pretrained_cfg(name).to_dict())
        return timm.create_model(name, pretrained=True).eval()
    weights = Path(weights)
    if weights.is_dir():
        return model_from_folder(weights, name)
    if name is None or _is_t2t_vit(name):
        return load_classifier(name, weights)
    architecture = name.split('.')[0]
    _check_architecture(architecture)
    return _model_from_timm_checkpoint(architecture, weights)
