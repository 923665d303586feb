"""The `timm-t2t` command: list and describe the models, classify images, convert reference checkpoints.

Arguments are parsed, and image and output paths checked, before torch and timm are imported, so `--help` and
mistakes answer at once; a torch install that does not import is one line saying what to do. Every failure is one line
on stderr (`timm-t2t COMMAND: error: ...`): exit status 2 for a command line that does not parse (or a preprocessing
option that does not fit the model), 1 for anything else.
"""
import argparse
import ast
import importlib
import importlib.util
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

from . import allocator
from ._text import HelpFormatter, plural

__all__ = ['main']

_logger = logging.getLogger(__name__)

_DESCRIPTION = """T2T-ViT (Tokens-to-Token Vision Transformer) models for timm.

  timm-t2t list
      the variants: size, cost, pretrained tags, cached weights
  timm-t2t info MODEL
      a model's config, feature pyramid and weight sources
  timm-t2t classify IMAGE_OR_FOLDER...
      top-k classes of images
  timm-t2t convert SOURCE OUT_DIR [--model NAME]
      a checkpoint (or model folder) as a Hugging Face Hub folder
  timm-t2t features IMAGE_OR_FOLDER... --models M
      feature maps as the paper's Figure 2, invalid channels, richness

Run `timm-t2t COMMAND --help` for a command's options.
"""
# timm_t2t.predict.PRECISIONS, named here without importing torch
_PRECISIONS = ('fp32', 'fp32-compiled', 'bf16', 'bf16-compiled', 'int8', 'int8-static')
_PREPROCESSING = ('mean', 'std', 'crop_pct', 'interpolation')  # timm_t2t.weights.DATA_CONFIG_KEYS, without torch
_REINSTALL_TORCH = ('reinstall both in one pip command, from one index, e.g. pip install --upgrade torch torchvision '
                    '(add the --index-url they should both come from, if any)')
_FEATURES_OFFLINE_ADVICE = ('Give every model weights you have, with --weights and one path per model (a model '
                            'folder, or a checkpoint with --models naming its architecture).')
_OFFLINE_ADVICE = ('Pass weights you have with --weights FILE, or train a digits model offline in a checkout of '
                   'timm-t2t (pip install -e ".[bench]" && python benchmarks/small_data.py --seeds 1, a few minutes) '
                   'and use it on digit images with --weights runs/digits/t2t_vit_7.')


class _ArgumentParser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (the usage itself is one `--help` away) and every command's help
    wrapped at one width."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, formatter_class=HelpFormatter, **kwargs)

    def error(self, message: str):
        self.exit(2, f'{self.prog}: error: {message} (see {self.prog} --help)\n')


class _KeyValues(argparse.Action):
    """Collect KEY=VALUE arguments into a dict, VALUE read as a Python literal when it is one."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        kwargs: Dict[str, Any] = {}
        for item in values:
            key, sep, value = item.partition('=')
            if not sep or not key:
                parser.error(f'{option_string} takes KEY=VALUE pairs, got {item!r}')
            try:
                kwargs[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                kwargs[key] = value
        setattr(namespace, self.dest, kwargs)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f'expected a whole number of at least 1, got {text!r}')
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f'expected a fraction of the resized image in (0, 1], got {text!r}')
    return value


def _verbose_flag() -> argparse.ArgumentParser:
    """`-v` for the subcommands too (`timm-t2t classify -v ...`), not resetting one given before the command."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument('-v', '--verbose', action='store_true', default=argparse.SUPPRESS,
                        help='say what the command does on the way: where weights come from, how images are '
                             'preprocessed, which recipe runs, how memory is kept')
    return parent


def _add_list(subparsers) -> None:
    parser = subparsers.add_parser(
        'list', help='list the T2T-ViT variants', parents=[_verbose_flag()],
        description='Every registered T2T-ViT variant: its stem, width and depth, parameters and MACs (measured on '
                    'the model at its input size), and its pretrained tags with the paper\'s top-1 and whether the '
                    'weights are in the local cache.')
    parser.add_argument('--json', action='store_true', help='print JSON instead of a table')


