"""Convert T2T-ViT checkpoints (the reference's or timm's) and model folders into timm's Hugging Face Hub format,
checked before anything is written.

A converted folder holds `model.safetensors` and `config.json` as timm's `save_for_hf` writes them, and a model
card (`README.md`), both stating only what is known of the source: the release's tag, the reference's licence and
the paper (and in the card its numbers) for a released reference file (known by its published digest, its name or
the tag named); no tag, licence `other` and a neutral card otherwise. The config carries the preprocessing and label
names the source records (a model folder's config, a timm training checkpoint's arguments) or the caller gives. It
loads with `timm.create_model('hf-hub:ORG/REPO', pretrained=True)` once pushed, or `'local-dir:PATH'` as it is.
"""
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import timm
import torch
from huggingface_hub import CommitInfo, HfApi
from timm.models._hub import generate_readme

from ._compat import create_model_from_folder, save_for_hf
from .catalog import PAPER_MODEL_STATS, PAPER_TOP1
from .checkpoint import describe_mismatch
from .digests import file_digest
from .t2t_vit import RELEASE_DIGESTS, T2TViT, checkpoint_filter_fn, model_args_from_state_dict
from .weights import (
    DataConfigError, check_data_config, check_model_folder, model_from_folder, read_t2t_checkpoint,
    training_data_config)

__all__ = ['ConversionError', 'WeightSource', 'convert_checkpoint', 'model_card', 'push_folder']

_logger = logging.getLogger(__name__)

PAPER_URL = 'https://arxiv.org/abs/2101.11986'
REFERENCE_URL = 'https://github.com/yitu-opensource/T2T-ViT'
CITATION = """@inproceedings{yuan2021tokens,
  title={Tokens-to-Token ViT: Training Vision Transformers From Scratch on ImageNet},
  author={Yuan, Li and Chen, Yunpeng and Wang, Tao and Yu, Weihao and Shi, Yujun and Jiang, Zi-Hang and
          Tay, Francis E.H. and Feng, Jiashi and Yan, Shuicheng},
  booktitle={Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  pages={558--567},
  year={2021}
}"""


class ConversionError(ValueError):
    """The source cannot be converted, or the converted weights do not reproduce it."""


def _dataset(num_classes: int, tag: str) -> Optional[str]:
    if 'cifar100' in tag and num_classes == 100:
        return 'CIFAR-100'
    if 'cifar10' in tag and num_classes == 10:
        return 'CIFAR-10'
    return 'ImageNet-1k' if num_classes == 1000 else None


@dataclasses.dataclass(frozen=True)
class WeightSource:
    """What is known of the file or model folder a model was converted from.

    Attributes:
        file: Its name.
        release_url: The reference release it is (its weights are those the paper describes), or None when it is not
            known to be one.
        identified_by: How it is known to be that release (its published digest, its name, the tag it was
            converted as).
        key_format: 'timm' or 'reference' when its keys tell which format it is in, else None.
        folder: Whether it is a model folder (config.json + model.safetensors) rather than a checkpoint file.
    """
    file: str
    release_url: Optional[str] = None
    identified_by: Optional[str] = None
    key_format: Optional[str] = None
    folder: bool = False


_SOURCE_KINDS = {
    'timm': 'a timm checkpoint',
    'reference': "a checkpoint in the reference implementation's format",
    None: 'a checkpoint',
}

# what a pretrained cfg says of the release it describes: a converted config keeps it for a released file only
_RELEASE_FIELDS = ('tag', 'license', 'origin_url', 'paper_ids', 'paper_name', 'notes')


