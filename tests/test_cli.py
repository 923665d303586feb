"""The `timm-t2t` command line: list, info and classify give what they say, every failure is one line, and the
command answers --help without importing torch."""
import argparse
import csv
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from timm.models._hub import save_for_hf

from timm_t2t import cli, recipes
from timm_t2t.cli import main as cli_main
from timm_t2t.predict import PRECISIONS

from fresh_python import run_python

SMALL_7 = dict(img_size=64, num_classes=3)  # t2t_vit_7 at 64 px: a checkpoint names its classes and size, not widths
TINY_7 = dict(img_size=64, embed_dim=32, depth=1, num_heads=2, mlp_ratio=1., token_dim=8, num_classes=3)


def _cli(*args, env=None, timeout=300):
    """Run the installed command in a fresh interpreter, as a user's shell would."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(('HF_', 'TIMM_T2T'))}
    environ.update(env or {})
    return subprocess.run([sys.executable, '-m', 'timm_t2t', *map(str, args)], capture_output=True, text=True,
                          env=environ, timeout=timeout)


def _error_line(*args) -> str:
    """The message of a failing in-process run, after checking it is one line with the command's prefix."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main([str(a) for a in args])
    message = str(exit_info.value.code)
    assert message.startswith(f'timm-t2t {args[0]}: error: ') and '\n' not in message, message
    return message


@pytest.fixture
def images(tmp_path) -> Path:
    """Five small RGB images in a folder tree, one of them in a subfolder, plus a text file the scan skips."""
    root = tmp_path / 'images'
    (root / 'nested').mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        folder = root / 'nested' if i == 4 else root
        Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 56, 3), dtype=np.uint8)).save(folder / f'img{i}.png')
    (root / 'notes.txt').write_text('not an image')
    return root


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    torch.manual_seed(0)
    model = timm.create_model('t2t_vit_7', **SMALL_7)
    path = tmp_path / 'small.pth.tar'
    torch.save({'state_dict': model.state_dict(), 'epoch': 3}, path)
    return path


def _expected_top(model, paths, k):
    transform = create_transform(**resolve_data_config(dict(input_size=(3, 64, 64)), model=model))
    x = torch.stack([transform(Image.open(p).convert('RGB')) for p in paths])
    with torch.no_grad():
        return model.eval()(x).softmax(-1).topk(k)


