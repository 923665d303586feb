"""Little data, real images, offline: does the T2T tokenizer let a ViT learn where a plain ViT does not?

scikit-learn ships 1,797 real 8x8 scans of handwritten digits. They are written as an ImageFolder (a stratified
train/val split with a fixed seed, upscaled to 64 px), and models are trained on them from scratch, with the same
budget, recipe and seed, by timm's own training parts (create_dataset / create_loader, create_optimizer_v2,
create_scheduler_v2, ModelEmaV3, bf16 autocast, CheckpointSaver):

- `t2t_vit_7`, a small T2T-ViT, against `deit_tiny_patch16_224`, a plain ViT of similar size (5.5M parameters
  against 4.3M), both at 64 px: the paper's claim as a whole;
- `deit_tiny_patch16_224` with `T2TPatchEmbed` as its stem, against the same ViT with its hard patch split: the
  claim isolated to the tokenizer.

It prints a table, writes `small_data.json` and the validation accuracy curves `small_data.png` (into the work
folder, runs/digits, unless `--results` names another; the recorded run is in benchmarks/results), and leaves a
trained T2T-ViT as a model folder that the command line and timm load:

    python benchmarks/small_data.py                     # about a minute per model, 2-3 minutes in all on 2 CPU cores
    timm-t2t classify runs/digits/data/val/7 --weights runs/digits/t2t_vit_7

The work folder takes about 250 MB, most of it timm's training checkpoints (with optimizer state).

With `--timm-scripts DIR` (a pytorch-image-models checkout) the registered models are trained and validated by
timm's real `train.py` and `validate.py` on the same folder instead, with the same recipe.

Needs scikit-learn (and matplotlib for the plot): pip install -e ".[bench]".
"""
import argparse
import dataclasses
import importlib.util
import json
import logging
import subprocess
import sys
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import timm
import torch
from PIL import Image
from timm.data import create_dataset, create_loader
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import CheckpointSaver, ModelEmaV3, accuracy, random_seed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from timm_t2t import T2TPatchEmbed  # noqa: E402
from timm_t2t._compat import save_for_hf  # noqa: E402

_logger = logging.getLogger('small_data')

DIGITS = [str(d) for d in range(10)]
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # ink on paper: centre the gray levels


@dataclasses.dataclass
class Recipe:
    """One training budget for every model: a minute each on a 2-core CPU."""
    img_size: int = 64
    epochs: int = 6
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.03
    warmup_epochs: int = 1
    scale: Tuple[float, float] = (0.8, 1.0)  # random-resized-crop; no flips: digits are not mirror-symmetric
    ema_decay: float = 0.99
    amp: bool = True  # bf16 autocast
    seed: int = 0


@dataclasses.dataclass
class Run:
    """A model of the experiment: a timm model name, its arguments beyond the recipe, and a label."""
    label: str
    model: str
    kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    timm_script_args: Optional[List[str]] = None  # train.py / validate.py arguments, if the scripts can build it


RUNS = [
    Run('T2T-ViT-7', 't2t_vit_7', timm_script_args=[]),
    Run('DeiT-Tiny', 'deit_tiny_patch16_224', timm_script_args=[]),
    Run('DeiT-Tiny + T2TPatchEmbed', 'deit_tiny_patch16_224', dict(embed_layer=T2TPatchEmbed)),
]