def model_card(model: T2TViT, source: WeightSource, repo_id: Optional[str] = None) -> Dict[str, Any]:
    """timm model card fields (see timm's generate_readme) for a converted model, stating only what is known.

    A released reference file gets the reference's licence, the paper's numbers and its dataset; any other
    checkpoint a neutral card: licence `other` with a line to fill in, no paper numbers, no dataset.

    Args:
        model: The converted model, with the pretrained cfg of its tag.
        source: What is known of the file it was converted from.
        repo_id: The Hub repo it goes to, for the usage snippet.
    """
    cfg = model.pretrained_cfg
    released = source.release_url is not None
    name = '.'.join(filter(None, (cfg['architecture'], cfg.get('tag')))) if released else cfg['architecture']
    height, width = model.img_size
    stats = {
        'Params (M)': round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        'Image size': f'{height} x {width}',
    }
    if released and cfg['architecture'] in PAPER_MODEL_STATS:
        params, gmacs = PAPER_MODEL_STATS[cfg['architecture']]
        stats.update({'Params (M), paper': params, 'GMACs at 224 x 224, paper': gmacs})
    if released and name in PAPER_TOP1:
        stats['Top-1 accuracy (%), paper'] = PAPER_TOP1[name]
    dataset = _dataset(model.num_classes, cfg.get('tag') or '') if released else None
    model_ref = f'hf-hub:{repo_id}' if repo_id else 'local-dir:PATH_TO_THIS_FOLDER'
    if released:
        origin = (f'the weights released with the reference implementation ({REFERENCE_URL}), converted to timm from '
                  f'`{source.file}`, the official release file (known by {source.identified_by})')
        provenance = {'Original': REFERENCE_URL, 'Weights': source.release_url}
    else:
        kind = 'a timm model folder' if source.folder else _SOURCE_KINDS[source.key_format]
        origin = (f'weights converted to timm from {kind} (`{source.file}`), not known to be a released reference '
                  f'file: the paper\'s numbers do not describe them')
        provenance = {
            'Architecture': REFERENCE_URL,
            'Weights': f'converted from {kind}, `{source.file}`',
            'License': 'not known: state the licence of these weights here and in the `license` field above',
        }
    details = {
        'Model Type': 'Image classification / feature backbone',
        'Model Stats': stats,
        'Papers': {'Tokens-to-Token ViT: Training Vision Transformers from Scratch on ImageNet': PAPER_URL},
        **({'Dataset': dataset} if dataset else {}),
        **provenance,
    }
    return {
        'description': (
            f'T2T-ViT ({name}), a Tokens-to-Token Vision Transformer, with {origin}. Load it with the `timm-t2t` '
            f'package installed.'),
        'details': details,
        'usage': (
            '```python\nimport timm  # with timm-t2t installed\n\n'
            f"model = timm.create_model('{model_ref}', pretrained=True).eval()\n"
            'config = timm.data.resolve_data_config(model=model)\n'
            'transform = timm.data.create_transform(**config)\n```\n'),
        'citation': CITATION,
        'license': 'bsd-3-clause-clear' if released else 'other',
    }


def _weight_source(
        source: Path, key_format: Optional[str], model: T2TViT, tagged: bool, as_built: bool) -> WeightSource:
    """What is known of `source`: the release of the model's tag if its published digest, else its file name or the
    tag named, says so and the model has that release's configuration (`as_built`: no model arguments given)."""
    cfg = model.pretrained_cfg
    url = cfg.get('url')
    identified_by = None
    if url and as_built and key_format != 'timm' and (model.num_classes, model.in_chans, *model.img_size) == (
            cfg['num_classes'], *cfg['input_size']):
        published = RELEASE_DIGESTS.get(url)
        if published is not None:  # the release is known by its digest: nothing else makes a file that release
            if source.stat().st_size == published.size and file_digest(source) == published:
                identified_by = 'its published SHA-384 digest'
        elif source.name == os.path.basename(urllib.parse.urlparse(url).path):
            identified_by = 'its file name'
        elif tagged:
            identified_by = f'the tag it was converted as, {cfg["architecture"]}.{cfg["tag"]}'
    return WeightSource(source.name, url if identified_by else None, identified_by, key_format)


def _check_model_name(model_name: str) -> None:
    """Raise ConversionError unless `model_name` is a T2T-ViT entry point, with a pretrained tag it has."""
    architecture = model_name.split('.')[0]
    if architecture not in timm.list_models('t2t_vit*'):
        raise ConversionError(
            f'Unknown T2T-ViT variant {architecture!r}; choose from {", ".join(timm.list_models("t2t_vit*"))}.')
    if '.' in model_name and model_name not in timm.list_models(f'{architecture}.*', include_tags=True):
        raise ConversionError(
            f'Unknown pretrained tag {model_name!r}; known: {", ".join(timm.list_pretrained(architecture + ".*"))}.')