def test_a_reader_that_stops_early_stops_the_command_quietly():
    """`timm-t2t info t2t_vit_7 | head -1`: no error line for the closed pipe, and the status a shell gives."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(('HF_', 'TIMM_T2T'))}
    process = subprocess.Popen([sys.executable, '-m', 'timm_t2t', 'info', 't2t_vit_7'], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=environ)
    process.stdout.close()  # the reader is gone before the command writes
    stderr = process.stderr.read()
    assert process.wait(timeout=300) == 141 and stderr == ''


def test_help_answers_without_importing_torch():
    code = ('import json, sys\nfrom timm_t2t.cli import main\ntry:\n    main(["--help"])\nexcept SystemExit:\n    pass\n'
            'print(json.dumps(sorted(m for m in ("torch", "timm") if m in sys.modules)))')
    assert run_python(code) == []
    for command, flags in [('list', ['--json']), ('info', ['model', '--json']),
                           ('classify', ['--model', '--weights', '--top-k', '--batch-size', '--output',
                                         '--precision']),
                           ('convert', ['--model', '--push-to-hub']),
                           ('features', ['--models', '--weights', '--layers', '--channels', '--size', '--output',
                                         '--json', 'invalid', 'Richness'])]:
        done = _cli(command, '--help')
        assert done.returncode == 0 and all(flag in done.stdout for flag in flags), done.stdout


def test_list_measures_every_variant(tmp_path):
    release_cache = tmp_path / 'torch' / 'hub' / 'checkpoints'
    release_cache.mkdir(parents=True)
    (release_cache / '71.7_T2T_ViT_7.pth.tar').write_bytes(b'cached')  # found by name; checked only when used
    done = _cli('list', '--json', env=dict(TORCH_HOME=str(tmp_path / 'torch'), HF_HOME=str(tmp_path / 'hf')))
    assert done.returncode == 0, done.stderr
    rows = {row['model']: row for row in json.loads(done.stdout)}
    assert sorted(rows) == sorted(timm.list_models('t2t_vit*'))
    for name in ('t2t_vit_7', 't2t_vit_dense'):
        model = timm.create_model(name)
        assert rows[name]['params'] == sum(p.numel() for p in model.parameters())
    assert rows['t2t_vit_dense']['depth'] == 19 and rows['t2t_vit_14_wo_t2t']['stem'] == 'hard split'
    assert 4.7e9 < rows['t2t_vit_14']['macs'] < 4.9e9  # the paper's 4.8G
    assert rows['t2t_vit_7']['tags'] == [dict(tag='in1k', top1=71.7, cached=True)]
    assert [t['cached'] for t in rows['t2t_vit_14']['tags']] == [False] * 4

    table = _cli('list', env=dict(TORCH_HOME=str(tmp_path / 'torch'))).stdout
    assert 'in1k* (71.7)' in table and 't2t_vit_16_ghost' in table


def test_info_names_pyramid_and_weight_sources(tmp_path):
    done = _cli('info', 't2t_vit_14.in1k_384', '--json', env=dict(TORCH_HOME=str(tmp_path / 'torch')))
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info['input_size'] == [3, 384, 384]
    assert [(f['channels'], f['stride']) for f in info['feature_pyramid']] == [(64, 4), (64, 8), (384, 16)]
    assert info['weights']['hub'] == 'timm-t2t/t2t_vit_14.in1k_384'
    assert (info['weights']['hub_revision'], info['weights']['hub_pinned']) == (None, False)
    assert info['weights']['release_url'].endswith('/83.3_T2T_ViT_14.pth.tar')
    assert info['weights']['release_digest'] == dict(published=False, size=None, sha384=None, first_download=None)
    assert info['weights']['paper_top1'] == 83.3 and info['pretrained_cfg']['crop_pct'] == 0.9
    text = _cli('info', 't2t_vit_c_14').stdout
    assert 'weights: none released' in text and '384 channels at stride 16' in text


def test_info_shows_the_published_digest_and_that_no_tag_is_pinned():
    text = _cli('info', 't2t_vit_14.in1k').stdout
    assert ('weights: Hugging Face Hub timm-t2t/t2t_vit_14.in1k (not pinned: follows main), falling back to '
            'https://github.com/yitu-opensource/T2T-ViT/releases/download/main/81.5_T2T_ViT_14.pth.tar\n'
            '         release file digest: sha384 98c8ae06a1e9997f3e83ad2dfbac49985bf7bd7723eb64e4b8462338163be026'
            '57998f0bd9f8997367417003caeaf7a1, 86,212,823 bytes (published)\n') in text


def test_classify_folders_in_batches_with_outputs(images, checkpoint, tmp_path, capsys):
    csv_path, json_path = tmp_path / 'out.csv', tmp_path / 'out.json'
    cli_main(['classify', str(images), '--model', 't2t_vit_7', '--weights', str(checkpoint), '--batch-size', '2',
              '--top-k', '2', '--output', str(csv_path)])
    cli_main(['classify', str(images / 'img1.png'), '--weights', str(checkpoint), '--output', str(json_path)])
    printed = capsys.readouterr().out

    paths = sorted(images.glob('*.png')) + [images / 'nested' / 'img4.png']
    model = timm.create_model('t2t_vit_7', checkpoint_path=str(checkpoint), **SMALL_7)
    top = _expected_top(model, paths, 2)
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert [r['path'] for r in rows] == [str(p) for p in paths for _ in range(2)]
    assert [int(r['class']) for r in rows] == top.indices.flatten().tolist()
    np.testing.assert_allclose([float(r['probability']) for r in rows], top.values.flatten().numpy(), atol=1e-5)
    assert rows[0]['label'] == f'class {rows[0]["class"]}'

    single = json.loads(json_path.read_text())
    assert len(single) == 1 and single[0]['classes'] == _expected_top(model, [paths[1]], 3).indices[0].tolist()
    assert printed.splitlines() == [f'Wrote 5 predictions to {csv_path}.', f'Wrote 1 prediction to {json_path}.']


def test_without_output_the_predictions_are_printed(images, checkpoint, capsys):
    cli_main(['classify', str(images / 'img0.png'), str(images / 'img1.png'), '--weights', str(checkpoint),
              '--top-k', '2'])
    model = timm.create_model('t2t_vit_7', checkpoint_path=str(checkpoint), **SMALL_7)
    top = _expected_top(model, [images / 'img0.png', images / 'img1.png'], 2)
    assert capsys.readouterr().out.splitlines() == [
        line for path, values, indices in zip(('img0.png', 'img1.png'), top.values.tolist(), top.indices.tolist())
        for line in [f'{images / path}:', *(f'  {value:7.2%}  class {index}' for value, index in zip(values, indices))]]


def test_classify_a_saved_folder_uses_its_labels(images, tmp_path, capsys):
    torch.manual_seed(0)
    model = timm.create_model('t2t_vit_7', **TINY_7)  # a folder names its architecture
    save_for_hf(model, tmp_path / 'folder', model_config=dict(label_names=['cat', 'dog', 'bird']), model_args=TINY_7,
                safe_serialization=True)
    cli_main(['classify', str(images / 'img0.png'), '--weights', str(tmp_path / 'folder'), '--top-k', '3'])
    labels = [line.split()[-1] for line in capsys.readouterr().out.splitlines()[1:]]
    assert sorted(labels) == ['bird', 'cat', 'dog']
    message = _error_line('classify', images, '--weights', tmp_path / 'folder', '--model', 't2t_vit_14')
    assert 'holds a t2t_vit_7, not a t2t_vit_14' in message


def test_inputs_are_checked_before_any_download(tmp_path, images):
    # the Hub and the release host would hang or fail: a missing image must be reported without asking them
    start = time.perf_counter()
    done = _cli('classify', tmp_path / 'missing.png', env=dict(HF_ENDPOINT='http://10.255.255.1:9'))
    assert time.perf_counter() - start < 60
    assert done.stderr.strip().splitlines() == [f'timm-t2t classify: error: No such image file or folder: '
                                                f'{tmp_path / "missing.png"}']
    code = ('import json, sys\nfrom timm_t2t.cli import main\ntry:\n    main(["classify", sys.argv[0]])\n'
            'except SystemExit as e:\n    print(json.dumps([str(e.code), "torch" in sys.modules]))')
    message, torch_imported = run_python(code.replace('sys.argv[0]', repr(str(tmp_path / 'missing.png'))))
    assert message.endswith('No such image file or folder: ' + str(tmp_path / 'missing.png')) and not torch_imported


def test_usage_errors_are_one_line(images, capsys):
    for args, problem in [(['classify', str(images), '--top-k', 'x'],
                           "argument --top-k: expected a whole number of at least 1, got 'x'"),
                          (['info'], 'the following arguments are required: MODEL'),
                          (['classify', '-v'], 'the following arguments are required: IMAGE_OR_FOLDER')]:
        with pytest.raises(SystemExit) as exit_info:
            cli_main(args)
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.splitlines() == [
            f'timm-t2t {args[0]}: error: {problem} (see timm-t2t {args[0]} --help)']


@pytest.mark.parametrize('name, message', [
    ('nonsense', "Unknown model 'nonsense'; `timm-t2t list` shows the T2T-ViT variants."),
    ('t2t_vit_14.bogus', "t2t_vit_14 has no pretrained tag 'bogus' (its tags: in1k, in1k_384, in1k_ft_cifar10, "
                         "in1k_ft_cifar100)."),
    ('resnet50', "'resnet50' is a timm model but not a T2T-ViT; `timm-t2t list` shows the T2T-ViT variants "
                 "(`timm-t2t features` takes any timm model)."),
    ('tests', 'tests is a path, not a model name (classify and features take a model folder or checkpoint with '
              '--weights).'),
])
def test_info_names_unknown_models_and_tags(name, message):
    assert _error_line('info', name).endswith(message)


def test_offline_fails_fast_in_one_line_saying_what_to_do(tmp_path):
    env = dict(HF_HUB_OFFLINE='1', HF_HOME=str(tmp_path / 'hf'), TORCH_HOME=str(tmp_path / 'torch'))
    done = _cli('classify', Path(__file__).parents[1] / 'examples' / 'cat.png', env=env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert lines[0].startswith('timm-t2t classify: error: Cannot get the pretrained weights of t2t_vit_14.in1k: '
                               'timm-t2t/t2t_vit_14.in1k is not in the local cache')
    assert 'HF_HUB_OFFLINE is set' in lines[0] and '--weights FILE' in lines[0]
    assert 'pip install -e ".[bench]" && python benchmarks/small_data.py --seeds 1' in lines[0]


@pytest.mark.parametrize('content, problem', [
    (b'# README\nnot weights', 'not a PyTorch or safetensors weight file'),
    ('truncated', 'the file is truncated or corrupted'),
])
def test_unreadable_weights_are_named(tmp_path, images, checkpoint, content, problem):
    path = tmp_path / 'weights.pth'
    path.write_bytes(checkpoint.read_bytes()[:2000] if content == 'truncated' else content)
    message = _error_line('classify', images, '--weights', path)
    assert message.endswith(f'{path} is not a readable checkpoint: {problem}.')


@pytest.mark.parametrize('args, message', [
    (['--model', 't2t_vit_99'], "Unknown model 't2t_vit_99'; `timm-t2t list` shows the T2T-ViT variants."),
    (['--output', 'out.txt'], 'Cannot tell the format of out.txt: name it .csv or .json.'),
    (['--weights', 'nowhere.pth'], 'No checkpoint file or model folder at nowhere.pth.'),
])
def test_classify_errors_name_the_problem(images, args, message):
    assert _error_line('classify', images, *args).endswith(message)


def test_unreadable_images_are_named_and_the_rest_classified(images, checkpoint, tmp_path):
    (images / 'broken.png').write_text('not really')
    (images / 'nested' / 'empty.jpg').write_bytes(b'')
    out = tmp_path / 'out.csv'
    done = _cli('classify', images, '--weights', checkpoint, '--batch-size', '2', '--top-k', '1', '--output', out)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-3:] == [
        f'timm-t2t classify: skipped: {images / "broken.png"} is not an image Pillow can read '
        f'(UnidentifiedImageError).',
        f'timm-t2t classify: skipped: {images / "nested" / "empty.jpg"} is not an image Pillow can read '
        f'(UnidentifiedImageError).',
        'timm-t2t classify: error: Could not read 2 of 7 images (named above); 5 images classified.']
    paths = sorted(images.glob('img*.png')) + [images / 'nested' / 'img4.png']
    model = timm.create_model('t2t_vit_7', checkpoint_path=str(checkpoint), **SMALL_7)
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [r['path'] for r in rows] == list(map(str, paths))
    assert [int(r['class']) for r in rows] == _expected_top(model, paths, 1).indices.flatten().tolist()
    assert done.stdout.splitlines() == [f'Wrote 5 predictions to {out}.']


def test_counts_of_one_and_none_are_grammatical(images, checkpoint, tmp_path, capsys):
    (tmp_path / 'broken.png').write_text('not an image')
    out = tmp_path / 'out.json'
    assert _error_line('classify', tmp_path / 'broken.png', '--weights', checkpoint, '--output', out).endswith(
        'Could not read 1 of 1 image (named above); 0 images classified.')
    assert capsys.readouterr().out.splitlines() == [f'Wrote 0 predictions to {out}.'] and json.loads(out.read_text()) == []


def test_output_folder_is_checked_before_torch_loads(tmp_path, images):
    out = tmp_path / 'missing' / 'out.json'
    code = ('import json, sys\nfrom timm_t2t.cli import main\ntry:\n    main(["classify", IMAGES, "--output", OUT])\n'
            'except SystemExit as e:\n    print(json.dumps([str(e.code), "torch" in sys.modules]))')
    message, torch_imported = run_python(code.replace('IMAGES', repr(str(images))).replace('OUT', repr(str(out))))
    assert message == (f'timm-t2t classify: error: No folder {out.parent} to write --output {out} into: create it '
                       f'first.')
    assert not torch_imported


@pytest.mark.parametrize('make, problem', [
    (lambda out: out.mkdir(), 'Is a directory'),
    (lambda out: out.parent.chmod(0o500), 'Permission denied'),
], ids=['a folder', 'a read-only folder'])
def test_an_output_that_cannot_be_written_fails_before_torch_loads(tmp_path, images, make, problem):
    out = tmp_path / 'out' / 'out.csv'
    out.parent.mkdir()
    make(out)
    if problem == 'Permission denied' and os.access(out.parent, os.W_OK):
        pytest.skip('this user writes into read-only folders (root)')
    code = ('import json, sys\nfrom timm_t2t.cli import main\ntry:\n    main(["classify", IMAGES, "--output", OUT])\n'
            'except SystemExit as e:\n    print(json.dumps([str(e.code), "torch" in sys.modules]))')
    try:
        message, torch_imported = run_python(code.replace('IMAGES', repr(str(images))).replace('OUT', repr(str(out))))
    finally:
        out.parent.chmod(0o700)
    assert message == f'timm-t2t classify: error: Cannot write --output {out}: {problem}.' and not torch_imported


def test_checking_the_output_leaves_no_file_behind(tmp_path, images):
    out = tmp_path / 'out.csv'
    assert _error_line('classify', images, '--output', out, '--weights', tmp_path / 'nowhere.pth').endswith(
        f'No checkpoint file or model folder at {tmp_path / "nowhere.pth"}.')
    assert not out.exists()
    out.write_text('kept')  # an existing file is checked without being changed
    _error_line('classify', images, '--output', out, '--weights', tmp_path / 'nowhere.pth')
    assert out.read_text() == 'kept'


@pytest.mark.parametrize('args, problem', [
    (['--mean', '0.5', '0.5'], 'argument --mean: expected 3 values (one per input channel of the model) or 1 (for '
                               'every channel), got 2'),
    (['--std', '0.2', '0.2', '0.2', '0.2'], 'argument --std: expected 3 values (one per input channel of the model) '
                                            'or 1 (for every channel), got 4'),
    (['--crop-pct', '0'], "argument --crop-pct: expected a fraction of the resized image in (0, 1], got '0'"),
    (['--crop-pct', '-1'], "argument --crop-pct: expected a fraction of the resized image in (0, 1], got '-1'"),
    (['--crop-pct', '1.5'], "argument --crop-pct: expected a fraction of the resized image in (0, 1], got '1.5'"),
])
def test_preprocessing_options_that_do_not_fit_are_usage_errors(images, checkpoint, capsys, args, problem):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(['classify', str(images / 'img0.png'), '--weights', str(checkpoint), *args])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f'timm-t2t classify: error: {problem} (see timm-t2t classify --help)']


def test_one_mean_for_every_channel_is_accepted(images, checkpoint, tmp_path):
    out = tmp_path / 'out.json'
    cli_main(['classify', str(images / 'img0.png'), '--weights', str(checkpoint), '--mean', '0.5', '--std', '0.25',
              '--output', str(out)])
    model = timm.create_model('t2t_vit_7', checkpoint_path=str(checkpoint), **SMALL_7).eval()
    transform = create_transform(input_size=(3, 64, 64), mean=(.5,) * 3, std=(.25,) * 3, crop_pct=0.9,
                                 interpolation='bicubic')
    with torch.no_grad():
        top = model(transform(Image.open(images / 'img0.png').convert('RGB'))[None]).softmax(-1).topk(3)
    np.testing.assert_allclose(json.loads(out.read_text())[0]['probabilities'], top.values[0].numpy(), atol=1e-5)


@pytest.fixture
def saved_folder(tmp_path) -> Path:
    torch.manual_seed(0)
    folder = tmp_path / 'folder'
    save_for_hf(timm.create_model('t2t_vit_7', **TINY_7), folder, model_args=TINY_7, safe_serialization=True)
    return folder


@pytest.mark.parametrize('cut, problem', [(100, 'invalid header length'),
                                          (-10, 'incomplete metadata, file not fully covered')])
def test_a_truncated_folder_names_its_weight_file(images, saved_folder, cut, problem):
    weights = saved_folder / 'model.safetensors'
    weights.write_bytes(weights.read_bytes()[:cut])
    assert _error_line('classify', images, '--weights', saved_folder).endswith(
        f'{weights} is not a readable checkpoint: the file is truncated or corrupted ({problem}).')


@pytest.mark.parametrize('text, problem', [
    ('{"architecture": ', 'is not valid JSON (Expecting value: line 1 column 18 (char 17)).'),
    ('["t2t_vit_7"]', "names no architecture: not a config.json as timm's save_for_hf writes it."),
])
def test_a_broken_folder_config_names_its_file(images, saved_folder, text, problem):
    (saved_folder / 'config.json').write_text(text)
    assert _error_line('classify', images, '--weights', saved_folder).endswith(
        f'{saved_folder / "config.json"} {problem}')


def test_a_broken_torch_install_says_what_to_do(tmp_path, images):
    fake = tmp_path / 'site' / 'torchvision'  # a torchvision built for another torch fails like this on import
    fake.mkdir(parents=True)
    (fake / '__init__.py').write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    path = os.pathsep.join(p for p in (os.environ.get('PYTHONPATH'), str(fake.parent)) if p)
    for args in (['list'], ['classify', images]):
        done = _cli(*args, env=dict(PYTHONPATH=path))
        assert done.returncode == 1
        assert done.stderr.splitlines() == [
            f'timm-t2t {args[0]}: error: torch/torchvision could not be imported (torchvision: RuntimeError: operator '
            f'torchvision::nms does not exist): reinstall both in one pip command, from one index, e.g. pip install '
            f'--upgrade torch torchvision (add the --index-url they should both come from, if any).']


def _classify_json(out: Path, *args, fresh: bool = False) -> list:
    """classify's predictions as JSON: in this interpreter, or in a fresh one (`fresh`: the compiled and quantized
    recipes leave inductor's process-wide state behind, which later compiles in the same test process trip on)."""
    command = ['classify', *map(str, args), '--top-k', '10', '--output', str(out)]
    if fresh:
        done = _cli(*command)
        assert done.returncode == 0, done.stderr
    else:
        cli_main(command)
    return json.loads(out.read_text())


