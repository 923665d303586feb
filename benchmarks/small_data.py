r"""Little data, real images, offline: does the T2T tokenizer let a ViT learn where a plain ViT does not?

scikit-learn ships 1,797 real 8x8 scans of handwritten digits. They are written as an ImageFolder (a stratified
train/val split with a fixed seed, upscaled to 64 px), and models are trained on them from scratch, with the same
budget and recipe, by timm's own training parts (create_dataset / create_loader, create_optimizer_v2,
create_scheduler_v2, ModelEmaV3, CheckpointSaver), under bf16 autocast where the CPU runs bfloat16 faster than
float32 (AMX, AVX512-BF16) and in float32 elsewhere (`--amp` / `--no-amp` decide instead):

- `t2t_vit_7`, a small T2T-ViT, against `deit_tiny_patch16_224`, a plain ViT of similar size (4.0M parameters
  against 5.5M), both at 64 px: the paper's claim as a whole;
- `deit_tiny_patch16_224_t2t_stem` (`deit_tiny_patch16_224` with `T2TPatchEmbed` as its stem, registered by
  timm_t2t), against the same ViT with its hard patch split: the claim isolated to the tokenizer.

Every model is trained once per seed (`--seeds N`: seeds 0 to N-1, 3 by default; the seed sets the initialization,
the augmentation and the batch order, the split stays the same). Each trained model (the better of it and its EMA)
then has its feature maps measured on the validation digits by `timm_t2t.features`: at four layers spread over its
feature list, the share of invalid channels and the channels' effective rank (the paper's richness claim, in
numbers). It prints tables of the mean, standard deviation and range over the seeds, writes `small_data.json` (that
summary and every seed's results) and `small_data.png` (validation curves and final accuracy, with error bars) into
the work folder, runs/digits, unless `--results` names another (the recorded run is in benchmarks/results), and
leaves the first seed's trained models as model folders that the command line and timm load:

    python benchmarks/small_data.py      # about 3 minutes per seed on 2 cores
    timm-t2t classify runs/digits/data/val/7 --weights runs/digits/t2t_vit_7
    timm-t2t features runs/digits/data/val/3/0045.png \
        --output runs/digits/features.png --weights runs/digits/t2t_vit_7 \
        runs/digits/deit_tiny_patch16_224 \
        runs/digits/deit_tiny_patch16_224_t2t_stem

The work folder then takes about 66 MB (the images and the three model folders). timm's training checkpoints, with
the optimizer and EMA state, are kept only with `--checkpoints`: 60 to 90 MB per model and seed.

With `--timm-scripts DIR` (a pytorch-image-models checkout) the three models are trained and validated by timm's
real `train.py` and `validate.py` on the same folder instead, with the same recipe and seeds.

Needs scikit-learn (and matplotlib for the plot): pip install -e ".[bench]".
"""
import argparse
import ast
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
from torchvision.transforms import Compose

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import cpu_name  # noqa: E402
from timm_t2t import T2TPatchEmbed  # noqa: E402
from timm_t2t._compat import save_for_hf  # noqa: E402
from timm_t2t._text import HelpFormatter, plural  # noqa: E402
from timm_t2t.features import measure_features, resolve_layers  # noqa: E402
from timm_t2t.images import convert_image  # noqa: E402
from timm_t2t.recipes import Bf16Support, bf16_is_faster, bf16_support, explain_bf16  # noqa: E402

_logger = logging.getLogger('small_data')

DIGITS = [str(d) for d in range(10)]
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # ink on paper: centre the gray levels
SPLIT_SEED = 0  # the train/val split, the same for every training seed
METRICS = ('val_top1', 'val_top1_ema', 'train_seconds')  # summarized over seeds
FEATURE_METRICS = ('invalid_fraction', 'min_spread_ratio', 'max_peak_ratio', 'effective_rank')  # per layer


def amp_by_default() -> bool:
    """bf16 autocast where this CPU runs bfloat16 faster than float32 (see `timm_t2t.recipes.bf16_is_faster`)."""
    return bf16_is_faster(bf16_support())


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
    amp: bool = dataclasses.field(default_factory=amp_by_default)  # bf16 autocast (else float32)
    seed: int = 0  # training: initialization, augmentation, batch order