def _checkpoint_model(
        source: Path, model_name: Optional[str], model_kwargs: Dict[str, Any], use_ema: bool,
) -> Tuple[T2TViT, Dict[str, Any], WeightSource]:
    """The model a checkpoint file's weights are loaded into, the arguments that build it again, and what is known
    of the file."""
    if model_name is None:
        raise ConversionError(f'{source} is a checkpoint file: name the T2T-ViT variant it holds (--model).')
    try:
        state_dict, key_format = read_t2t_checkpoint(source, use_ema=use_ema)
    except (OSError, ValueError) as e:  # unreadable (InvalidCheckpointError) or not a T2T-ViT's
        raise ConversionError(str(e)) from e
    kwargs = {**model_args_from_state_dict(state_dict, model_kwargs.get('soft_splits')), **model_kwargs}
    try:
        model = timm.create_model(model_name, **kwargs)
    except (RuntimeError, ValueError, TypeError) as e:
        raise ConversionError(f'Cannot build {model_name} with {kwargs}: {e}') from e
    state_dict = checkpoint_filter_fn(state_dict, model)
    problems = describe_mismatch(model.state_dict(), state_dict)
    if problems:
        raise ConversionError(f'{source} does not fit {model_name}: {problems}.')
    model.load_state_dict(state_dict)
    weight_source = _weight_source(source, key_format, model, tagged='.' in model_name, as_built=not model_kwargs)
    return model, kwargs, weight_source


def _folder_model(
        source: Path, model_name: Optional[str], model_kwargs: Dict[str, Any],
) -> Tuple[T2TViT, Dict[str, Any], WeightSource]:
    """The model a folder holds, the arguments that build it again (its config's), and what is known of it."""
    if model_name and '.' in model_name:
        raise ConversionError(f'{source} is a model folder, which carries its own config: leave out the pretrained '
                              f'tag, or --model altogether.')
    try:
        config = check_model_folder(source)
    except (OSError, ValueError) as e:
        raise ConversionError(str(e)) from e
    if config['architecture'] not in timm.list_models('t2t_vit*'):
        raise ConversionError(f'{source} holds a {config["architecture"]}, not a T2T-ViT.')
    try:
        model = model_from_folder(source, model_name, model_kwargs)
    except (OSError, ValueError) as e:
        raise ConversionError(str(e)) from e
    return model, config.get('model_args', {}), WeightSource(source.name, key_format='timm', folder=True)


def _pretrained_cfg(
        cfg: Mapping[str, Any],
        source: WeightSource,
        data_config: Mapping[str, Any],
        label_names: Optional[Sequence[str]],
) -> Dict[str, Any]:
    """The pretrained cfg a converted folder carries: the model's, with the release's tag, licence, paper and notes
    only for a released file (any other weights: no tag, licence `other`, as the card says); `data_config` over its
    preprocessing and `label_names` over its labels."""
    cfg = dict(cfg)
    if source.release_url is None:
        for key in _RELEASE_FIELDS:
            cfg.pop(key, None)
        cfg['license'] = 'other'
    cfg.update(data_config)
    if label_names is not None:
        cfg['label_names'] = list(label_names)
    return cfg