@pytest.fixture(scope='module')
def digits_fp32(digits_model, tmp_path_factory):
    """Three validation images of each digit, and what the command line says of them in fp32."""
    paths = [p for folder in sorted((digits_model.data / 'val').iterdir()) for p in sorted(folder.glob('*.png'))[:3]]
    out = tmp_path_factory.mktemp('fp32') / 'fp32.json'
    return paths, _classify_json(out, *paths, '--weights', digits_model.folder)


# Largest difference in any class probability from fp32 allowed on the digits model (its logits stay within 0.1 of
# fp32 in bf16 and 0.3 in int8, as tests/test_recipes.py bounds them; the top-1 leads the second class by 0.27 or more
# on these images).
PROBABILITY_TOLERANCE = {'fp32': 0., 'bf16': 0.02, 'int8': 0.05, 'int8-static': 0.05}


def test_the_command_offers_every_precision():
    assert cli._PRECISIONS == tuple(PRECISIONS)  # named there without importing torch
    assert set(PRECISIONS.values()) <= set(recipes.RECIPES)  # each one kept near fp32 by tests/test_recipes.py


# The compiled recipes take 10-15 s each to compile: int8-static stands for them here (the fastest on an AVX2-only
# CPU; it compiles for the first batch of 16 and pads the last batch of 14), the others are tests/test_recipes.py's.
@pytest.mark.parametrize('precision', PROBABILITY_TOLERANCE)
def test_precision_keeps_the_top1_of_fp32(digits_model, digits_fp32, tmp_path, needs_bf16, precision):
    if precision.startswith('bf16'):
        needs_bf16(PRECISIONS[precision])
    paths, reference = digits_fp32
    correct = [p['labels'][0] == path.parent.name for p, path in zip(reference, paths)]
    assert sum(correct) >= 27  # a real model: right on at least 90% of them
    predicted = _classify_json(
        tmp_path / 'out.json', *paths, '--weights', digits_model.folder, '--precision', precision,
        fresh=precision != 'fp32')
    assert [p['classes'][0] for p in predicted] == [p['classes'][0] for p in reference]
    for mine, theirs in zip(predicted, reference):
        mine = dict(zip(mine['classes'], mine['probabilities']))
        theirs = dict(zip(theirs['classes'], theirs['probabilities']))
        assert max(abs(mine[c] - theirs[c]) for c in theirs) <= PROBABILITY_TOLERANCE[precision]