@dataclasses.dataclass
class Run:
    """A model of the experiment: a timm model name, its arguments beyond the recipe, and a label."""
    label: str
    model: str
    kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    folder: Optional[str] = None  # its exported model folder in the work folder (default: the model's name)


RUNS = [
    Run('T2T-ViT-7', 't2t_vit_7'),
    Run('DeiT-Tiny', 'deit_tiny_patch16_224'),
    # registered by timm_t2t (timm's scripts take no class as an argument: they build it by name)
    Run('DeiT-Tiny + T2TPatchEmbed', 'deit_tiny_patch16_224_t2t_stem'),
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
    # timm's dataset hands each image over as Pillow opens it, and timm_t2t's reader converts it to RGB (scaling a
    # 16-bit file to 8 bits, which Pillow's own convert would clip to black and white)
    dataset = create_dataset('', root=str(data), split=split, is_training=training, input_img_mode=None)
    loader = create_loader(
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
    dataset.transform = Compose([partial(convert_image, mode='RGB'), dataset.transform])
    return loader


def val_loader(data: Path, recipe: Optional[Recipe] = None, split: str = 'val'):
    """The validation images (or another split's), as the experiment evaluates them: no augmentation."""
    return _loader(data, split, recipe or Recipe(), training=False)


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


def train(run: Run, data: Path, out_dir: Optional[Path], recipe: Optional[Recipe] = None) -> Dict[str, Any]:
    """Train a run from scratch (by default, by the recipe whose precision follows this CPU); returns its seed,
    validation curve, final top-1 (model and EMA) and timings, and leaves timm checkpoints (last and best) in out_dir
    if one is given. The trained model is returned under 'model_obj', its EMA under 'ema_obj'."""
    recipe = recipe or Recipe()
    model = create(run, recipe)
    loader_train, loader_val = _loader(data, 'train', recipe, training=True), val_loader(data, recipe)
    optimizer = create_optimizer_v2(model, opt='adamw', lr=recipe.lr, weight_decay=recipe.weight_decay)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched='cosine', num_epochs=recipe.epochs, warmup_epochs=recipe.warmup_epochs,
        updates_per_epoch=len(loader_train))
    ema = ModelEmaV3(model, decay=recipe.ema_decay, use_warmup=True)
    autocast = partial(torch.autocast, 'cpu', dtype=torch.bfloat16) if recipe.amp else nullcontext
    saver = None
    if out_dir is not None:
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
        if saver is not None:
            saver.save_checkpoint(epoch, metric=top1)
        _logger.info(f'{run.label} seed {recipe.seed} epoch {epoch + 1}/{recipe.epochs}: '
                     f'loss {np.mean(losses[-len(loader_train):]):.3f}, val top-1 {top1:.1f}%')
    seconds = time.perf_counter() - start
    return dict(
        label=run.label, model=run.model, seed=recipe.seed, params=sum(p.numel() for p in model.parameters()),
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


def folder_model_args(run: Run, recipe: Recipe) -> Dict[str, Any]:
    """A run's model arguments as its folder's config.json records them: the T2T stem by name (JSON holds no class;
    the package's folder loader builds it with the class)."""
    kwargs = {key: value.__name__ if value is T2TPatchEmbed else value for key, value in run.kwargs.items()}
    return dict(img_size=recipe.img_size, num_classes=len(DIGITS), **kwargs)


def feature_metrics(model: torch.nn.Module, data: Path, recipe: Recipe) -> List[Dict[str, Any]]:
    """Invalid channels and effective rank (timm_t2t.features) of a trained model on the validation digits, at the
    default layers: four spread over its feature list, first and last included."""
    model.eval()
    reports = measure_features(model, (x for x, _ in val_loader(data, recipe)), resolve_layers(model))
    return [dataclasses.asdict(report) for report in reports]


def timm_experiment(run: Run, recipe: Recipe) -> str:
    """The name of a model's training by timm's scripts with the recipe's seed (its folder under the output)."""
    return f'{run.model}-seed{recipe.seed}'


def timm_model_kwargs(run: Run, recipe: Recipe) -> List[str]:
    """The `--model-kwargs` of a run for timm's scripts, KEY=VALUE with each value a Python literal (as the scripts
    read it back). ValueError for an argument that is not one, e.g. a class: the scripts can build such a model
    only by a registered name (as deit_tiny_patch16_224_t2t_stem is registered)."""
    kwargs = dict(img_size=recipe.img_size, **run.kwargs)
    for key, value in kwargs.items():
        try:
            literal = ast.literal_eval(repr(value)) == value
        except (ValueError, SyntaxError):
            literal = False
        if not literal:
            raise ValueError(f'{run.label}: timm\'s scripts take model arguments as Python literals, and {key}='
                             f'{value!r} is not one: register a model name for it.')
    return [f'{key}={value!r}' for key, value in kwargs.items()]


def timm_script_args(run: Run, data: Path, out_dir: Path, recipe: Recipe) -> Tuple[List[str], List[str]]:
    """The command lines (after the script's path) with which train.py trains a registered model by the recipe into
    out_dir/<model>-seed<seed>, and validate.py then validates its last checkpoint."""
    # the scripts' --img-size sets the data; a fixed-size ViT is built for it through --model-kwargs
    common = ['--model', run.model, '--img-size', str(recipe.img_size), '--num-classes', str(len(DIGITS)),
              '--interpolation', 'bicubic', '--mean', *map(str, MEAN), '--std', *map(str, STD),
              '--crop-pct', '1.0', '--workers', '0', '--device', 'cpu',
              '--model-kwargs', *timm_model_kwargs(run, recipe)]
    experiment = timm_experiment(run, recipe)
    train_args = [
        str(data), '--train-split', 'train', '--val-split', 'val',
        '-b', str(recipe.batch_size), '--epochs', str(recipe.epochs), '--opt', 'adamw', '--lr', str(recipe.lr),
        '--weight-decay', str(recipe.weight_decay), '--sched', 'cosine', '--warmup-epochs', str(recipe.warmup_epochs),
        '--scale', *map(str, recipe.scale), '--hflip', '0', '--color-jitter', '0', '--smoothing', '0',
        '--seed', str(recipe.seed),
        '--model-ema', '--model-ema-decay', str(recipe.ema_decay), '--model-ema-warmup',
        '--output', str(out_dir), '--experiment', experiment, '--checkpoint-hist', '1', *common]
    if recipe.amp:
        train_args += ['--amp', '--amp-dtype', 'bfloat16']
    validate_args = [str(data), '--split', 'val', '--checkpoint', str(out_dir / experiment / 'last.pth.tar'),
                     '-b', str(recipe.batch_size), '--results-file', str(out_dir / f'{experiment}-val.json'),
                     '--results-format', 'json', *common]
    return train_args, validate_args


def run_timm_scripts(run: Run, scripts: Path, data: Path, out_dir: Path, recipe: Recipe,
                     keep_checkpoints: bool = False) -> Dict[str, Any]:
    """Train and validate a registered model with timm's train.py and validate.py, same folder, recipe and seed.
    train.py's checkpoints are removed once validated, unless kept."""
    train_args, validate_args = timm_script_args(run, data, out_dir, recipe)
    start = time.perf_counter()
    subprocess.run([sys.executable, str(scripts / 'train.py'), *train_args], check=True, cwd=scripts)
    seconds = time.perf_counter() - start
    subprocess.run([sys.executable, str(scripts / 'validate.py'), *validate_args], check=True, cwd=scripts)
    experiment = timm_experiment(run, recipe)
    validated = json.loads((out_dir / f'{experiment}-val.json').read_text())
    if not keep_checkpoints:
        for checkpoint in (out_dir / experiment).glob('*.pth.tar'):
            checkpoint.unlink()
    return dict(label=f'{run.label} (timm train.py)', model=run.model, seed=recipe.seed, val_top1=validated['top1'],
                param_count_millions=validated.get('param_count'), train_seconds=seconds)


def spread(values: Sequence[float]) -> Dict[str, Optional[float]]:
    """Mean, sample standard deviation (None for a single value), min and max of one metric over seeds."""
    array = np.asarray(values, dtype=float)
    return dict(mean=float(array.mean()), std=float(array.std(ddof=1)) if len(array) > 1 else None,
                min=float(array.min()), max=float(array.max()))


def summarize(results: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per model of the experiment (by label, in order of first appearance): its seeds, its size, the spread of
    each metric over the seeds and, where measured, of each layer's feature metrics."""
    by_label: Dict[str, List[Dict[str, Any]]] = {}
    for result in results:
        by_label.setdefault(result['label'], []).append(result)
    summary = []
    for label, runs in by_label.items():
        entry = dict(label=label, model=runs[0]['model'], seeds=[r['seed'] for r in runs])
        entry.update({key: runs[0][key] for key in ('params', 'param_count_millions') if key in runs[0]})
        entry.update({metric: spread([r[metric] for r in runs]) for metric in METRICS if metric in runs[0]})
        if 'features' in runs[0]:
            entry['features'] = [
                dict({key: layers[0][key] for key in ('index', 'module', 'channels', 'height', 'width')},
                     **{metric: spread([layer[metric] for layer in layers]) for metric in FEATURE_METRICS})
                for layers in zip(*(r['features'] for r in runs))]
        summary.append(entry)
    return summary


def format_spread(stats: Dict[str, Optional[float]], decimals: int = 1) -> str:
    """'mean ± std (min-max)', or the mean alone for a single seed."""
    if stats['std'] is None:
        return f'{stats["mean"]:.{decimals}f}'
    return (f'{stats["mean"]:.{decimals}f} ± {stats["std"]:.{decimals}f} '
            f'({stats["min"]:.{decimals}f}-{stats["max"]:.{decimals}f})')


def format_table(summary: Sequence[Dict[str, Any]]) -> str:
    """The summary as a text table: per model, mean ± std (min-max) over its seeds."""
    lines = [f'{"model":26} {"params":>6} {"seeds":>5} {"val top-1 (%)":>24} {"EMA top-1 (%)":>24} '
             f'{"train s":>16}', '-' * 106]
    for arm in summary:
        millions = arm['params'] / 1e6 if 'params' in arm else arm.get('param_count_millions')
        params = f'{millions:.1f}M' if millions is not None else ''
        ema = format_spread(arm['val_top1_ema']) if 'val_top1_ema' in arm else ''
        lines.append(f'{arm["label"]:26} {params:>6} {len(arm["seeds"]):>5} {format_spread(arm["val_top1"]):>24} '
                     f'{ema:>24} {format_spread(arm["train_seconds"], 0):>16}')
    return '\n'.join(lines)


def format_features_table(summary: Sequence[Dict[str, Any]]) -> str:
    """Per model and layer, on the validation digits: the invalid channels (%) and the effective rank, mean ± std
    (min-max) over the seeds, and the nearest any channel of any seed came to invalid (its smallest spread and
    largest peak relative to the layer's median channel's)."""
    lines = [f'{"model":26} {"layer":>5} {"module":26} {"maps":>9} {"invalid channels (%)":>22} '
             f'{"min spread / max peak":>22} {"effective rank":>24}', '-' * 140]
    for arm in summary:
        for layer in arm.get('features', ()):
            percent = {key: 100 * value if value is not None else None
                       for key, value in layer['invalid_fraction'].items()}
            shape = f'{layer["channels"]}x{layer["height"]}x{layer["width"]}'
            nearest = f'{layer["min_spread_ratio"]["min"]:.2f} / {layer["max_peak_ratio"]["max"]:.1f}x'
            lines.append(f'{arm["label"]:26} {layer["index"]:5} {layer["module"]:26} {shape:>9} '
                         f'{format_spread(percent):>22} {nearest:>22} {format_spread(layer["effective_rank"]):>24}')
    return '\n'.join(lines)


def plot(results: Sequence[Dict[str, Any]], summary: Sequence[Dict[str, Any]], path: Path) -> None:
    """Validation curves (mean over seeds, std error bars, min-max band) and final top-1 of the model and its EMA
    (mean, std error bars, one dot per seed); of a single seed, its curves and final top-1 alone, and the titles say
    which."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (curves, final) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw=dict(width_ratios=(3, 2)))
    width = 0.38
    seeds = len(summary[0]['seeds'])
    spread = seeds > 1  # a single seed has no std, range or seeds to show apart from its values
    for i, arm in enumerate(summary):
        per_seed = np.array([r['val_top1_curve'] for r in results if r['label'] == arm['label']])
        epochs = np.arange(1, per_seed.shape[1] + 1)
        std = per_seed.std(axis=0, ddof=1) if spread else None
        line = curves.errorbar(epochs, per_seed.mean(axis=0), yerr=std, marker='o', capsize=3, label=arm['label'])
        color = line.lines[0].get_color()
        if spread:
            curves.fill_between(epochs, per_seed.min(axis=0), per_seed.max(axis=0), color=color, alpha=0.15)
        for offset, metric, hatch in ((-width / 2, 'val_top1', None), (width / 2, 'val_top1_ema', '//')):
            stats = arm[metric]
            final.bar(i + offset, stats['mean'], width, yerr=stats['std'], capsize=4, color=color, alpha=0.6,
                      hatch=hatch, edgecolor='black', linewidth=0.5)
            if spread:
                values = [r[metric] for r in results if r['label'] == arm['label']]
                final.plot([i + offset] * len(values), values, 'k.', markersize=5)
    fig.suptitle(f'Digits (1,437 training images), from scratch, 64 px: {plural(seeds, "seed")}'
                 + (', mean ± std' if spread else ''))
    curves.set(xlabel='epoch', ylabel='validation top-1 (%)',
               title='validation curves' + (' (band: min-max)' if spread else ''))
    curves.grid(True, alpha=0.3)
    curves.legend()
    final.set_xticks(range(len(summary)), [arm['label'].replace(' + ', '\n+ ') for arm in summary])
    final.set(ylabel='final validation top-1 (%)', ylim=(0, 102),
              title='model and EMA (hatched)' + (', dots: seeds' if spread else ''))
    final.grid(True, axis='y', alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def train_arm(run: Run, data: Path, work_dir: Path, recipe: Recipe, keep_checkpoints: bool,
              export_model: bool) -> Dict[str, Any]:
    """Train one model of the experiment with one seed by the recipe. The better of the model and its EMA has its
    feature maps measured on the validation digits and, if asked, is exported as a model folder
    (work_dir/<run.folder or model>)."""
    checkpoints = work_dir / 'checkpoints' / run.label.replace(' ', '_') / f'seed-{recipe.seed}'
    result = train(run, data, checkpoints if keep_checkpoints else None, recipe)
    model, ema = result.pop('model_obj'), result.pop('ema_obj')
    use_ema = result['val_top1_ema'] >= result['val_top1']
    best = ema if use_ema else model
    start = time.perf_counter()
    result['features'] = feature_metrics(best, data, recipe)
    result['features_of'] = 'EMA' if use_ema else 'model'
    result['features_seconds'] = time.perf_counter() - start
    if export_model:
        folder = export(best, work_dir / (run.folder or run.model), recipe, folder_model_args(run, recipe))
        result['exported'] = str(folder)
    return result


def training_precision(amp: Optional[bool], support: Bf16Support) -> Tuple[bool, str]:
    """Whether to train under bf16 autocast (`amp` as given, or by the CPU's bf16 `support` where None), and a line
    saying which and why."""
    if amp is not None:
        return amp, f'Training in {"bf16 autocast" if amp else "float32"}, as --{"" if amp else "no-"}amp says.'
    amp = bf16_is_faster(support)
    precision, other = ('bf16 autocast', 'no-amp for float32') if amp else ('float32', 'amp for bf16 autocast')
    return amp, f'Training in {precision}: {explain_bf16(support)} (--{other}).'


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {text!r}')
    return int(text)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument('--work-dir', type=Path, default=Path('runs/digits'),
                        help='images, the trained T2T-ViT and any checkpoints go here (default: %(default)s)')
    parser.add_argument('--results', type=Path,
                        help='table, JSON and plot go here (default: the work folder)')
    parser.add_argument('--epochs', type=_positive_int, default=Recipe.epochs,
                        help='training epochs (default: %(default)s)')
    parser.add_argument('--seeds', type=_positive_int, default=3, metavar='N',
                        help='train every model with each of the seeds 0 to N-1 (default: %(default)s)')
    parser.add_argument('--amp', action=argparse.BooleanOptionalAction, default=None,
                        help='train under bf16 autocast (--amp) or in float32 (--no-amp); default: bf16 autocast '
                             'where this CPU runs bfloat16 faster than float32 (AMX, AVX512-BF16), else float32')
    parser.add_argument('--checkpoints', action='store_true',
                        help="keep timm's training checkpoints of every model and seed under the work folder")
    parser.add_argument('--timm-scripts', type=Path, metavar='DIR',
                        help='a pytorch-image-models checkout: train and validate with its train.py / validate.py')
    args = parser.parse_args(argv)
    missing = [name for name in ('sklearn', 'matplotlib') if importlib.util.find_spec(name) is None]
    if missing:
        parser.error(f'needs {" and ".join(missing)}: pip install -e ".[bench]"')
    if args.timm_scripts:
        absent = [name for name in ('train.py', 'validate.py') if not (args.timm_scripts / name).is_file()]
        if absent:
            parser.error(f'--timm-scripts {args.timm_scripts}: no {" and no ".join(absent)} there '
                         '(expected a pytorch-image-models checkout)')
        for run in RUNS:
            try:
                timm_model_kwargs(run, Recipe(amp=False))
            except ValueError as e:
                parser.error(f'--timm-scripts: {e}')
    args.results = args.results or args.work_dir
    # the experiment's progress; libraries' warnings and errors only (not, e.g., matplotlib building its font cache)
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    _logger.setLevel(logging.INFO)

    amp, precision_line = training_precision(args.amp, bf16_support())
    _logger.info(precision_line)
    base = Recipe(epochs=args.epochs, amp=amp)
    data = write_digits(args.work_dir / 'data', base.img_size, seed=SPLIT_SEED)
    seeds = list(range(args.seeds))
    results = []
    for seed in seeds:  # every model once per seed, seed after seed
        recipe = dataclasses.replace(base, seed=seed)
        for run in RUNS:
            if not args.timm_scripts:
                results.append(train_arm(run, data, args.work_dir, recipe, args.checkpoints, seed == seeds[0]))
            else:
                results.append(run_timm_scripts(
                    run, args.timm_scripts, data, args.work_dir / 'timm-scripts', recipe, args.checkpoints))

    args.results.mkdir(parents=True, exist_ok=True)
    name = 'small_data_timm_scripts' if args.timm_scripts else 'small_data'
    summary = summarize(results)
    recipe_fields = {key: value for key, value in dataclasses.asdict(base).items() if key != 'seed'}
    report = dict(recipe=recipe_fields, precision='bf16 autocast' if amp else 'float32',
                  precision_choice=precision_line, cpu_bf16=dataclasses.asdict(bf16_support()), seeds=seeds,
                  split_seed=SPLIT_SEED, cpu=cpu_name(), torch=torch.__version__,
                  timm=timm.__version__, threads=torch.get_num_threads(),
                  train_images=sum(1 for _ in (data / 'train').rglob('*.png')),
                  val_images=sum(1 for _ in (data / 'val').rglob('*.png')), summary=summary, results=results)
    (args.results / f'{name}.json').write_text(json.dumps(report, indent=2))
    print(format_table(summary))
    if not args.timm_scripts:
        print(f'\nFeature maps on the {report["val_images"]} validation digits (the better of each model and its EMA; '
              'timm_t2t.features: invalid = flat or outlying channels):')
        print(format_features_table(summary))
        plot(results, summary, args.results / f'{name}.png')
    print(f'\nwrote {args.results / (name + ".json")}' + ('' if args.timm_scripts else f' and {name}.png'))


if __name__ == '__main__':
    main()