def _publish_permissions(folder: Path) -> None:
    """Give the folder and its files the permissions new files get here (a temporary folder is private)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def _config_for_every_loader(folder: Path, model: T2TViT) -> None:
    """Make config.json describe the converted model to timm and to transformers' timm wrapper alike.

    The wrapper builds the model with `num_classes` from the config's `num_classes` and with `**model_args`, so the
    count leaves `model_args` (where the build arguments, and timm itself from 1.0.31, put it; the wrapper fails on
    it with "got multiple values for keyword argument 'num_classes'"): timm reads it from the config's `num_classes`.
    The wrapper's image processor reads the pretrained cfg, where timm before 1.0.31 leaves the tag's input size and
    class count: both become the model's.
    """
    path = folder / 'config.json'
    config = json.loads(path.read_text(encoding='utf-8'))
    config.get('model_args', {}).pop('num_classes', None)
    config['pretrained_cfg'].update(num_classes=config['num_classes'], input_size=[model.in_chans, *model.img_size])
    path.write_text(json.dumps(config, indent=2), encoding='utf-8')


def _logits(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(inputs)


def convert_checkpoint(
        source: Union[str, Path],
        output_dir: Union[str, Path],
        model_name: Optional[str] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        use_ema: bool = True,
        repo_id: Optional[str] = None,
        atol: float = 1e-5,
        data_config: Optional[Mapping[str, Any]] = None,
        label_names: Optional[Sequence[str]] = None,
) -> Tuple[Path, float]:
    """Write a T2T-ViT checkpoint or model folder as a timm Hub folder, after checking it reproduces the source's
    logits.

    A checkpoint file is loaded into `model_name` (an entry point, optionally with a pretrained tag whose cfg the
    folder carries) with the classes, channels and input size its weights have; a model folder (config.json +
    model.safetensors, as `save_for_hf` writes it) names its own architecture and config, and `model_name`, if
    given, must be its architecture. The folder is written to a temporary place, loaded back through timm
    (`local-dir:`) and its logits compared with the source model's; only then is it moved to `output_dir`, which
    must not exist or be empty.

    Args:
        data_config: Preprocessing (`mean`, `std`, `crop_pct`, `interpolation`) the weights were trained with, over
            what the source records (a folder's config, a timm training checkpoint's arguments) and the model's own.
        label_names: The class names, in class order, over the source's.

    Returns:
        The output folder and the largest logit difference found.

    Raises:
        DataConfigError: A `data_config` setting or the label count does not fit the model.
        ConversionError: The source cannot be converted, or the converted weights do not reproduce it.
    """
    source, output_dir = Path(source), Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise ConversionError(f'{output_dir} already exists and is not an empty directory.')
    if model_name is not None:
        _check_model_name(model_name)
    if not source.exists():
        raise ConversionError(f'No checkpoint file or model folder at {source}.')
    model_kwargs = dict(model_kwargs or {})
    if source.is_dir():
        model, kwargs, weight_source = _folder_model(source, model_name, model_kwargs)
        recorded = None
    else:
        model, kwargs, weight_source = _checkpoint_model(source, model_name, model_kwargs, use_ema)
        recorded = training_data_config(source)
    data_config = dict(data_config or {})
    check_data_config(data_config, model.in_chans)
    if label_names is not None and len(label_names) != model.num_classes:
        raise DataConfigError('label_names', f'expected {model.num_classes} names (one per class of the model), got '
                                             f'{len(label_names)}')
    model.pretrained_cfg = _pretrained_cfg(
        model.pretrained_cfg, weight_source, {**(recorded or {}), **data_config}, label_names)
    cfg = model.pretrained_cfg
    preprocessing_known = bool(weight_source.release_url or weight_source.folder or recorded is not None or data_config)

    torch.manual_seed(0)
    inputs = torch.randn(2, model.in_chans, *model.img_size)
    expected = _logits(model, inputs)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / 'converted'
        labels = dict(label_names=cfg['label_names']) if cfg.get('label_names') else None  # top level, as timm's
        save_for_hf(model, folder, model_config=labels, model_args=kwargs, safe_serialization=True)  # build it again
        _config_for_every_loader(folder, model)
        (folder / 'README.md').write_text(generate_readme(
            model_card(model, weight_source, repo_id), repo_id or model_name or cfg['architecture']), encoding='utf-8')
        _publish_permissions(folder)
        reloaded = create_model_from_folder(folder)
        diff = (_logits(reloaded, inputs) - expected).abs().max().item()
        if not diff <= atol:
            raise ConversionError(f'The converted weights do not reproduce the source logits (max diff {diff:.3g}).')
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        if output_dir.exists():
            output_dir.rmdir()
        shutil.move(str(folder), str(output_dir))
    _logger.info(f'Converted {source} to {output_dir} ({model_name or cfg["architecture"]}); logits reproduced '
                 f'within {diff:.3g}.')
    if weight_source.release_url:
        _logger.info(f'Model card: the official release {weight_source.release_url} (known by '
                     f'{weight_source.identified_by}), licence bsd-3-clause-clear.')
    else:
        _logger.warning(
            f'{source} is not known to be a released reference file: the model card quotes no paper numbers, and it '
            f'and config.json give no pretrained tag and the licence as "other"; fill in the weights\' licence in '
            f'{output_dir / "README.md"} and {output_dir / "config.json"}.')
    if model.num_classes != 1000 and not preprocessing_known:
        _logger.warning(
            f'{source} records no preprocessing, and its {model.num_classes} classes are not ImageNet\'s: '
            f'{output_dir / "config.json"} gives the model config\'s (mean {cfg["mean"]}, std {cfg["std"]}, crop_pct '
            f'{cfg["crop_pct"]}); if it was trained otherwise, convert again with --mean, --std and --crop-pct.')
    return output_dir, diff


def push_folder(
        folder: Union[str, Path], repo_id: str, private: bool = False, token: Optional[str] = None) -> CommitInfo:
    """Upload a converted folder to a Hub repo (created if missing). Returns the commit: its `oid` is the revision
    to pin (hf_hub_id 'ORG/REPO@OID')."""
    api = HfApi(token=token, library_name='timm-t2t')
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message='Add T2T-ViT weights')
    _logger.info(f'Uploaded {folder} to {repo_id} as commit {commit.oid}.')
    return commit
