"""The `timm-t2t` command: list and describe the models, classify images, convert reference checkpoints.

Arguments are parsed, and image and output paths checked, before torch and timm are imported, so `--help` and
mistakes answer at once; a torch install that does not import is one line saying what to do. Every failure is one line
on stderr (`timm-t2t COMMAND: error: ...`): exit status 2 for a command line that does not parse (or a preprocessing
option that does not fit the model), 1 for anything else.
"""
import argparse
import ast
import importlib
import logging
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

__all__ = ['main']

_logger = logging.getLogger(__name__)

_DESCRIPTION = """T2T-ViT (Tokens-to-Token Vision Transformer) models for timm.

  timm-t2t list                                     the variants: size, cost, pretrained tags, cached weights
  timm-t2t info MODEL                               a model's config, feature pyramid and weight sources
  timm-t2t classify IMAGE_OR_FOLDER...              top-k classes of images
  timm-t2t convert CHECKPOINT OUT_DIR --model NAME  a reference checkpoint as a Hugging Face Hub folder

Run `timm-t2t COMMAND --help` for a command's options.
"""
# timm_t2t.predict.PRECISIONS, named here without importing torch
_PRECISIONS = ('fp32', 'fp32-compiled', 'bf16', 'bf16-compiled', 'int8', 'int8-static')
_REINSTALL_TORCH = ('reinstall both in one pip command, from one index, e.g. pip install --upgrade torch torchvision '
                    '(add the --index-url they should both come from, if any)')
_OFFLINE_ADVICE = ('Pass weights you have with --weights FILE, or train a digits model offline in a checkout of '
                   'timm-t2t (pip install -e ".[bench]" && python benchmarks/small_data.py --seeds 1, a few minutes) '
                   'and classify digit images with --weights runs/digits/t2t_vit_7.')


