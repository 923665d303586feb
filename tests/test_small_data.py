"""The small-data experiment on real images: the digits ImageFolder, a T2T-ViT that learns it, the trained model as a
folder that timm and the command line load, and a precision that follows the CPU."""
import dataclasses
import filecmp
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.utils import random_seed

import benchmarks.small_data as small_data
from benchmarks.small_data import (
    DIGITS, FEATURE_METRICS, METRICS, RUNS, Recipe, Run, create, evaluate, export, folder_model_args, format_spread,
    format_table, summarize, timm_script_args, training_precision, val_loader, write_digits)
from benchmarks.small_data import main as small_data_main
from timm_t2t import T2TPatchEmbed, recipes
from timm_t2t._compat import create_model_from_folder
from timm_t2t.cli import main as cli_main
from timm_t2t.predict import image_transform
from timm_t2t.recipes import Bf16Support, bf16_is_faster, bf16_support, explain_bf16
from timm_t2t.weights import load_classifier

from fresh_python import run_python

REPO = Path(__file__).resolve().parents[1]


def test_digits_are_written_as_a_stratified_image_folder(tmp_path):
    root = write_digits(tmp_path / 'a', img_size=64, seed=0)
    counts = {split: {d: len(list((root / split / d).glob('*.png'))) for d in DIGITS} for split in ('train', 'val')}
    assert sum(counts['train'].values()) == 1437 and sum(counts['val'].values()) == 360  # 1,797 digits, 20% held out
    for digit in DIGITS:  # every class split about 4:1
        assert 0.17 < counts['val'][digit] / (counts['val'][digit] + counts['train'][digit]) < 0.23
    image = Image.open(next((root / 'val' / '3').glob('*.png')))
    assert image.size == (64, 64) and image.mode == 'L'
    again = write_digits(tmp_path / 'b', img_size=64, seed=0)
    comparison = filecmp.dircmp(root / 'val' / '5', again / 'val' / '5')
    assert comparison.left_list == comparison.right_list and not comparison.diff_files
    assert sorted(p.name for p in (root / 'val' / '5').iterdir()) != sorted(
        p.name for p in (write_digits(tmp_path / 'c', seed=1) / 'val' / '5').iterdir())


def test_t2t_vit_learns_the_digits_from_scratch(digits_model):
    assert digits_model.recipe.amp == bf16_is_faster(bf16_support())  # bf16 autocast only where it is faster
    result = digits_model.result
    assert result['val_top1'] >= 90.  # ten classes: chance is 10%
    assert result['val_top1_curve'][-1] > result['val_top1_curve'][0]
    assert result['last_loss'] < result['first_loss'] / 4
    checkpoints = list((digits_model.data.parent / 'checkpoints').glob('*.pth.tar'))
    assert any(p.name == 'last.pth.tar' for p in checkpoints) and any(p.name == 'model_best.pth.tar' for p in checkpoints)


def test_the_trained_model_folder_loads_in_timm_and_the_command_line(digits_model, capsys):
    reloaded = create_model_from_folder(digits_model.folder).eval()
    assert reloaded.pretrained_cfg['input_size'] == (3, 64, 64) and reloaded.num_classes == 10
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), digits_model.model(x))
    assert abs(evaluate(reloaded, val_loader(digits_model.data, digits_model.recipe))
               - evaluate(digits_model.model, val_loader(digits_model.data, digits_model.recipe))) < 1e-9

    cli_main(['classify', str(digits_model.data / 'val' / '4'), '--weights', str(digits_model.folder), '--top-k', '1'])
    labels = [line.split()[-1] for line in capsys.readouterr().out.splitlines() if line.startswith('  ')]
    assert len(labels) == 36 and labels.count('4') >= 32  # the digit names travel with the folder


