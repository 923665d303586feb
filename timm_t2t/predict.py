"""Classify image files with a T2T-ViT: a pretrained tag, a checkpoint file or a saved model folder.

    model = load_classifier('t2t_vit_14')                                  # pretrained weights (Hub / release)
    model = load_classifier(weights='71.7_T2T_ViT_7.pth.tar')              # a checkpoint (reference or timm)
    model = load_classifier(weights='runs/digits/t2t_vit_7')                # a folder written by save_for_hf
    for prediction in classify(model, find_images(['photos/']), batch_size=16, precision='bf16'):
        ...

`precision` picks one of the CPU recipes of `timm_t2t.recipes` (PRECISIONS says which): fp32 runs the model as it
is; bf16 runs bfloat16 weights eagerly; int8 quantizes the Linear layers dynamically (no calibration images, no torchao
and no compile wait). The compiled ones (`fp32-compiled`, `bf16-compiled`, and `int8-static`, calibrated on the first
batch and needing torchao) compile for the first batch before any image is classified. Which is fastest depends on
the CPU: README's "What to use on a CPU".
"""
import csv
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import timm
import torch
from safetensors import SafetensorError, safe_open
from timm.data import ImageNetInfo, create_transform, resolve_data_config
from timm.layers import to_2tuple
from torch import nn

from ._compat import create_model_from_folder
from ._text import plural
from .catalog import check_model_name
from .checkpoint import CheckpointMismatchError, check_t2t_checkpoint, normalize_state_dict
from .hub import InvalidCheckpointError, read_checkpoint
from .images import find_images, read_image
from .patch_embed import T2TPatchEmbed
from .recipes import prepare
from .t2t_vit import model_args_from_state_dict

__all__ = [
    'PRECISIONS', 'DataConfigError', 'Prediction', 'classify', 'find_images', 'image_transform', 'infer_variant',
    'load_classifier', 'write_predictions',
]

_logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

# the recipe of timm_t2t.recipes each precision runs
PRECISIONS = {'fp32': 'fp32', 'fp32-compiled': 'fp32-compiled', 'bf16': 'bf16', 'bf16-compiled': 'bf16-compiled',
              'int8': 'int8-dynamic', 'int8-static': 'int8-static'}