def _add_info(subparsers) -> None:
    parser = subparsers.add_parser(
        'info', help='describe one model', parents=[_verbose_flag()],
        description='A model\'s resolved pretrained config, input size, feature pyramid (channels and strides of '
                    'features_only) and where its weights come from (Hub repo, release URL, local cache).')
    parser.add_argument('model', metavar='MODEL',
                        help='model name, optionally with a pretrained tag, e.g. t2t_vit_14.in1k_384')
    parser.add_argument('--json', action='store_true', help='print JSON instead of text')


def _add_classify(subparsers) -> None:
    parser = subparsers.add_parser(
        'classify', help='classify images with a T2T-ViT', parents=[_verbose_flag()],
        description='Print the most likely classes of images under a T2T-ViT: pretrained weights (downloaded on '
                    'first use), a checkpoint file or a saved model folder. Folders are searched recursively.')
    parser.add_argument('images', nargs='+', type=Path, metavar='IMAGE_OR_FOLDER', help='image files or folders')
    parser.add_argument('--model', default=None, help='model name with optional pretrained tag (default: '
                        't2t_vit_14; a saved model folder names its own); see `timm-t2t list`')
    parser.add_argument('--weights', type=Path, help='load weights from this checkpoint file (reference or timm '
                        'format) or model folder (config.json + model.safetensors) instead of downloading them')
    parser.add_argument('--model-kwargs', nargs='+', default={}, action=_KeyValues, metavar='KEY=VALUE',
                        help='model arguments for a checkpoint of an architecture no entry point builds as it is, '
                             'e.g. embed_dim=64 depth=2 num_heads=2 (with --model naming the variant it changes)')
    parser.add_argument('--mean', type=float, nargs='+', metavar='M',
                        help='normalization mean per channel (default: the model\'s config)')
    parser.add_argument('--std', type=float, nargs='+', metavar='S',
                        help='normalization standard deviation per channel (default: the model\'s config)')
    parser.add_argument('--crop-pct', type=_fraction, help='center crop fraction, in (0, 1] (default: the model\'s '
                        'config)')
    parser.add_argument('--interpolation', choices=('bilinear', 'bicubic', 'nearest'),
                        help='resize interpolation (default: the model\'s config)')
    parser.add_argument('--top-k', type=_positive_int, default=5, help='classes per image (default: %(default)s)')
    parser.add_argument('--batch-size', type=_positive_int, default=16,
                        help='images per forward pass (default: %(default)s)')
    parser.add_argument('--precision', choices=_PRECISIONS, default='fp32', metavar='PRECISION',
                        help='fp32: the model as it is (exact; the default); bf16: bfloat16 weights (logits within '
                             '~0.1; needs AVX-512 or AMX); int8: dynamic int8 quantization of the Linear layers '
                             '(logits within ~0.3); fp32-compiled, bf16-compiled and int8-static (int8 activations '
                             'calibrated on the first batch; needs torchao) are compiled before the first image '
                             '(14-27 s for T2T-ViT-14 on 2 cores). Fastest for T2T-ViT-14, against fp32 in the same '
                             'run (docs/performance.md, "What to use on a CPU"): with AMX bf16-compiled 3.6x (bf16 '
                             '2.9x); with AVX512-BF16 bf16 2.4x (int8-static 2.3x, an earlier run); AVX2 only '
                             '(emulated): int8-static 1.44x, int8 1.35x, fp32-compiled 1.08x')
    parser.add_argument('--output', type=Path, help='write the predictions to this .csv or .json file instead of '
                        'printing them (good images only, when some cannot be read); checked before the model loads')
    parser.add_argument('--no-progress', dest='progress', action='store_false',
                        help='no progress bar (shown on a terminal for more than one batch)')
    parser.set_defaults(usage_error=parser.error)


