"""The `timm-t2t` command: classify images with a T2T-ViT, convert reference checkpoints for the Hub."""
import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

__all__ = ['main']

_DESCRIPTION = """T2T-ViT (Tokens-to-Token Vision Transformer) models for timm.

  timm-t2t classify IMAGE...                        top-k ImageNet classes of images
  timm-t2t convert CHECKPOINT OUT_DIR --model NAME  a reference checkpoint as a Hugging Face Hub folder
"""


def _add_classify(subparsers) -> None:
    parser = subparsers.add_parser(
        'classify', help='classify images with a pretrained T2T-ViT',
        description='Print the most likely classes of each image under a pretrained T2T-ViT.')
    parser.add_argument('images', nargs='+', type=Path, metavar='IMAGE', help='image files (any format Pillow reads)')
    parser.add_argument('--model', default='t2t_vit_14', help='model name with optional pretrained tag '
                        '(default: %(default)s; list them with python -c "import timm; '
                        'print(timm.list_pretrained(\'t2t_vit*\'))")')
    parser.add_argument('--weights', type=Path, help='load weights from this checkpoint file (reference or timm '
                        'format) instead of downloading them')
    parser.add_argument('--top-k', type=int, default=5, help='classes to print per image (default: %(default)s)')


def _add_convert(subparsers) -> None:
    from timm.utils import ParseKwargs
    parser = subparsers.add_parser(
        'convert', help='convert a reference checkpoint to a Hugging Face Hub folder',
        description='Convert a checkpoint released with (or trained by) the reference T2T-ViT code into timm\'s '
                    'Hugging Face Hub format: model.safetensors, config.json and a model card. The converted '
                    'weights are loaded back through timm and must reproduce the source logits before anything '
                    'is written.')
    parser.add_argument('checkpoint', type=Path, help='reference checkpoint (.pth.tar / .pth: state_dict, '
                        'state_dict_ema or net entries, DataParallel prefixes allowed)')
    parser.add_argument('output_dir', type=Path, help='folder to write; must not exist or be empty')
    parser.add_argument('--model', required=True, help='T2T-ViT entry point, optionally with the pretrained tag '
                        'whose config the folder should carry, e.g. t2t_vit_14 or t2t_vit_14.in1k_384')
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs, metavar='KEY=VALUE',
                        help='extra model arguments for architectures other than the entry point\'s own, '
                             'e.g. depth=12 embed_dim=256')
    parser.add_argument('--no-ema', dest='use_ema', action='store_false',
                        help='convert state_dict rather than state_dict_ema when a checkpoint has both')
    parser.add_argument('--push-to-hub', metavar='ORG/REPO', help='then upload the folder to this Hub repo')
    parser.add_argument('--private', action='store_true', help='create the Hub repo as private')
    parser.add_argument('--token', help='Hugging Face token (default: the one huggingface_hub finds)')


def _classify(args: argparse.Namespace) -> None:
    import timm
    import torch
    from PIL import Image
    from timm.data import ImageNetInfo, create_transform, resolve_data_config

    overlay = dict(file=str(args.weights)) if args.weights else None
    if args.weights and not args.weights.is_file():
        raise FileNotFoundError(f'No checkpoint file at {args.weights}.')
    model = timm.create_model(args.model, pretrained=True, pretrained_cfg_overlay=overlay).eval()
    transform = create_transform(**resolve_data_config(model=model))
    labels = ImageNetInfo() if model.num_classes == 1000 else None
    for path in args.images:
        if not path.is_file():
            raise FileNotFoundError(f'No image file at {path}.')
        with torch.no_grad():
            probs = model(transform(Image.open(path).convert('RGB')).unsqueeze(0)).softmax(dim=-1)[0]
        top = probs.topk(min(args.top_k, probs.numel()))
        print(f'{path}:')
        for p, i in zip(top.values.tolist(), top.indices.tolist()):
            print(f'  {p:7.2%}  {labels.index_to_description(i) if labels else f"class {i}"}')


def _convert(args: argparse.Namespace) -> None:
    from .convert import convert_checkpoint, push_folder

    folder, diff = convert_checkpoint(
        args.checkpoint, args.output_dir, args.model, model_kwargs=args.model_kwargs, use_ema=args.use_ema,
        repo_id=args.push_to_hub)
    print(f'Wrote {folder} (converted weights reproduce the source logits, max diff {diff:.2g}).')
    if args.push_to_hub:
        print(f'Pushed to {push_folder(folder, args.push_to_hub, private=args.private, token=args.token)}')


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog='timm-t2t', description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    _add_classify(subparsers)
    _add_convert(subparsers)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    try:
        {'classify': _classify, 'convert': _convert}[args.command](args)
    except (OSError, ValueError, RuntimeError) as e:  # expected failures: one line, no traceback
        sys.exit(f'timm-t2t {args.command}: error: {e}')


if __name__ == '__main__':
    main()