@pytest.mark.parametrize('precision, recipe', [('bf16', 'bf16'), ('int8', 'int8-dynamic')])
def test_verbose_says_which_recipe_runs(images, checkpoint, needs_bf16, precision, recipe):
    if precision.startswith('bf16'):
        needs_bf16(recipe)
    done = _cli('classify', '-v', images / 'img0.png', '--weights', checkpoint, '--precision', precision)
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith('CPU recipe')] == [
        f'CPU recipe {recipe}: {recipes._DESCRIPTIONS[recipe]}; logits returned in float32.']


def test_a_precision_this_machine_cannot_run_is_one_line_before_loading(monkeypatch, images, tmp_path):
    garbage = tmp_path / 'weights.pth'  # never read: the precision is checked first
    garbage.write_text('not weights')
    monkeypatch.setattr(recipes, '_cpu_has_bf16', lambda: False)
    assert _error_line('classify', images, '--weights', garbage, '--precision', 'bf16').endswith(
        'bf16 needs a CPU with bfloat16 support that torch can use (AVX-512 or AMX on x86, BF16 on Arm), which this '
        'one lacks: use fp32 or int8.')
    monkeypatch.delattr(torch.ao.quantization, 'quantize_dynamic')
    assert _error_line('classify', images, '--weights', garbage, '--precision', 'int8').endswith(
        f'This torch {torch.__version__} build has no int8 CPU quantization: use fp32 or bf16.')