def test_a_vit_with_the_t2t_stem_is_exported_as_a_folder_that_loads(tmp_path, capsys):
    run = Run('tiny stem', 'deit_tiny_patch16_224', dict(embed_layer=T2TPatchEmbed, depth=1, embed_dim=32,
                                                           num_heads=1), folder='tiny_stem')
    recipe = Recipe()
    model = create(run, recipe).eval()
    folder = export(model, tmp_path / run.folder, recipe, folder_model_args(run, recipe))
    model_args = json.loads((folder / 'config.json').read_text())['model_args']
    assert model_args['embed_layer'] == 'T2TPatchEmbed' and (model_args['depth'], model_args['embed_dim']) == (1, 32)
    reloaded = load_classifier(None, folder)
    assert isinstance(reloaded.patch_embed, T2TPatchEmbed)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), model(x))
    Image.fromarray(np.full((64, 64), 200, dtype=np.uint8), mode='L').save(tmp_path / 'blank.png')
    cli_main(['classify', str(tmp_path / 'blank.png'), '--weights', str(folder), '--top-k', '1'])
    label = capsys.readouterr().out.splitlines()[1].split()[-1]
    transform, _, _ = image_transform(reloaded)
    with torch.no_grad():
        assert label == DIGITS[int(model(transform(Image.open(tmp_path / 'blank.png').convert('RGB'))[None]).argmax())]


def _per_seed(label, seed, top1, ema, seconds, **extra):
    return dict(label=label, model='t2t_vit_7', seed=seed, val_top1=top1, val_top1_ema=ema, train_seconds=seconds,
                **extra)


def test_seeds_are_summarized_per_model_as_mean_std_and_range():
    results = [
        _per_seed('A', 0, 97.5, 97.2, 40.1, params=4_001_264), _per_seed('B', 0, 52.8, 51.9, 43.0, params=5_491_786),
        _per_seed('A', 1, 96.4, 96.9, 44.7, params=4_001_264), _per_seed('B', 1, 61.1, 60.0, 41.2, params=5_491_786),
        _per_seed('A', 2, 98.3, 98.1, 39.0, params=4_001_264), _per_seed('B', 2, 47.5, 49.4, 45.9, params=5_491_786),
    ]
    summary = summarize(results)
    assert [arm['label'] for arm in summary] == ['A', 'B']
    for arm in summary:
        runs = [r for r in results if r['label'] == arm['label']]
        assert arm['seeds'] == [0, 1, 2] and arm['params'] == runs[0]['params'] and arm['model'] == 't2t_vit_7'
        for metric in METRICS:
            values = [r[metric] for r in runs]
            expected = dict(mean=statistics.mean(values), std=statistics.stdev(values), min=min(values),
                            max=max(values))
            assert arm[metric] == pytest.approx(expected, rel=1e-12)

    table = format_table(summary).splitlines()
    assert len(table) == 2 + 2 and table[2].startswith('A ') and table[3].startswith('B ')
    b = summary[1]['val_top1_ema']
    assert f'{b["mean"]:.1f} ± {b["std"]:.1f} ({b["min"]:.1f}-{b["max"]:.1f})' in table[3]
    seconds = summary[0]['train_seconds']
    assert table[2].endswith(f'{seconds["mean"]:.0f} ± {seconds["std"]:.0f} ({seconds["min"]:.0f}-'
                             f'{seconds["max"]:.0f})')
    assert '4.0M' in table[2] and '5.5M' in table[3]


def test_a_single_seed_has_no_spread():
    arm, = summarize([_per_seed('A', 3, 97.5, 97.2, 40.1)])
    assert arm['seeds'] == [3] and arm['val_top1'] == dict(mean=97.5, std=None, min=97.5, max=97.5)
    assert format_spread(arm['val_top1']) == '97.5' and 'params' not in arm