class _ArgumentParser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (the usage itself is one `--help` away)."""

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
                        help='say where weights come from, how images are preprocessed and in which precision '
                             'the model runs')
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
    parser.add_argument('--precision', choices=_PRECISIONS, default='fp32',
                        help='fp32: the model as it is (exact; the default); bf16: bfloat16 weights (logits within '
                             '~0.1; needs AVX-512 or AMX); int8: dynamic int8 quantization of the Linear layers '
                             '(logits within ~0.3); fp32-compiled, bf16-compiled and int8-static (int8 activations '
                             'calibrated on the first batch; needs torchao) are compiled before the first image '
                             '(14-27 s for T2T-ViT-14 on 2 cores). Fastest for T2T-ViT-14, against fp32 in the same '
                             'run (README, "What to use on a CPU"): with AMX bf16-compiled 3.6x (bf16 2.9x); with '
                             'AVX512-BF16 bf16 2.4x (int8-static 2.3x, an earlier run); AVX2 only (emulated): '
                             'int8-static 1.44x, int8 1.35x, fp32-compiled 1.08x')
    parser.add_argument('--output', type=Path, help='also write the predictions to this .csv or .json file (good '
                        'images only, when some cannot be read)')
    parser.add_argument('--no-progress', dest='progress', action='store_false',
                        help='no progress bar (shown on a terminal for more than one batch)')
    parser.set_defaults(usage_error=parser.error)


def _add_convert(subparsers) -> None:
    parser = subparsers.add_parser(
        'convert', help='convert a reference checkpoint to a Hugging Face Hub folder', parents=[_verbose_flag()],
        description='Convert a checkpoint released with (or trained by) the reference T2T-ViT code into timm\'s '
                    'Hugging Face Hub format: model.safetensors, config.json and a model card. The converted '
                    'weights are loaded back through timm and must reproduce the source logits before anything '
                    'is written.')
    parser.add_argument('checkpoint', type=Path, help='reference checkpoint (.pth.tar / .pth: state_dict, '
                        'state_dict_ema or net entries, DataParallel prefixes allowed)')
    parser.add_argument('output_dir', type=Path, help='folder to write; must not exist or be empty')
    parser.add_argument('--model', required=True, help='T2T-ViT entry point, optionally with the pretrained tag '
                        'whose config the folder should carry, e.g. t2t_vit_14 or t2t_vit_14.in1k_384; the card '
                        'quotes the paper only for a named tag')
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=_KeyValues, metavar='KEY=VALUE',
                        help='extra model arguments for architectures other than the entry point\'s own, '
                             'e.g. depth=12 embed_dim=256')
    parser.add_argument('--no-ema', dest='use_ema', action='store_false',
                        help='convert state_dict rather than state_dict_ema when a checkpoint has both')
    parser.add_argument('--push-to-hub', metavar='ORG/REPO', help='then upload the folder to this Hub repo and print '
                        'the commit to pin it by')
    parser.add_argument('--private', action='store_true', help='create the Hub repo as private')
    parser.add_argument('--token', help='Hugging Face token (default: the one huggingface_hub finds)')


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


def _check_classify_paths(args: argparse.Namespace) -> List[Path]:
    """The images to classify; the output and weights paths checked too, all before torch loads (a typo fails at
    once, before any download or any image is classified)."""
    from .images import find_images

    images = find_images(args.images)
    if args.output is not None:
        if args.output.suffix.lower() not in ('.csv', '.json'):
            raise ValueError(f'Cannot tell the format of {args.output}: name it .csv or .json.')
        if not args.output.parent.is_dir():
            raise FileNotFoundError(f'No folder {args.output.parent} to write --output {args.output} into: create '
                                    f'it first.')
    if args.weights is not None and not args.weights.exists():
        raise FileNotFoundError(f'No checkpoint file or model folder at {args.weights}.')
    return images


def _classify(args: argparse.Namespace) -> None:
    images = _check_classify_paths(args)
    _import_libraries()
    from .hub import WeightsUnavailableError
    from .predict import PRECISIONS, DataConfigError, classify, load_classifier, write_predictions
    from .recipes import check_recipe

    check_recipe(PRECISIONS[args.precision])  # the CPU and torch can run it: known before any weights are loaded
    try:
        model = load_classifier(
            args.model or ('t2t_vit_14' if args.weights is None else None), args.weights, args.model_kwargs)
    except WeightsUnavailableError as e:
        raise WeightsUnavailableError(e.problem, _OFFLINE_ADVICE) from e
    data_config = {key: getattr(args, key) for key in ('mean', 'std', 'crop_pct', 'interpolation')
                   if getattr(args, key) is not None}
    if args.weights is not None and args.weights.is_file() and model.num_classes != 1000 and not data_config:
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
            print(f'{prediction.path}:')
            for prob, label in zip(prediction.probabilities, prediction.labels):
                print(f'  {prob:7.2%}  {label}')
    except DataConfigError as e:
        args.usage_error(f'argument --{e.key.replace("_", "-")}: {e.problem}')
    if args.output is not None:
        write_predictions(predictions, args.output)
        print(f'Wrote {len(predictions)} predictions to {args.output}.')
    if unreadable:
        raise ValueError(f'{len(unreadable)} of {len(images)} images could not be read (each named above); the '
                         f'other {len(predictions)} were classified.')


def _convert(args: argparse.Namespace) -> None:
    _import_libraries()
    from .convert import convert_checkpoint, push_folder

    folder, diff = convert_checkpoint(
        args.checkpoint, args.output_dir, args.model, model_kwargs=args.model_kwargs, use_ema=args.use_ema,
        repo_id=args.push_to_hub)
    print(f'Wrote {folder} (converted weights reproduce the source logits, max diff {diff:.2g}).')
    if args.push_to_hub:
        commit = push_folder(folder, args.push_to_hub, private=args.private, token=args.token)
        repo_id = args.push_to_hub
        print(f'Pushed to {commit.commit_url} (commit {commit.oid}). Pin it with '
              f"hf_hub_id='{repo_id}@{commit.oid}', or load timm.create_model('hf-hub:{repo_id}@{commit.oid}').")


_COMMANDS = {'list': _list, 'info': _info, 'classify': _classify, 'convert': _convert}


def _quiet_libraries(verbose: bool) -> None:
    """The command's own messages once, on stderr; the libraries' deprecation notices not at all."""
    warnings.filterwarnings('ignore', category=FutureWarning)
    warnings.filterwarnings('ignore', category=DeprecationWarning)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter('%(message)s'))
    handler.set_name('timm-t2t command')
    logger = logging.getLogger('timm_t2t')
    logger.handlers = [h for h in logger.handlers if h.get_name() != handler.get_name()] + [handler]  # once a run
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.propagate = False


def main(argv: Optional[List[str]] = None) -> None:
    parser = _ArgumentParser(
        prog='timm-t2t', description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-v', '--verbose', action='store_true',
                        help='say where weights come from, how images are preprocessed and in which precision '
                             'the model runs')
    subparsers = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    _add_list(subparsers)
    _add_info(subparsers)
    _add_classify(subparsers)
    _add_convert(subparsers)
    args = parser.parse_args(argv)
    _quiet_libraries(args.verbose)
    try:
        _COMMANDS[args.command](args)
    except (OSError, ValueError, RuntimeError) as e:  # expected failures: one line, no traceback
        message = ' '.join(str(e).split()) or type(e).__name__
        sys.exit(f'timm-t2t {args.command}: error: {message}')


if __name__ == '__main__':
    main()