def test_verbose_says_where_weights_and_preprocessing_come_from_once(images, checkpoint):
    done = _cli('classify', '-v', images / 'img0.png', '--weights', checkpoint)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == len(set(lines)) == 5, lines
    assert lines[0].startswith('Allocator: glibc malloc keeps freed memory')
    assert lines[1] == f'{checkpoint}: t2t_vit_7 with in_chans=3, num_classes=3, img_size=64.'
    assert lines[2].startswith(f'{checkpoint} carries no preprocessing config: images are prepared as for ImageNet')
    assert lines[3].startswith('Preprocessing: input_size (3, 64, 64), interpolation bicubic, mean (0.485, ')
    assert lines[4] == 'CPU recipe fp32: float32 weights and activations, eager; logits returned in float32.'


def test_classify_with_given_preprocessing(images, checkpoint, tmp_path):
    out = tmp_path / 'out.json'
    cli_main(['classify', str(images / 'img0.png'), '--weights', str(checkpoint), '--mean', '0.5', '0.5', '0.5',
              '--std', '0.2', '0.3', '0.4', '--crop-pct', '1.0', '--interpolation', 'bilinear', '--output', str(out)])
    model = timm.create_model('t2t_vit_7', checkpoint_path=str(checkpoint), **SMALL_7).eval()
    transform = create_transform(input_size=(3, 64, 64), mean=(.5, .5, .5), std=(.2, .3, .4), crop_pct=1.,
                                 interpolation='bilinear')
    with torch.no_grad():
        top = model(transform(Image.open(images / 'img0.png').convert('RGB'))[None]).softmax(-1).topk(3)
    predicted = json.loads(out.read_text())[0]
    assert predicted['classes'] == top.indices[0].tolist()
    np.testing.assert_allclose(predicted['probabilities'], top.values[0].numpy(), atol=1e-5)