def _add_convert(subparsers) -> None:
    parser = subparsers.add_parser(
        'convert', help='convert a checkpoint or model folder to a Hugging Face Hub folder', parents=[_verbose_flag()],
        description='Convert a checkpoint released with (or trained by) the reference T2T-ViT code, a timm '
                    'checkpoint or a model folder into timm\'s Hugging Face Hub format: model.safetensors, '
                    'config.json and a model card. The converted weights are loaded back through timm and must '
                    'reproduce the source logits before anything is written. Only a released reference file gets '
                    'the release\'s tag, licence and paper; the config carries the preprocessing and label names '
                    'the source records (a model folder\'s config, a timm training checkpoint\'s arguments) or '
                    'the options below give.')
    parser.add_argument('checkpoint', type=Path, metavar='SOURCE',
                        help='checkpoint (.pth.tar / .pth: state_dict, state_dict_ema or net entries, DataParallel '
                             'prefixes allowed) or model folder (config.json + model.safetensors)')
    parser.add_argument('output_dir', type=Path, metavar='OUT_DIR',
                        help='folder to write; must not exist or be empty')
    parser.add_argument('--model', help='T2T-ViT entry point, optionally with the pretrained tag whose config the '
                        'folder should carry, e.g. t2t_vit_14 or t2t_vit_14.in1k_384; the card quotes the paper '
                        'only for a released file (needed for a checkpoint; a model folder names its own)')
    parser.add_argument('--model-kwargs', nargs='+', default={}, action=_KeyValues, metavar='KEY=VALUE',
                        help='extra model arguments for architectures other than the entry point\'s own, '
                             'e.g. depth=12 embed_dim=256')
    parser.add_argument('--mean', type=float, nargs='+', metavar='M',
                        help='normalization mean per channel the weights were trained with (default: the '
                             'source\'s, else the model\'s config)')
    parser.add_argument('--std', type=float, nargs='+', metavar='S',
                        help='normalization standard deviation per channel (default: the source\'s, else the '
                             'model\'s config)')
    parser.add_argument('--crop-pct', type=_fraction, help='center crop fraction, in (0, 1] (default: the '
                        'source\'s, else the model\'s config)')
    parser.add_argument('--interpolation', choices=('bilinear', 'bicubic', 'nearest'),
                        help='resize interpolation (default: the source\'s, else the model\'s config)')
    parser.add_argument('--label-names', nargs='+', metavar='NAME',
                        help='class names in class order, one per class (default: the source\'s, if it names '
                             'them)')
    parser.add_argument('--no-ema', dest='use_ema', action='store_false',
                        help='convert state_dict rather than state_dict_ema when a checkpoint has both')
    parser.add_argument('--push-to-hub', metavar='ORG/REPO', help='then upload the folder to this Hub repo and print '
                        'the commit to pin it by')
    parser.add_argument('--private', action='store_true', help='create the Hub repo as private')
    parser.add_argument('--token', help='Hugging Face token (default: the one huggingface_hub finds)')
    parser.set_defaults(usage_error=parser.error)


_FEATURES_DESCRIPTION = """\
Draw the feature maps of models on an image as the T2T-ViT paper's Figure 2 does, and measure over all the images
how many channels are invalid and how rich the channels are, per model and layer.

Maps come from timm: forward_intermediates (a T2T-ViT's re-structurized T2T-layer maps, then its blocks' tokens on
their grid; a ViT's blocks' tokens without class or register tokens; a CNN's stage outputs), or the feature_info
modules' outputs (as features_only) for a model without it. --layers are indices into the model's feature list
(timm's feature_info), as forward_intermediates' indices; a T2T-ViT's list is its two T2T maps, then its blocks. Each
map is drawn scaled on its own from its minimum (black) to its maximum (white), as the paper's visualization code does.

A channel is invalid on an image when its map is flat (standard deviation at most 1% of the median channel's of that
layer, on that image: an all-zero map included) or outlying (largest absolute value more than 10 times the median of
the layer's non-flat channels' largest absolute values); invalid channels are framed in red. Richness is the effective
rank of the layer's channels over every position of every image: exp of the entropy of the normalized singular values
of the centred (positions x channels) matrix, from 1 to the channel count.

The figure shows the first image; the table and --json cover all of them. Drawing needs matplotlib.
"""