def test_timm_scripts_train_each_seed_into_its_own_folder_by_the_recipe(tmp_path):
    recipe = Recipe(seed=2, amp=True)
    train_args, validate_args = timm_script_args(RUNS[0], tmp_path / 'data', tmp_path / 'out', recipe)
    option = dict(zip(train_args, train_args[1:]))
    assert option['--seed'] == '2' and option['--experiment'] == 't2t_vit_7-seed2' and option['--device'] == 'cpu'
    assert (option['--epochs'], option['--warmup-epochs'], option['--lr']) == ('6', '1', '0.001')
    assert option['--model-kwargs'] == 'img_size=64' and train_args[-3:] == ['--amp', '--amp-dtype', 'bfloat16']
    in_fp32, _ = timm_script_args(RUNS[0], tmp_path / 'data', tmp_path / 'out', Recipe(seed=2, amp=False))
    assert in_fp32 == train_args[:-3]
    option = dict(zip(validate_args, validate_args[1:]))
    assert option['--checkpoint'] == str(tmp_path / 'out' / 't2t_vit_7-seed2' / 'last.pth.tar')
    assert option['--device'] == 'cpu' and option['--results-file'] == str(tmp_path / 'out' / 't2t_vit_7-seed2-val.json')


CPUS = {  # as torch reports them; the matmul speed-ups as measured (see tests/test_recipes.py)
    'AMX': Bf16Support(kernels=True, instructions=True, matmul_speedup=4.5),
    'AVX512-BF16': Bf16Support(kernels=True, instructions=True, matmul_speedup=2.4),
    'AVX2 only': Bf16Support(kernels=False, instructions=False),
}


@pytest.mark.parametrize('cpu, amp', [('AMX', True), ('AVX512-BF16', True), ('AVX2 only', False)])
def test_the_recipe_trains_in_bf16_only_where_the_cpu_runs_it_faster(monkeypatch, cpu, amp):
    monkeypatch.setattr(small_data, 'bf16_support', lambda: CPUS[cpu])
    assert Recipe().amp is amp and Recipe(amp=not amp).amp is not amp
    chosen, line = training_precision(None, CPUS[cpu])
    assert chosen is amp
    if amp:
        assert line == (f'Training in bf16 autocast: this CPU runs a bfloat16 matmul {CPUS[cpu].matmul_speedup:.1f}x '
                        f'as fast as float32 (--no-amp for float32).')
    else:
        assert line == ('Training in float32: torch has no bfloat16 kernels for this CPU (on x86 they need AVX-512, '
                        'on Arm BF16): bfloat16 would run many times slower than float32 (--amp for bf16 autocast).')
    assert training_precision(True, CPUS[cpu]) == (True, 'Training in bf16 autocast, as --amp says.')
    assert training_precision(False, CPUS[cpu]) == (False, 'Training in float32, as --no-amp says.')


@pytest.mark.parametrize('argv, message', [
    (['--seeds', '0'], "argument --seeds: expected a positive integer, got '0'"),
    (['--seeds', 'two'], "argument --seeds: expected a positive integer, got 'two'"),
    (['--epochs', '-1'], "argument --epochs: expected a positive integer, got '-1'"),
    (['--timm-scripts', 'nowhere'], '--timm-scripts nowhere: no train.py and no validate.py there'),
])
def test_bad_options_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        small_data_main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err.splitlines()[-1]


TINY_RUNS = """
import benchmarks.small_data as small_data
small_data.RUNS[:] = [
    small_data.Run('tiny T2T', 't2t_vit_7', dict(depth=1, embed_dim=32, num_heads=1, token_dim=16)),
    small_data.Run('tiny ViT', 'deit_tiny_patch16_224', dict(depth=1, embed_dim=32, num_heads=1)),
]
small_data.main(['--work-dir', {work!r}, '--seeds', '2', '--epochs', '1', '--no-amp'])
"""