def test_a_timm_training_checkpoint_is_classified_with_the_preprocessing_it_records(images, tmp_path, caplog):
    """timm's train.py stores its arguments in its checkpoints: those it was given are the preprocessing, with no
    guess; an option given on the command line still wins."""
    torch.manual_seed(0)
    model = timm.create_model('t2t_vit_7', **TINY_7)
    recorded = dict(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], crop_pct=1.0, interpolation='bilinear')
    path = tmp_path / 'last.pth.tar'
    torch.save({'state_dict': model.state_dict(), 'epoch': 5,
                'args': argparse.Namespace(model='t2t_vit_7', epochs=6, **recorded)}, path)
    kwargs = ['--model', 't2t_vit_7', '--model-kwargs', 'embed_dim=32', 'depth=1', 'num_heads=2', 'mlp_ratio=1.',
              'token_dim=8']
    options = ['--mean', '0.5', '0.5', '0.5', '--std', '0.25', '0.25', '0.25', '--crop-pct', '1', '--interpolation',
               'bilinear']
    with caplog.at_level('WARNING', logger='timm_t2t'):
        from_file = _classify_json(tmp_path / 'file.json', images, '--weights', path, *kwargs)
    assert not [r for r in caplog.records if 'preprocessing' in r.getMessage()]
    assert from_file == _classify_json(tmp_path / 'told.json', images, '--weights', path, *kwargs, *options)
    # a LayerNorm follows the soft split: another std, or a mean shared by the channels, would change nothing
    overridden = _classify_json(tmp_path / 'other.json', images, '--weights', path, *kwargs, '--mean', '0.1', '0.5',
                                '0.9')
    assert overridden != from_file