def _add_features(subparsers) -> None:
    parser = subparsers.add_parser(
        'features', help='feature maps, invalid channels and richness of models', parents=[_verbose_flag()],
        description=_FEATURES_DESCRIPTION)
    parser.add_argument('images', nargs='+', type=Path, metavar='IMAGE_OR_FOLDER',
                        help='image files or folders (searched recursively); the figure shows the first image')
    parser.add_argument('--models', nargs='+', metavar='MODEL',
                        help='timm model names, optionally with a pretrained tag (weights downloaded on first use), '
                             'e.g. t2t_vit_14 vit_small_patch16_224.augreg_in21k_ft_in1k resnet50.a1_in1k; with '
                             '--weights, the architecture of each weights path')
    parser.add_argument('--weights', nargs='+', type=Path, metavar='PATH',
                        help='one per model, in order: a model folder (config.json + model.safetensors, naming its '
                             'architecture: --models may be left out), a T2T-ViT checkpoint file (variant inferred) '
                             "or another timm model's checkpoint in timm's format")
    parser.add_argument('--layers', nargs='+', type=int, metavar='I',
                        help='indices into each model\'s feature list, negative from the end (default: 4 spread '
                             'over depth, first and last included)')
    parser.add_argument('--channels', type=_positive_int, default=16,
                        help='channels drawn per layer, the first ones (default: %(default)s)')
    parser.add_argument('--size', type=_positive_int, default=512,
                        help='side in pixels of each layer\'s grid of maps in the figure (default: %(default)s)')
    parser.add_argument('--interpolation', choices=('bilinear', 'bicubic', 'nearest'), default='bilinear',
                        help='how maps are upscaled for the figure (default: %(default)s)')
    parser.add_argument('--output', type=Path, help='draw the figure into this image file (.png, .jpg, .pdf, .svg)')
    parser.add_argument('--json', type=Path, help='write the measurements to this JSON file')
    parser.add_argument('--batch-size', type=_positive_int, default=16,
                        help='images per forward pass (default: %(default)s)')
    parser.set_defaults(usage_error=parser.error)


def _import_libraries() -> None:
    """Import torch, torchvision and timm, saying in one line what to do when the install is broken (e.g. a
    torchvision built for another torch: `operator torchvision::nms does not exist`)."""
    for name in ('torch', 'torchvision', 'timm'):
        try:
            importlib.import_module(name)
        except Exception as e:  # a broken install fails in many ways: ImportError, RuntimeError, OSError
            problem = f'{type(e).__name__}: {e}'
            if name == 'timm':
                raise RuntimeError(f'timm could not be imported ({problem}): reinstall it, e.g. pip install --upgrade '
                                   f'timm (releases before 1.0.22 need huggingface_hub<1.0 beside them).') from e
            raise RuntimeError(f'torch/torchvision could not be imported ({name}: {problem}): '
                               f'{_REINSTALL_TORCH}.') from e


def _millions(count: int) -> str:
    return f'{count / 1e6:.1f}M'


def _list(args: argparse.Namespace) -> None:
    import json

    _import_libraries()
    from .catalog import variants

    rows = variants()
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    header = f'{"model":20} {"stem":12} {"width":>5} {"depth":>5} {"params":>7} {"GMACs":>6}  pretrained tags ' \
             f'(paper top-1, * = weights cached)'
    print(header)
    print('-' * len(header))
    for row in rows:
        tags = ', '.join(
            f'{t["tag"]}{"*" if t["cached"] else ""}' + (f' ({t["top1"]})' if t['top1'] is not None else '')
            for t in row['tags']) or '-'
        print(f'{row["model"]:20} {row["stem"]:12} {row["width"]:5} {row["depth"]:5} {_millions(row["params"]):>7} '
              f'{row["macs"] / 1e9:6.2f}  {tags}')
    print('\nMACs at each model\'s input size (224 x 224). `timm-t2t info MODEL` for more.')


def _hub_pin(weights: Dict[str, Any]) -> str:
    if weights['hub_pinned']:
        return f'pinned to commit {weights["hub_revision"]}'
    if weights['hub_revision']:
        return f'not pinned: follows the branch or tag {weights["hub_revision"]!r}'
    return 'not pinned: follows main'