def test_every_model_is_trained_for_every_seed_and_summarized(tmp_path):
    """Two tiny models, two seeds, one epoch, in float32 whatever the CPU, in a fresh interpreter whose matplotlib
    builds its font cache."""
    work = tmp_path / 'work'
    env = {**os.environ, 'PYTHONPATH': str(REPO), 'MPLCONFIGDIR': str(tmp_path / 'matplotlib')}
    done = subprocess.run([sys.executable, '-c', TINY_RUNS.format(work=str(work))], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / 'matplotlib').is_dir()  # matplotlib built its font cache there, and said nothing of it
    precision, *progress = done.stderr.splitlines()
    assert precision == 'Training in float32, as --no-amp says.'
    assert [line.split(':')[0] for line in progress] == [
        f'tiny {arm} seed {seed} epoch 1/1' for seed in (0, 1) for arm in ('T2T', 'ViT')]
    assert all(re.fullmatch(r'.*: loss \d\.\d{3}, val top-1 \d+\.\d%', line) for line in progress)

    report = json.loads((work / 'small_data.json').read_text())
    assert report['seeds'] == [0, 1] and report['split_seed'] == 0 and 'seed' not in report['recipe']
    assert report['recipe']['epochs'] == 1 and report['train_images'] == 1437 and report['val_images'] == 360
    assert report['recipe']['amp'] is False and report['precision'] == 'float32'
    assert report['precision_choice'] == precision
    support = dataclasses.asdict(bf16_support())  # the matmul speed-up is measured again in that interpreter
    assert {k: v for k, v in report['cpu_bf16'].items() if k != 'matmul_speedup'} == {
        k: v for k, v in support.items() if k != 'matmul_speedup'}
    assert (report['cpu_bf16']['matmul_speedup'] is None) == (support['matmul_speedup'] is None)
    results = report['results']
    assert [(r['label'], r['seed']) for r in results] == [
        ('tiny T2T', 0), ('tiny ViT', 0), ('tiny T2T', 1), ('tiny ViT', 1)]
    assert results[0]['first_loss'] != results[2]['first_loss']  # the seed changes the training
    assert [arm['label'] for arm in report['summary']] == ['tiny T2T', 'tiny ViT']
    table = done.stdout.splitlines()
    for arm, line in zip(report['summary'], table[2:4]):
        runs = [r for r in results if r['label'] == arm['label']]
        assert arm['seeds'] == [0, 1] and arm['params'] == runs[0]['params']
        for metric in METRICS:
            values = [r[metric] for r in runs]
            assert arm[metric] == pytest.approx(dict(mean=statistics.mean(values), std=statistics.stdev(values),
                                                     min=min(values), max=max(values)), rel=1e-12)
        top1 = arm['val_top1']
        assert line.startswith(arm['label']) and (
            f'{top1["mean"]:.1f} ± {top1["std"]:.1f} ({top1["min"]:.1f}-{top1["max"]:.1f})' in line)
    assert table[-1] == f'wrote {work / "small_data.json"} and small_data.png'

    assert Image.open(work / 'small_data.png').size[0] > 1000
    assert results[0]['exported'] == str(work / 't2t_vit_7') and results[1]['exported'] == str(
        work / 'deit_tiny_patch16_224') and 'exported' not in results[2]
    assert sorted(p.name for p in work.iterdir()) == [
        'data', 'deit_tiny_patch16_224', 'small_data.json', 'small_data.png', 't2t_vit_7']

    # the feature maps of every model and seed on the validation digits, summarized per layer over the seeds
    assert [[(layer['index'], layer['module']) for layer in r['features']] for r in results[:2]] == [
        [(0, 'tokens_to_token.attention1'), (1, 'tokens_to_token.attention2'), (2, 'blocks.0')], [(0, 'blocks.0')]]
    assert all(layer['images'] == 360 and r['features_of'] in ('model', 'EMA')
               for r in results for layer in r['features'])
    start = next(i for i, line in enumerate(table) if line.startswith('model') and 'effective rank' in line)
    features_table = table[start:table.index('', start)]
    for arm in report['summary']:
        runs = [r for r in results if r['label'] == arm['label']]
        for i, layer in enumerate(arm['features']):
            for metric in FEATURE_METRICS:
                values = [r['features'][i][metric] for r in runs]
                assert layer[metric] == pytest.approx(dict(mean=statistics.mean(values), std=statistics.stdev(values),
                                                           min=min(values), max=max(values)), rel=1e-12)
            rank = layer['effective_rank']
            assert any(line.startswith(f'{arm["label"]:26} {layer["index"]:5} {layer["module"]:26}') and line.endswith(
                f'{rank["mean"]:.1f} ± {rank["std"]:.1f} ({rank["min"]:.1f}-{rank["max"]:.1f})')
                for line in features_table)
    assert len(features_table) == 2 + 4