def test_a_model_converted_from_a_folder_classifies_as_the_folder_does(images, tmp_path):
    """convert carries the folder's preprocessing and label names: the same labels and the same probabilities, which
    the preprocessing does change."""
    torch.manual_seed(0)
    model = timm.create_model('t2t_vit_7', **TINY_7)
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, 64, 64), num_classes=3, mean=(0.5, 0.5, 0.5),
                                std=(0.25, 0.25, 0.25), crop_pct=1., interpolation='bilinear')
    save_for_hf(model, tmp_path / 'folder', model_config=dict(label_names=['cat', 'dog', 'bird']), model_args=TINY_7,
                safe_serialization=True)
    cli_main(['convert', str(tmp_path / 'folder'), str(tmp_path / 'converted')])
    own = _classify_json(tmp_path / 'own.json', images, '--weights', tmp_path / 'folder')
    converted = _classify_json(tmp_path / 'converted.json', images, '--weights', tmp_path / 'converted')
    assert converted == own and {label for p in own for label in p['labels']} == {'cat', 'dog', 'bird'}
    as_imagenet = _classify_json(tmp_path / 'imagenet.json', images, '--weights', tmp_path / 'folder', '--mean',
                                 '0.485', '0.456', '0.406', '--std', '0.229', '0.224', '0.225', '--crop-pct', '0.9',
                                 '--interpolation', 'bicubic')
    assert [p['probabilities'] for p in as_imagenet] != [p['probabilities'] for p in own]


