"""The `timm-t2t` command line: list, info and classify give what they say, every failure is one line, and the
command answers --help without importing torch."""
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from timm.models._hub import save_for_hf

from timm_t2t.cli import main as cli_main

from fresh_python import run_python

SMALL_7 = dict(img_size=64, num_classes=3)  # t2t_vit_7 at 64 px: a checkpoint names its classes and size, not widths
TINY_7 = dict(img_size=64, embed_dim=32, depth=1, num_heads=2, mlp_ratio=1., token_dim=8, num_classes=3)


def _cli(*args, env=None, timeout=300):
    """Run the installed command in a fresh interpreter, as a user's shell would."""
    import os
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


def test_help_answers_without_importing_torch():
    code = ('import json, sys\nfrom timm_t2t.cli import main\ntry:\n    main(["--help"])\nexcept SystemExit:\n    pass\n'
            'print(json.dumps(sorted(m for m in ("torch", "timm") if m in sys.modules)))')
    assert run_python(code) == []
    for command, flags in [('list', ['--json']), ('info', ['model', '--json']),
                           ('classify', ['--model', '--weights', '--top-k', '--batch-size', '--output']),
                           ('convert', ['--model', '--push-to-hub'])]:
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
    assert f'{paths[0]}:' in printed and 'Wrote 5 predictions' in printed


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
    assert 'pip install -e ".[bench]" && python benchmarks/small_data.py' in lines[0]


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


def test_a_file_that_is_not_an_image_is_named(tmp_path, checkpoint):
    text = tmp_path / 'photo.png'
    text.write_text('not really')
    assert _error_line('classify', text, '--weights', checkpoint).endswith(
        f'{text} is not an image Pillow can read (UnidentifiedImageError).')


def test_verbose_says_where_weights_and_preprocessing_come_from_once(images, checkpoint):
    done = _cli('classify', '-v', images / 'img0.png', '--weights', checkpoint)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == len(set(lines)) == 3, lines
    assert lines[0] == f'{checkpoint}: t2t_vit_7 with in_chans=3, num_classes=3, img_size=64.'
    assert lines[1].startswith(f'{checkpoint} carries no preprocessing config: images are prepared as for ImageNet')
    assert lines[2].startswith('Preprocessing: input_size (3, 64, 64), interpolation bicubic, mean (0.485, ')


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


def test_classify_a_checkpoint_of_another_architecture(images, tmp_path):
    torch.manual_seed(0)
    model = timm.create_model('t2t_vit_7', **TINY_7).eval()
    path = tmp_path / 'tiny.pth.tar'
    torch.save({'state_dict_ema': model.state_dict()}, path)
    message = _error_line('classify', images, '--weights', path)
    assert message.endswith(f'{path} fits no registered T2T-ViT variant (width 32, 1 blocks): name the variant it '
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