def test_a_16_bit_image_folder_is_read_as_its_8_bit_copy(tmp_path):
    greys = np.random.default_rng(0).integers(0, 256, (4, 64, 64), dtype=np.uint8)
    for name, dtype, scale in (('8-bit', np.uint8, 1), ('16-bit', np.uint16, 257)):  # 16-bit: each value times 257
        for split in ('train', 'val'):
            for digit, grey in zip(DIGITS, greys):
                (tmp_path / name / split / digit).mkdir(parents=True)
                Image.fromarray(grey.astype(dtype) * scale).save(tmp_path / name / split / digit / '0000.png')
    assert Image.open(tmp_path / '16-bit' / 'val' / '0' / '0000.png').mode.startswith('I')
    recipe = Recipe(amp=False, batch_size=len(greys))  # training drops an incomplete last batch
    batches = {}
    for name in ('8-bit', '16-bit'):
        random_seed(0)  # the same random crops for both
        batches[name] = [next(iter(small_data._loader(tmp_path / name, 'train', recipe, training=True))),
                         next(iter(val_loader(tmp_path / name, recipe)))]
    for (x, target), (expected, expected_target) in zip(batches['16-bit'], batches['8-bit']):
        torch.testing.assert_close(x, expected, rtol=0, atol=0)
        assert torch.equal(target, expected_target)


def test_the_plot_says_what_it_draws(tmp_path, monkeypatch):
    from matplotlib.figure import Figure
    titles = []
    monkeypatch.setattr(Figure, 'savefig', lambda figure, *args, **kwargs: titles.append(
        [figure.get_suptitle(), *(axes.get_title() for axes in figure.axes)]))
    for seeds in (1, 3):
        results = [_per_seed('A', seed, 90. + seed, 91., 40., val_top1_curve=[50., 90. + seed]) for seed in range(seeds)]
        small_data.plot(results, summarize(results), tmp_path / 'plot.png')
    assert titles == [
        ['Digits (1,437 training images), from scratch, 64 px: 1 seed', 'validation curves', 'model and EMA (hatched)'],
        ['Digits (1,437 training images), from scratch, 64 px: 3 seeds, mean ± std', 'validation curves (band: min-max)',
         'model and EMA (hatched), dots: seeds']]


def test_the_t2t_stem_vit_is_registered_and_its_folder_names_it(tmp_path):
    run = Run('tiny stem', 'deit_tiny_patch16_224_t2t_stem', dict(depth=1, embed_dim=32, num_heads=1))
    recipe = Recipe(amp=False)
    model = create(run, recipe).eval()
    assert isinstance(model.patch_embed, T2TPatchEmbed) and model.num_classes == 10
    folder = export(model, tmp_path / 'stem', recipe, folder_model_args(run, recipe))
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == 'deit_tiny_patch16_224_t2t_stem' and 'embed_layer' not in config['model_args']
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(create_model_from_folder(folder).eval()(x), model(x))


FAKE_SCRIPT = """import json, sys
from pathlib import Path
args = sys.argv[1:]
with open(Path(__file__).parent / 'calls.jsonl', 'a') as f:
    f.write(json.dumps([Path(__file__).name, *args]) + '\\n')
if '--results-file' in args:  # validate.py, after train.py made the output folder
    results = Path(args[args.index('--results-file') + 1])
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(dict(top1=50.0, param_count=1.0)))
"""