def _release_digest(digest: Dict[str, Any]) -> str:
    if digest['published']:
        return f'sha384 {digest["sha384"]}, {digest["size"]:,} bytes (published)'
    if digest['first_download']:
        return (f'no published digest (first download recorded: sha384 {digest["sha384"]}, {digest["size"]:,} '
                f'bytes, {digest["first_download"]})')
    return 'no published digest (first download not recorded yet: it will be, and later copies checked against it)'


def _info(args: argparse.Namespace) -> None:
    import json

    _import_libraries()
    from .catalog import describe_model

    info = describe_model(args.model)
    if args.json:
        print(json.dumps(info, indent=1, default=str))
        return
    channels, height, width = info['input_size']
    print(f'{info["model"]}: {info["stem"]} stem, {_millions(info["params"])} parameters, '
          f'{info["macs"] / 1e9:.2f} GMACs at {height} x {width}')
    print(f'input: {channels} x {height} x {width} (fixed_input_size is timm\'s flag for these weights; the model '
          f'takes other sizes with img_size=(H, W) or dynamic_img_size=True)')
    print('feature pyramid (features_only): ' + ', '.join(
        f'{f["channels"]} channels at stride {f["stride"]}' for f in info['feature_pyramid']))
    weights = info['weights']
    if weights is None:
        print('weights: none released (train it, or load your own checkpoint)')
    else:
        print(f'weights: Hugging Face Hub {weights["hub"]} ({_hub_pin(weights)}), falling back to '
              f'{weights["release_url"]}')
        print(f'         release file digest: {_release_digest(weights["release_digest"])}')
        print(f'         {"cached at " + weights["cached"] if weights["cached"] else "not in the local cache"}'
              + (f'; paper top-1 {weights["paper_top1"]}' if weights['paper_top1'] is not None else ''))
    print('pretrained config:')
    for key, value in info['pretrained_cfg'].items():
        print(f'  {key}: {value}')


def _given_preprocessing(args: argparse.Namespace) -> Dict[str, Any]:
    """The preprocessing options given on the command line (`--mean`, `--std`, `--crop-pct`, `--interpolation`)."""
    return {key: getattr(args, key) for key in _PREPROCESSING if getattr(args, key) is not None}


def _preprocessing_usage_error(args: argparse.Namespace, error: Any) -> None:
    """A preprocessing option that does not fit the model (a weights.DataConfigError) as the usage error it is."""
    args.usage_error(f'argument --{error.key.replace("_", "-")}: {error.problem}')


def _check_writable(option: str, path: Path) -> None:
    """Raise OSError naming `option` unless `path` can be written: its folder exists and takes the file (tried by
    opening it to append, and removing it again if it was not there)."""
    if not path.parent.is_dir():
        raise FileNotFoundError(f'No folder {path.parent} to write {option} {path} into: create it first.')
    existed = path.exists()
    try:
        with open(path, 'a', encoding='utf-8'):
            pass
    except OSError as e:
        raise OSError(f'Cannot write {option} {path}: {e.strerror or type(e).__name__}.') from e
    if not existed:
        path.unlink()


def _check_classify_paths(args: argparse.Namespace) -> List[Path]:
    """The images to classify; the output and weights paths checked too, all before torch loads (a typo or an
    output that cannot be written fails at once, before any download or any image is classified)."""
    from .images import find_images

    images = find_images(args.images)
    if args.output is not None:
        if args.output.suffix.lower() not in ('.csv', '.json'):
            raise ValueError(f'Cannot tell the format of {args.output}: name it .csv or .json.')
        _check_writable('--output', args.output)
    if args.weights is not None and not args.weights.exists():
        raise FileNotFoundError(f'No checkpoint file or model folder at {args.weights}.')
    return images


