"""Classify image files with a T2T-ViT: images prepared in batches as the model's config says (or as told), their
top classes, and the predictions written out.

    model = load_classifier('t2t_vit_14')     # or weights= a checkpoint file or a model folder: timm_t2t.weights
    for prediction in classify(model, find_images(['photos/']), batch_size=16, precision='bf16'):
        ...

The model comes from `timm_t2t.weights`; its `load_classifier`, `infer_variant` and `DataConfigError` are
importable from here too.

`precision` picks one of the CPU recipes of `timm_t2t.recipes` (PRECISIONS says which): fp32 runs the model as it
is; bf16 runs bfloat16 weights eagerly; int8 quantizes the Linear layers dynamically (no calibration images, no torchao
and no compile wait). The compiled ones (`fp32-compiled`, `bf16-compiled`, and `int8-static`, calibrated on the first
batch and needing torchao) compile for the first batch before any image is classified. Which is fastest depends on
the CPU: docs/performance.md, "What to use on a CPU".
"""
import csv
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from timm.data import ImageNetInfo, create_transform, resolve_data_config

from ._text import plural
from .images import find_images, read_image
from .recipes import prepare
from .weights import DataConfigError, check_data_config, infer_variant, load_classifier

__all__ = [
    'PRECISIONS', 'DataConfigError', 'Prediction', 'classify', 'find_images', 'image_transform', 'infer_variant',
    'load_classifier', 'write_predictions',
]

_logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

# the recipe of timm_t2t.recipes each precision runs
PRECISIONS = {'fp32': 'fp32', 'fp32-compiled': 'fp32-compiled', 'bf16': 'bf16', 'bf16-compiled': 'bf16-compiled',
              'int8': 'int8-dynamic', 'int8-static': 'int8-static'}


@dataclasses.dataclass
class Prediction:
    """The top classes of one image, most likely first: (class index, label, probability)."""
    path: str
    classes: List[int]
    labels: List[str]
    probabilities: List[float]


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
    check_data_config(data_config, in_chans)
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