# train.py's own parsing of the options that build the model, and its create_model call
BUILD_AS_TRAIN_PY = """import argparse, json, sys, timm, torch
from timm.utils import ParseKwargs
parser = argparse.ArgumentParser()
for option in ('--model', '--num-classes', '--img-size'):
    parser.add_argument(option)
parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)
built = []
for argv in ARGVS:
    args, _ = parser.parse_known_args(argv)
    model = timm.create_model(args.model, num_classes=int(args.num_classes), **args.model_kwargs).eval()
    size = int(args.img_size)
    with torch.no_grad():
        logits = model(torch.randn(1, 3, size, size))
    built.append([args.model, type(getattr(model, 'patch_embed', model)).__name__, list(logits.shape)])
print(json.dumps(built))
"""


def test_timm_scripts_train_and_validate_every_model(tmp_path):
    scripts = tmp_path / 'scripts'
    scripts.mkdir()
    for name in ('train.py', 'validate.py'):
        (scripts / name).write_text(FAKE_SCRIPT)
    small_data_main(['--timm-scripts', str(scripts), '--work-dir', str(tmp_path / 'work'), '--seeds', '1',
                     '--epochs', '1', '--no-amp'])
    calls = [json.loads(line) for line in (scripts / 'calls.jsonl').read_text().splitlines()]
    assert [(call[0], call[call.index('--model') + 1]) for call in calls] == [
        (script, model) for model in ('t2t_vit_7', 'deit_tiny_patch16_224', 'deit_tiny_patch16_224_t2t_stem')
        for script in ('train.py', 'validate.py')]
    report = json.loads((tmp_path / 'work' / 'small_data_timm_scripts.json').read_text())
    assert [arm['label'] for arm in report['summary']] == [f'{run.label} (timm train.py)' for run in RUNS]
    # each model as train.py builds it from its command line, in an interpreter that imports timm, not timm_t2t
    built = run_python(BUILD_AS_TRAIN_PY.replace('ARGVS', repr([call[1:] for call in calls[::2]])))
    assert built == [['t2t_vit_7', 'T2TViT', [1, 10]], ['deit_tiny_patch16_224', 'PatchEmbed', [1, 10]],
                     ['deit_tiny_patch16_224_t2t_stem', 'T2TPatchEmbed', [1, 10]]]


def test_a_model_argument_timm_scripts_cannot_take_is_one_line(tmp_path, monkeypatch, capsys):
    for name in ('train.py', 'validate.py'):
        (tmp_path / name).write_text(FAKE_SCRIPT)
    monkeypatch.setattr(small_data, 'RUNS', [Run('custom stem', 'deit_tiny_patch16_224', dict(embed_layer=T2TPatchEmbed))])
    with pytest.raises(SystemExit) as exit_info:
        small_data_main(['--timm-scripts', str(tmp_path), '--work-dir', str(tmp_path / 'work')])
    assert exit_info.value.code == 2 and capsys.readouterr().err.splitlines()[-1].endswith(
        "--timm-scripts: custom stem: timm's scripts take model arguments as Python literals, and embed_layer="
        f"{T2TPatchEmbed!r} is not one: register a model name for it.")
    assert not (tmp_path / 'calls.jsonl').exists()


def test_the_test_header_and_the_experiment_state_one_bf16_measurement():
    import conftest
    explanation = explain_bf16(bf16_support())
    assert conftest.pytest_report_header(None).endswith(f': {explanation}')
    assert f': {explanation} (--' in training_precision(None, bf16_support())[1]
    assert recipes.bf16_support.cache_info().misses == 1  # measured once in this process, whoever asks


@pytest.mark.parametrize('script', ['small_data.py', 'benchmark.py', 'amp_check.py'])
def test_the_experiments_help_wraps_at_the_commands_width(script):
    done = subprocess.run([sys.executable, str(REPO / 'benchmarks' / script), '--help'], capture_output=True,
                          text=True, env={**os.environ, 'COLUMNS': '80'}, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert max(map(len, lines)) <= 78, max(lines, key=len)  # argparse's width, as the command's help
    description = lines[:lines.index('options:')]
    assert not [line for line in description if re.search(r'\S {8}', line)]  # no line run into the next
    for line, after in zip(description, description[1:]):
        if line.endswith('\\'):  # a command continued on the next line, as written
            assert after.startswith(' ' * 8)