def _classify(args: argparse.Namespace) -> None:
    images = _check_classify_paths(args)
    _import_libraries()
    from .hub import WeightsUnavailableError
    from .predict import PRECISIONS, classify, write_predictions
    from .recipes import check_recipe
    from .weights import DataConfigError, load_classifier, training_data_config

    check_recipe(PRECISIONS[args.precision])  # the CPU and torch can run it: known before any weights are loaded
    try:
        model = load_classifier(
            args.model or ('t2t_vit_14' if args.weights is None else None), args.weights, args.model_kwargs)
    except WeightsUnavailableError as e:
        raise WeightsUnavailableError(e.problem, _OFFLINE_ADVICE) from e
    weights_file = args.weights is not None and args.weights.is_file()
    recorded = training_data_config(args.weights) if weights_file else None
    if recorded:
        _logger.info(f'{args.weights} records the preprocessing it was trained with (timm train.py\'s arguments): '
                     f'{", ".join(f"{k} {v}" for k, v in recorded.items())}.')
    data_config = {**(recorded or {}), **_given_preprocessing(args)}
    if weights_file and model.num_classes != 1000 and not data_config:
        cfg = model.pretrained_cfg  # ImageNet's preprocessing: right for ImageNet weights, a guess for others
        _logger.warning(
            f'{args.weights} carries no preprocessing config: images are prepared as for ImageNet (mean '
            f'{cfg.get("mean")}, std {cfg.get("std")}, crop_pct {cfg.get("crop_pct")}); if it was trained otherwise, '
            f'pass --mean, --std and --crop-pct.')
    show_progress = args.progress and sys.stderr.isatty() and len(images) > args.batch_size
    unreadable = []

    def skip(path: Path, error: ValueError) -> None:
        unreadable.append(path)
        print(f'timm-t2t classify: skipped: {error}', file=sys.stderr)

    predictions = []
    try:
        for prediction in classify(model, images, args.batch_size, args.top_k, progress=show_progress,
                                   data_config=data_config, precision=args.precision, on_unreadable=skip):
            predictions.append(prediction)
            if args.output is None:
                print(f'{prediction.path}:')
                for prob, label in zip(prediction.probabilities, prediction.labels):
                    print(f'  {prob:7.2%}  {label}')
    except DataConfigError as e:
        _preprocessing_usage_error(args, e)
    if args.output is not None:
        write_predictions(predictions, args.output)
        print(f'Wrote {plural(len(predictions), "prediction")} to {args.output}.')
    if unreadable:
        raise ValueError(f'Could not read {len(unreadable)} of {plural(len(images), "image")} (named above); '
                         f'{plural(len(predictions), "image")} classified.')


def _convert(args: argparse.Namespace) -> None:
    if args.model is None and args.checkpoint.is_file():
        args.usage_error(f'--model is needed for a checkpoint file such as {args.checkpoint} (a model folder names '
                         f'its own architecture)')
    _import_libraries()
    from .convert import convert_checkpoint, push_folder
    from .weights import DataConfigError

    try:
        folder, diff = convert_checkpoint(
            args.checkpoint, args.output_dir, args.model, model_kwargs=args.model_kwargs, use_ema=args.use_ema,
            repo_id=args.push_to_hub, data_config=_given_preprocessing(args), label_names=args.label_names)
    except DataConfigError as e:
        _preprocessing_usage_error(args, e)
    print(f'Wrote {folder} (converted weights reproduce the source logits, max diff {diff:.2g}).')
    if args.push_to_hub:
        commit = push_folder(folder, args.push_to_hub, private=args.private, token=args.token)
        repo_id = args.push_to_hub
        print(f'Pushed to {commit.commit_url} (commit {commit.oid}). Pin it with '
              f"hf_hub_id='{repo_id}@{commit.oid}', or load timm.create_model('hf-hub:{repo_id}@{commit.oid}').")


_FIGURE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.pdf', '.svg')