class DataConfigError(ValueError):
    """A preprocessing setting that does not fit the model or timm's meaning of it; `key` names the setting."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f'{key}: {problem}')
        self.key = key
        self.problem = problem


@dataclasses.dataclass
class Prediction:
    """The top classes of one image, most likely first: (class index, label, probability)."""
    path: str
    classes: List[int]
    labels: List[str]
    probabilities: List[float]


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


def _model_from_checkpoint(model_name: Optional[str], path: Path, model_kwargs: Mapping[str, Any]) -> nn.Module:
    state_dict = read_checkpoint(path)
    try:
        check_t2t_checkpoint(state_dict)
    except ValueError as e:
        raise ValueError(f'{path} is not a T2T-ViT checkpoint: {e}') from e
    state_dict = normalize_state_dict(state_dict)
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


def _check_model_folder(folder: Path) -> Dict[str, Any]:
    """A saved model folder's config.json, after checking that it parses and names an architecture and that its
    model.safetensors is whole (its header read, not its weights); each problem raises an error naming the file."""
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
        config = _check_model_folder(weights)
        if model_kwargs:
            raise ValueError(f'{weights} is a saved model folder, which names its own arguments: leave out the '
                             f'model arguments.')
        model = create_model_from_folder(weights, **_folder_model_args(config))
        architecture = model.pretrained_cfg.get('architecture')
        if model_name and model_name.split('.')[0] != architecture:
            raise ValueError(f'{weights} holds a {architecture}, not a {model_name}; leave out the model name.')
        _logger.info(f'{weights}: a saved {architecture}.')
        return model.eval()
    if model_kwargs and not model_name:
        raise ValueError('Model arguments need the variant they change: name it too (--model).')
    return _model_from_checkpoint(model_name, weights, model_kwargs).eval()


def _label_names(model: torch.nn.Module) -> List[str]:
    names = model.pretrained_cfg.get('label_names')
    if names and len(names) == model.num_classes:
        return [str(n) for n in names]
    if model.num_classes == 1000:
        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)]
    return [f'class {i}' for i in range(model.num_classes)]


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit='img', file=sys.stderr, leave=False)


def _input_size(model: torch.nn.Module) -> Tuple[int, int, int]:
    """(channels, height, width) the model takes: the size a T2T-ViT was built for (timm < 1.0.31 records only the
    pretrained weights' size in the config), else its config's."""
    if getattr(model, 'img_size', None) is not None:
        return (model.in_chans, *model.img_size)
    return tuple(resolve_data_config(model=model)['input_size'])


def _check_data_config(data_config: Mapping[str, Any], in_chans: int) -> None:
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


def image_transform(
        model: torch.nn.Module,
        data_config: Optional[Mapping[str, Any]] = None,
) -> Tuple[Callable[[Any], torch.Tensor], str, Dict[str, Any]]:
    """The eval transform of a model (its own data config, `data_config`'s settings over it), the Pillow mode its
    images are read in, and the resolved config.

    Raises:
        DataConfigError: A `data_config` setting does not fit the model.
    """
    input_size = _input_size(model)
    in_chans = input_size[0]
    if in_chans not in (1, 3):
        raise ValueError(f'Images are read as RGB or grayscale; this model takes {plural(in_chans, "channel")}.')
    data_config = dict(data_config or {})
    _check_data_config(data_config, in_chans)
    config = resolve_data_config(args={**data_config, 'input_size': input_size}, model=model)
    _logger.info(f'Preprocessing: {", ".join(f"{k} {v}" for k, v in config.items())}.')
    return create_transform(**config), 'RGB' if in_chans == 3 else 'L', config


def _read_batches(
        images: Sequence[Path],
        batch_size: int,
        transform: Callable[[Any], torch.Tensor],
        mode: str,
        on_unreadable: Optional[Callable[[Path, ValueError], None]],
) -> Iterator[Tuple[List[Path], torch.Tensor]]:
    """Batches of (paths, preprocessed images) of up to `batch_size` readable images, in order."""
    paths, tensors = [], []
    for path in images:
        try:
            tensors.append(transform(read_image(path, mode)))
        except ValueError as e:
            if on_unreadable is None:
                raise
            on_unreadable(path, e)
            continue
        paths.append(path)
        if len(paths) == batch_size:
            yield paths, torch.stack(tensors)
            paths, tensors = [], []
    if paths:
        yield paths, torch.stack(tensors)


def classify(
        model: torch.nn.Module,
        images: Sequence[Path],
        batch_size: int = 16,
        top_k: int = 5,
        progress: bool = False,
        data_config: Optional[Mapping[str, Any]] = None,
        precision: str = 'fp32',
        on_unreadable: Optional[Callable[[Path, ValueError], None]] = None,
) -> Iterator[Prediction]:
    """Top-k predictions for each image, computed in batches with the model's own data config.

    Args:
        model: A classifier in eval mode.
        images: Image files.
        batch_size: Images per forward pass.
        top_k: Classes kept per image.
        progress: Show a progress bar on stderr.
        data_config: Preprocessing that differs from the model's config (`mean`, `std`, `crop_pct`,
            `interpolation`), as timm's `resolve_data_config` reads it.
        precision: One of PRECISIONS: the CPU recipe the model runs in (fp32: as it is).
        on_unreadable: Called with each image that cannot be read and the error naming it; the image is then
            skipped. Without it, the first unreadable image raises that error.

    Raises:
        DataConfigError: A `data_config` setting does not fit the model (wrong count of means, a crop_pct outside
            (0, 1]).
    """
    if batch_size < 1 or top_k < 1:
        raise ValueError(f'batch_size and top_k must be at least 1, got {batch_size} and {top_k}.')
    if precision not in PRECISIONS:
        raise ValueError(f'Unknown precision {precision!r}, expected one of {", ".join(PRECISIONS)}.')
    transform, mode, _ = image_transform(model, data_config)
    labels = _label_names(model)
    predict = None
    bar = _progress(len(images), progress)

    def skip(path: Path, error: ValueError) -> None:
        if bar is not None:
            bar.update(1)
        on_unreadable(path, error)

    try:
        batches = _read_batches(images, batch_size, transform, mode, None if on_unreadable is None else skip)
        for paths, x in batches:
            if predict is None:
                predict = prepare(model, PRECISIONS[precision], x)
            probs = predict(x).softmax(dim=-1)
            top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
            for path, values, indices in zip(paths, top.values.tolist(), top.indices.tolist()):
                yield Prediction(str(path), indices, [labels[i] for i in indices], values)
            if bar is not None:
                bar.update(len(paths))
    finally:
        if bar is not None:
            bar.close()


def write_predictions(predictions: Sequence[Prediction], path: PathLike) -> None:
    """Write predictions as JSON (a list of objects) or CSV (one row per image and rank), chosen by the suffix."""
    path = Path(path)
    if path.suffix.lower() == '.json':
        path.write_text(json.dumps([dataclasses.asdict(p) for p in predictions], indent=1), encoding='utf-8')
    elif path.suffix.lower() == '.csv':
        with open(path, 'w', newline='', encoding='utf-8') as f:
            writer = csv.writer(f)
            writer.writerow(['path', 'rank', 'class', 'label', 'probability'])
            for p in predictions:
                for rank, (index, label, prob) in enumerate(zip(p.classes, p.labels, p.probabilities), start=1):
                    writer.writerow([p.path, rank, index, label, f'{prob:.6f}'])
    else:
        raise ValueError(f'Cannot tell the format of {path}: name it .csv or .json.')