def write_digits(root: Path, img_size: int = 64, val_fraction: float = 0.2, seed: int = 0) -> Path:
    """scikit-learn's digits as an ImageFolder: root/train/<digit>/*.png and root/val/<digit>/*.png (grayscale,
    upscaled bicubically), split per class with a fixed seed. Written once; returns root."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    marker = root / f'.complete-{img_size}-{val_fraction}-{seed}'
    if marker.is_file():
        return root
    indices = np.arange(len(digits.target))
    train, val = train_test_split(indices, test_size=val_fraction, random_state=seed, stratify=digits.target)
    for split, chosen in (('train', train), ('val', val)):
        for i in chosen:
            folder = root / split / DIGITS[digits.target[i]]
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (digits.images[i] * (255 / 16)).round().astype(np.uint8)  # 0..16 ink levels
            image = Image.fromarray(pixels, mode='L').resize((img_size, img_size), Image.BICUBIC)
            image.save(folder / f'{i:04d}.png')
    marker.touch()
    return root


def _loader(data: Path, split: str, recipe: Recipe, training: bool):
    dataset = create_dataset('', root=str(data), split=split, is_training=training)
    return create_loader(
        dataset,
        input_size=(3, recipe.img_size, recipe.img_size),
        batch_size=recipe.batch_size,
        is_training=training,
        scale=recipe.scale,
        hflip=0.,
        color_jitter=0.,
        interpolation='bicubic',
        mean=MEAN,
        std=STD,
        crop_pct=1.,
        num_workers=0,
        device=torch.device('cpu'),
        use_prefetcher=False,
    )


def val_loader(data: Path, recipe: Recipe = Recipe(), split: str = 'val'):
    """The validation images (or another split's), as the experiment evaluates them: no augmentation."""
    return _loader(data, split, recipe, training=False)


def evaluate(model: torch.nn.Module, loader, autocast_dtype: Optional[torch.dtype] = None) -> float:
    """Top-1 accuracy (%) of a model over a loader, optionally under CPU autocast."""
    model.eval()
    correct = total = 0
    context = partial(torch.autocast, 'cpu', dtype=autocast_dtype) if autocast_dtype else nullcontext
    with torch.inference_mode(), context():
        for x, target in loader:
            correct += accuracy(model(x).float(), target, topk=(1,))[0].item() * len(target) / 100
            total += len(target)
    return 100 * correct / total


def create(run: Run, recipe: Recipe) -> torch.nn.Module:
    """A fresh model of the run, seeded, for the recipe's images and the ten digits."""
    random_seed(recipe.seed)
    return timm.create_model(run.model, img_size=recipe.img_size, num_classes=len(DIGITS), **run.kwargs)


def train(run: Run, data: Path, out_dir: Path, recipe: Recipe = Recipe()) -> Dict[str, Any]:
    """Train a run from scratch; returns its validation curve, final top-1 (model and EMA) and timings, and leaves
    timm checkpoints in out_dir. The trained model is returned under 'model', its EMA under 'ema'."""
    model = create(run, recipe)
    loader_train, loader_val = _loader(data, 'train', recipe, training=True), val_loader(data, recipe)
    optimizer = create_optimizer_v2(model, opt='adamw', lr=recipe.lr, weight_decay=recipe.weight_decay)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched='cosine', num_epochs=recipe.epochs, warmup_epochs=recipe.warmup_epochs,
        updates_per_epoch=len(loader_train))
    ema = ModelEmaV3(model, decay=recipe.ema_decay, use_warmup=True)
    autocast = partial(torch.autocast, 'cpu', dtype=torch.bfloat16) if recipe.amp else nullcontext
    out_dir.mkdir(parents=True, exist_ok=True)
    saver = CheckpointSaver(
        model, optimizer, args=argparse.Namespace(model=run.model, **dataclasses.asdict(recipe)), model_ema=ema,
        checkpoint_dir=str(out_dir), recovery_dir=str(out_dir), max_history=1)
    curve, losses, step = [], [], 0
    start = time.perf_counter()
    for epoch in range(recipe.epochs):
        model.train()
        for x, target in loader_train:
            with autocast():
                loss = torch.nn.functional.cross_entropy(model(x), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            scheduler.step_update(num_updates=step)
            ema.update(model, step=step)
            losses.append(loss.item())
        scheduler.step(epoch + 1)
        top1 = evaluate(model, loader_val)
        curve.append(top1)
        saver.save_checkpoint(epoch, metric=top1)
        _logger.info(f'{run.label} epoch {epoch + 1}/{recipe.epochs}: loss {np.mean(losses[-len(loader_train):]):.3f}'
                     f', val top-1 {top1:.1f}%')
    seconds = time.perf_counter() - start
    return dict(
        label=run.label, model=run.model, params=sum(p.numel() for p in model.parameters()),
        val_top1_curve=curve, val_top1=curve[-1], val_top1_ema=evaluate(ema.module, loader_val),
        train_seconds=seconds, first_loss=losses[0], last_loss=float(np.mean(losses[-len(loader_train):])),
        model_obj=model, ema_obj=ema.module)


def export(model: torch.nn.Module, folder: Path, recipe: Recipe, model_args: Dict[str, Any]) -> Path:
    """Save a trained digits model as a timm model folder (config.json + model.safetensors) that says how to
    feed it: 64 px, the experiment's normalization, the digit names."""
    model.pretrained_cfg = {
        'architecture': model.pretrained_cfg['architecture'],
        'input_size': (3, recipe.img_size, recipe.img_size),
        'interpolation': 'bicubic',
        'crop_pct': 1.,
        'mean': MEAN,
        'std': STD,
        'num_classes': len(DIGITS),
        'first_conv': model.pretrained_cfg.get('first_conv'),
        'classifier': model.pretrained_cfg.get('classifier'),
    }
    save_for_hf(model, folder, model_config=dict(label_names=DIGITS), model_args=model_args,
                safe_serialization=True)
    return folder


def run_timm_scripts(run: Run, scripts: Path, data: Path, out_dir: Path, recipe: Recipe) -> Dict[str, Any]:
    """Train and validate a registered model with timm's train.py and validate.py, same folder and recipe."""
    # the scripts' --img-size sets the data; a fixed-size ViT is built for it through --model-kwargs
    common = ['--model', run.model, '--img-size', str(recipe.img_size), '--num-classes', str(len(DIGITS)),
              '--interpolation', 'bicubic', '--mean', *map(str, MEAN), '--std', *map(str, STD),
              '--crop-pct', '1.0', '--workers', '0', '--device', 'cpu', *run.timm_script_args,
              '--model-kwargs', f'img_size={recipe.img_size}']
    train_args = [
        sys.executable, str(scripts / 'train.py'), str(data), '--train-split', 'train', '--val-split', 'val',
        '-b', str(recipe.batch_size), '--epochs', str(recipe.epochs), '--opt', 'adamw', '--lr', str(recipe.lr),
        '--weight-decay', str(recipe.weight_decay), '--sched', 'cosine', '--warmup-epochs', str(recipe.warmup_epochs),
        '--scale', *map(str, recipe.scale), '--hflip', '0', '--color-jitter', '0', '--smoothing', '0',
        '--seed', str(recipe.seed),
        '--model-ema', '--model-ema-decay', str(recipe.ema_decay), '--model-ema-warmup',
        '--output', str(out_dir), '--experiment', run.model, '--checkpoint-hist', '1', *common]
    if recipe.amp:
        train_args += ['--amp', '--amp-dtype', 'bfloat16']
    start = time.perf_counter()
    subprocess.run(train_args, check=True, cwd=scripts)
    seconds = time.perf_counter() - start
    results = out_dir / f'{run.model}-val.json'
    subprocess.run([sys.executable, str(scripts / 'validate.py'), str(data), '--split', 'val', '--checkpoint',
                    str(out_dir / run.model / 'last.pth.tar'), '-b', str(recipe.batch_size),
                    '--results-file', str(results), '--results-format', 'json', *common], check=True, cwd=scripts)
    validated = json.loads(results.read_text())
    return dict(label=f'{run.label} (timm train.py)', model=run.model, val_top1=validated['top1'],
                param_count_millions=validated.get('param_count'), train_seconds=seconds)


def format_table(results: Sequence[Dict[str, Any]]) -> str:
    lines = [f'{"model":34} {"params":>7} {"val top-1":>9} {"EMA":>6} {"train s":>8}', '-' * 68]
    for r in results:
        params = f'{r["params"] / 1e6:.1f}M' if 'params' in r else ''
        ema = f'{r["val_top1_ema"]:.1f}' if 'val_top1_ema' in r else ''
        lines.append(f'{r["label"]:34} {params:>7} {r["val_top1"]:9.1f} {ema:>6} {r["train_seconds"]:8.0f}')
    return '\n'.join(lines)


def plot(results: Sequence[Dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        if 'val_top1_curve' in r:
            ax.plot(range(1, len(r['val_top1_curve']) + 1), r['val_top1_curve'], marker='o', label=r['label'])
    ax.set(xlabel='epoch', ylabel='validation top-1 (%)', title='Digits (1,437 training images), from scratch, 64 px')
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--work-dir', type=Path, default=Path('runs/digits'),
                        help='images, checkpoints and the trained T2T-ViT go here (default: %(default)s)')
    parser.add_argument('--results', type=Path,
                        help='table, JSON and plot go here (default: the work folder)')
    parser.add_argument('--epochs', type=int, default=Recipe.epochs, help='training epochs (default: %(default)s)')
    parser.add_argument('--seed', type=int, default=Recipe.seed, help='seed of the split and training')
    parser.add_argument('--timm-scripts', type=Path, metavar='DIR',
                        help='a pytorch-image-models checkout: train and validate with its train.py / validate.py')
    args = parser.parse_args(argv)
    missing = [name for name in ('sklearn', 'matplotlib') if importlib.util.find_spec(name) is None]
    if missing:
        parser.error(f'needs {" and ".join(missing)}: pip install -e ".[bench]"')
    args.results = args.results or args.work_dir
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    logging.getLogger('timm.utils.checkpoint_saver').setLevel(logging.WARNING)  # its per-epoch checkpoint listing

    recipe = Recipe(epochs=args.epochs, seed=args.seed)
    data = write_digits(args.work_dir / 'data', recipe.img_size, seed=recipe.seed)
    results = []
    for run in RUNS:
        if args.timm_scripts:
            if run.timm_script_args is not None:
                results.append(run_timm_scripts(run, args.timm_scripts, data, args.work_dir / 'timm-scripts', recipe))
            continue
        result = train(run, data, args.work_dir / 'checkpoints' / run.label.replace(' ', '_'), recipe)
        model, ema = result.pop('model_obj'), result.pop('ema_obj')
        if run.model.startswith('t2t_vit'):
            best = ema if result['val_top1_ema'] >= result['val_top1'] else model
            folder = export(best, args.work_dir / run.model, recipe,
                            dict(img_size=recipe.img_size, num_classes=len(DIGITS), **run.kwargs))
            result['exported'] = str(folder)
        results.append(result)

    args.results.mkdir(parents=True, exist_ok=True)
    name = 'small_data_timm_scripts' if args.timm_scripts else 'small_data'
    report = dict(recipe=dataclasses.asdict(recipe), torch=torch.__version__, timm=timm.__version__,
                  threads=torch.get_num_threads(), train_images=sum(1 for _ in (data / 'train').rglob('*.png')),
                  val_images=sum(1 for _ in (data / 'val').rglob('*.png')), results=results)
    (args.results / f'{name}.json').write_text(json.dumps(report, indent=2))
    print(format_table(results))
    if not args.timm_scripts:
        plot(results, args.results / f'{name}.png')
    print(f'\nwrote {args.results / (name + ".json")}' + ('' if args.timm_scripts else f' and {name}.png'))


if __name__ == '__main__':
    main()