def _check_features_paths(args: argparse.Namespace) -> List[Path]:
    """The images to draw and measure, each read once, and the models, weights and output paths checked, all before
    torch loads (a typo or an unreadable image fails at once, before any download)."""
    from .images import find_images, read_image

    if not args.models and not args.weights:
        args.usage_error('name the models (--models) or give their weights (--weights)')
    if args.models and args.weights and len(args.models) != len(args.weights):
        args.usage_error(f'--models names {len(args.models)} and --weights gives {len(args.weights)}: give one '
                         f'weights path per model, or leave out --models when every weights path is a model folder')
    images = find_images(args.images)
    if args.output is not None and args.output.suffix.lower() not in _FIGURE_SUFFIXES:
        raise ValueError(f'Cannot tell the format of {args.output}: name it {", ".join(_FIGURE_SUFFIXES)}.')
    if args.json is not None and args.json.suffix.lower() != '.json':
        raise ValueError(f'--json {args.json}: name it .json.')
    for option, path in (('--output', args.output), ('--json', args.json)):
        if path is not None:
            _check_writable(option, path)
    for path in args.weights or ():
        if not path.exists():
            raise FileNotFoundError(f'No checkpoint file or model folder at {path}.')
    if args.output is not None and importlib.util.find_spec('matplotlib') is None:
        raise RuntimeError('Drawing the figure (--output) needs matplotlib: pip install matplotlib (or pip install '
                           '"timm-t2t[bench]").')
    images = list(dict.fromkeys(images))  # an image named and also in a folder named: measured once
    for path in images:
        read_image(path, 'RGB')
    return images


def _format_features_table(rows: List[Dict[str, Any]]) -> str:
    """Per model and layer: invalid channels (and how near the thresholds the others come), effective rank."""
    width = max(len('model'), *(len(row['model']) for row in rows))
    module_width = max(len('module'), *(len(layer['module']) for row in rows for layer in row['layers']))
    header = (f'{"model":{width}} {"layer":>5}  {"module":{module_width}} {"maps (CxHxW)":>13} {"invalid":>8} '
              f'{"flat":>7} {"outlying":>8} {"min spread":>10} {"max peak":>9} {"effective rank":>16}')
    lines = [header, '-' * len(header)]
    for row in rows:
        for layer in row['layers']:
            shape = f'{layer["channels"]}x{layer["height"]}x{layer["width"]}'
            rank = f'{layer["effective_rank"]:.1f} of {layer["channels"]}'
            peak = '-' if layer['max_peak_ratio'] is None else f'{layer["max_peak_ratio"]:.1f}x'
            lines.append(
                f'{row["model"]:{width}} {layer["index"]:5}  {layer["module"]:{module_width}} {shape:>13} '
                f'{layer["invalid_fraction"]:8.1%} {layer["flat_fraction"]:7.1%} {layer["outlying_fraction"]:8.1%} '
                f'{layer["min_spread_ratio"]:10.3f} {peak:>9} {rank:>16}')
    return '\n'.join(lines)