def test_classify_a_checkpoint_of_another_architecture(images, tmp_path):
    torch.manual_seed(0)
    model = timm.create_model('t2t_vit_7', **TINY_7).eval()
    path = tmp_path / 'tiny.pth.tar'
    torch.save({'state_dict_ema': model.state_dict()}, path)
    message = _error_line('classify', images, '--weights', path)
    assert message.endswith(f'{path} fits no registered T2T-ViT variant (width 32, 1 block): name the variant it '
                            f'was built from and the arguments it changed, e.g. --model t2t_vit_7 --model-kwargs '
                            f'embed_dim=32 depth=1 num_heads=N.')
    assert _error_line('classify', images, '--weights', path, '--model-kwargs', 'depth=1').endswith(
        'Model arguments need the variant they change: name it too (--model).')
    message = _error_line('classify', images, '--weights', path, '--model', 't2t_vit_7')
    assert message.startswith(f'timm-t2t classify: error: {path} does not fit t2t_vit_7: ')
    assert '(1, 1, 32) vs (1, 1, 256)' in message and ' more; ' in message and '..' not in message

    out = tmp_path / 'out.json'
    cli_main(['classify', str(images / 'img0.png'), '--weights', str(path), '--model', 't2t_vit_7', '--model-kwargs',
              'embed_dim=32', 'depth=1', 'num_heads=2', 'mlp_ratio=1.0', 'token_dim=8', '--output', str(out)])
    assert json.loads(out.read_text())[0]['classes'] == _expected_top(model, [images / 'img0.png'], 3).indices[0].tolist()


def test_a_16_bit_image_is_classified_as_its_8_bit_copy(digits_model, tmp_path):
    plain = [sorted((digits_model.data / 'val' / digit).glob('*.png'))[0] for digit in '0123456789']
    deep = []
    for path in plain:  # what a 16-bit scan of each digit holds: every value times 257
        deep.append(tmp_path / f'{path.parent.name}.png')
        Image.fromarray(np.asarray(Image.open(path), dtype=np.uint16) * 257).save(deep[-1])
    assert Image.open(deep[0]).mode.startswith('I')
    from_plain = _classify_json(tmp_path / 'plain.json', *plain, '--weights', digits_model.folder)
    from_deep = _classify_json(tmp_path / 'deep.json', *deep, '--weights', digits_model.folder)
    assert [(p['classes'], p['probabilities']) for p in from_deep] == [
        (p['classes'], p['probabilities']) for p in from_plain]


def test_an_image_too_large_for_pillow_is_skipped_in_one_line(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 8000)  # read with a warning over 8,000 pixels, refused over 16,000
    rng = np.random.default_rng(0)
    sides = {'a_small.png': 60, 'b_large.png': 100, 'c_too_large.png': 150}
    for name, side in sides.items():
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(tmp_path / name)
    out = tmp_path / 'out.csv'
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        message = _error_line('classify', *(tmp_path / name for name in sides), '--weights', checkpoint, '--top-k',
                              '1', '--output', out)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith('timm-t2t')] == [
        f'timm-t2t classify: skipped: {tmp_path / "c_too_large.png"} is too large to read: over 16,000 pixels, which '
        f'Pillow refuses as a possible decompression bomb (downscale it first).']
    assert message.endswith('Could not read 1 of 3 images (named above); 2 images classified.')
    with open(out) as f:
        assert [row['path'] for row in csv.DictReader(f)] == [str(tmp_path / 'a_small.png'),
                                                              str(tmp_path / 'b_large.png')]


@pytest.mark.parametrize('columns', [80, 120])
def test_every_help_wraps_at_the_same_width(monkeypatch, capsys, columns):
    monkeypatch.setenv('COLUMNS', str(columns))
    for command in ([], ['list'], ['info'], ['classify'], ['convert'], ['features']):
        with pytest.raises(SystemExit):
            cli_main([*command, '--help'])
        lines = capsys.readouterr().out.splitlines()
        assert max(map(len, lines)) <= columns - 2, (command, max(lines, key=len))  # argparse's width


def test_outputs_written_in_the_checkout_root_are_not_tracked():
    """README's examples write classify's and features' outputs into the current folder, a checkout's root."""
    repo = Path(__file__).resolve().parents[1]
    if not (repo / '.git').exists():
        pytest.skip('not a git checkout')
    names = [f'out{suffix}' for suffix in ('.csv', '.json', *cli._FIGURE_SUFFIXES)]
    done = subprocess.run(['git', 'check-ignore', '--no-index', *names], cwd=repo, capture_output=True, text=True)
    assert done.stdout.split() == names
    tracked_but_ignored = subprocess.run(['git', 'ls-files', '--cached', '--ignored', '--exclude-standard'], cwd=repo,
                                         capture_output=True, text=True, check=True).stdout
    assert tracked_but_ignored == ''  # benchmarks/results and examples stay tracked