def _features(args: argparse.Namespace) -> None:
    import dataclasses
    import json

    images = _check_features_paths(args)
    _import_libraries()
    import timm
    import torch

    from .features import (
        FLAT_SPREAD, OUTLYING_PEAK, LayerMaps, Panel, draw_figure, extract_maps, invalid_channels, measure_features,
        resolve_layers)
    from .hub import WeightsUnavailableError
    from .images import read_image
    from .predict import _read_batches, image_transform
    from .weights import load_model

    names = args.models or [None] * len(args.weights)
    models = []
    for name, weights in zip(names, args.weights or [None] * len(names)):
        try:
            model = load_model(name, weights)
        except WeightsUnavailableError as e:
            raise WeightsUnavailableError(e.problem, _FEATURES_OFFLINE_ADVICE) from e
        label = name or (weights.name if weights.is_dir() else model.pretrained_cfg.get('architecture'))
        models.append((label, weights, model, resolve_layers(model, args.layers, label)))

    rows, panels = [], []
    for label, weights, model, layers in models:
        transform, mode, config = image_transform(model)
        batches = (x for _, x in _read_batches(images, args.batch_size, transform, mode, None))
        reports = measure_features(model, batches, layers)
        x = transform(read_image(images[0], mode))[None]
        with torch.inference_mode():
            maps = extract_maps(model, x, layers)
        layer_maps = []
        for report, fmap in zip(reports, maps):
            flat, outlying = invalid_channels(fmap)
            invalid = (flat | outlying)[0]
            layer_maps.append(LayerMaps(
                f'layer {report.index}: {report.module}\n{report.channels}x{report.height}x{report.width}, '
                f'{int(invalid.sum())} of {report.channels} invalid', fmap[0], invalid))
        mean = torch.tensor(config['mean']).view(-1, 1, 1)
        std = torch.tensor(config['std']).view(-1, 1, 1)
        panels.append(Panel(label, (x[0] * std + mean).expand(3, -1, -1), layer_maps))
        rows.append(dict(model=label, architecture=model.pretrained_cfg.get('architecture'),
                         weights=None if weights is None else str(weights), input_size=list(config['input_size']),
                         layers=[dataclasses.asdict(report) for report in reports]))

    print(_format_features_table(rows))
    print(f'\n{plural(len(images), "image")}. Invalid: flat (spread at most {FLAT_SPREAD:g} of '
          f'the layer\'s median channel\'s on an image; min spread: the smallest seen) or outlying (peak over '
          f'{OUTLYING_PEAK:g}x the median; max peak: the largest seen). Effective rank of the channels over all '
          f'positions, out of the channel count.')
    if args.json is not None:
        report = dict(images=len(images), first_image=str(images[0]), torch=torch.__version__,
                      timm=timm.__version__, definition=dict(flat_spread=FLAT_SPREAD, outlying_peak=OUTLYING_PEAK),
                      models=rows)
        args.json.write_text(json.dumps(report, indent=1), encoding='utf-8')
        print(f'Wrote {args.json}.')
    if args.output is not None:
        draw_figure(panels, args.output, size=args.size, channels=args.channels, interpolation=args.interpolation,
                    title=f'{images[0].name}: the first {plural(args.channels, "channel")} of each layer, each scaled '
                          f'to its own range; invalid channels framed in red')
        print(f'Wrote {args.output}.')


_COMMANDS = {'list': _list, 'info': _info, 'classify': _classify, 'convert': _convert, 'features': _features}


def _quiet_libraries(verbose: bool) -> None:
    """The command's own messages once, on stderr; the libraries' deprecation notices not at all."""
    warnings.filterwarnings('ignore', category=FutureWarning)
    warnings.filterwarnings('ignore', category=DeprecationWarning)
    if not verbose:  # what compiling and quantizing print on a CPU-only machine: torch's and torchao's, not ours
        warnings.filterwarnings('ignore', module=r'torch\._inductor\.')
        for name in ('torch.utils.cpp_extension', 'torch.utils._pytree'):
            logging.getLogger(name).setLevel(logging.ERROR)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter('%(message)s'))
    handler.set_name('timm-t2t command')
    logger = logging.getLogger('timm_t2t')
    logger.handlers = [h for h in logger.handlers if h.get_name() != handler.get_name()] + [handler]  # once a run
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.propagate = False


def main(argv: Optional[List[str]] = None) -> None:
    parser = _ArgumentParser(prog='timm-t2t', description=_DESCRIPTION)
    parser.add_argument('-v', '--verbose', action='store_true',
                        help='say what the command does on the way: where weights come from, how images are '
                             'preprocessed, which recipe runs, how memory is kept')
    subparsers = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    _add_list(subparsers)
    _add_info(subparsers)
    _add_classify(subparsers)
    _add_convert(subparsers)
    _add_features(subparsers)
    args = parser.parse_args(argv)
    _quiet_libraries(args.verbose)
    allocator.keep_freed_memory()  # this process is the command's: see timm_t2t.allocator
    try:
        _COMMANDS[args.command](args)
    except BrokenPipeError:  # the reader stopped early (`timm-t2t list | head`): quietly, as other commands do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (the interpreter's last flush too)
        sys.exit(141)  # 128 + SIGPIPE, the status a shell gives a command a closed pipe stopped
    except (OSError, ValueError, RuntimeError) as e:  # expected failures: one line, no traceback
        message = ' '.join(str(e).split()) or type(e).__name__
        sys.exit(f'timm-t2t {args.command}: error: {message}')


if __name__ == '__main__':
    main()
