"""Feature maps as the paper's Figure 2 draws them: the maps are timm's intermediates, invalid channels and effective
rank mean what they say, the figure is drawn, and the `features` command answers bad input in one line."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.models._hub import save_for_hf

from timm_t2t import T2TViT, weights
from timm_t2t.cli import main as cli_main
from timm_t2t.features import (
    LayerMaps, LayerStatistics, Panel, channel_ratios, default_layers, draw_figure, effective_rank, extract_maps, invalid_channels,
    map_grid, measure_features, normalize_maps, resolve_layers)
from timm_t2t.predict import image_transform
from timm_t2t.weights import load_model

from conftest import SMALL
from fresh_python import run_python

TINY_VIT = dict(img_size=64, num_classes=3)  # timm's test_vit: 6 blocks of width 64


def _small_models():
    torch.manual_seed(0)
    return {
        't2t_vit': T2TViT(**SMALL).eval(),
        'vit_with_registers': timm.create_model('test_vit', reg_tokens=2, **TINY_VIT).eval(),
        'resnet': timm.create_model('test_resnet', num_classes=3).eval(),
    }


@pytest.fixture(scope='module')
def small_models():
    return _small_models()


@pytest.mark.parametrize('kind', ['t2t_vit', 'vit_with_registers', 'resnet'])
def test_maps_are_the_intermediates_timm_returns(small_models, kind):
    model = small_models[kind]
    layers = resolve_layers(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = extract_maps(model, x, layers)
        expected = model.forward_intermediates(x, indices=layers, intermediates_only=True)
    assert len(maps) == len(layers) == len(expected)
    for fmap, reference in zip(maps, expected):
        assert fmap.ndim == 4
        torch.testing.assert_close(fmap, reference, rtol=0, atol=0)


def test_vit_maps_are_its_patch_tokens_on_their_grid_without_class_or_register_tokens(small_models):
    vit = small_models['vit_with_registers']
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fmap, = extract_maps(vit, x, [2])
        tokens = vit.blocks[:3](vit._pos_embed(vit.patch_embed(x)))
    assert vit.num_prefix_tokens == 3 and fmap.shape == (2, 64, 4, 4)
    torch.testing.assert_close(fmap.flatten(2).transpose(1, 2), tokens[:, 3:])


def test_t2t_maps_are_the_restructurized_outputs_of_the_t2t_layers(small_models):
    model = small_models['t2t_vit']
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        first, second = extract_maps(model, x, [0, 1])
        _, stem_maps = model.tokens_to_token(x)
    assert first.shape == (1, 16, 16, 16) and second.shape == (1, 16, 8, 8)  # token_dim 16, strides 4 and 8
    torch.testing.assert_close(first, stem_maps[0])
    torch.testing.assert_close(second, stem_maps[1])


def test_a_model_without_forward_intermediates_gives_what_features_only_gives(monkeypatch):
    torch.manual_seed(0)
    resnet = timm.create_model('test_resnet').eval()
    backbone = timm.create_model('test_resnet', features_only=True).eval()
    backbone.load_state_dict(resnet.state_dict(), strict=False)
    monkeypatch.setattr(resnet, 'forward_intermediates', None, raising=False)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = extract_maps(resnet, x, [0, 2, 4])
        expected = backbone(x)
    for fmap, reference in zip(maps, [expected[0], expected[2], expected[4]]):
        torch.testing.assert_close(fmap, reference, rtol=0, atol=0)


def test_layers_default_to_a_few_spread_over_depth_and_count_from_the_end(small_models):
    assert default_layers(9) == [0, 3, 5, 8] and default_layers(5) == [0, 1, 3, 4] and default_layers(2) == [0, 1]
    model = small_models['t2t_vit']  # 2 T2T maps, then 2 blocks
    assert resolve_layers(model) == [0, 1, 2, 3]
    assert resolve_layers(model, [-1, 0, 0, 1]) == [0, 1, 3]
    with pytest.raises(ValueError) as error:
        resolve_layers(model, [0, 4], 'small')
    assert str(error.value) == ('small has no layer 4: it has 4 feature layers, 0 to 3 (tokens_to_token.attention1 '
                                'to blocks.1), or -4 to -1 counted from the end.')


def test_a_model_without_intermediates_is_one_line():
    with pytest.raises(ValueError) as error:
        resolve_layers(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)))
    assert str(error.value) == ('Sequential has no feature_info, so timm gives no intermediate feature maps of it '
                                '(neither forward_intermediates nor features_only).')


def test_token_outputs_that_are_not_maps_are_named(monkeypatch):
    vit = timm.create_model('test_vit', **TINY_VIT).eval()
    monkeypatch.setattr(vit, 'forward_intermediates', None, raising=False)  # the blocks' hooked outputs are tokens
    with pytest.raises(ValueError) as error:
        extract_maps(vit, torch.randn(1, 3, 64, 64), [1])
    assert str(error.value) == ('Layer 1 (blocks.1) of VisionTransformer gives a (1, 17, 64) tensor, not (batch, '
                                'channels, height, width) maps.')


def test_invalid_channels_by_construction_are_flagged_and_rich_ones_are_not():
    torch.manual_seed(0)
    maps = torch.randn(3, 12, 6, 6)
    maps[:, 2] = 0.  # all zero
    maps[:, 5] = 3.  # constant: no spatial information
    maps[:, 7] *= 0.005  # spread 0.5% of the others': flat
    maps[:, 9] *= 0.05  # 5%: weak but not flat
    maps[:, 10] *= 40.  # peaks 40 times the others': outlying
    maps[1, 11, 2, 3] = 1000.  # one value far outside, on one image
    flat, outlying = invalid_channels(maps)
    assert flat.tolist() == [[c in (2, 5, 7) for c in range(12)]] * 3
    assert outlying.tolist() == [[c == 10 or (b == 1 and c == 11) for c in range(12)] for b in range(3)]

    statistics = LayerStatistics()
    statistics.update(maps[:2])
    statistics.update(maps[2:])
    report = statistics.report(4, 'blocks.2')
    assert report.flat_fraction == pytest.approx(9 / 36) and report.outlying_fraction == pytest.approx(4 / 36)
    assert report.invalid_fraction == pytest.approx(13 / 36) and report.images == 3 and report.positions == 108
    assert report.effective_rank == pytest.approx(effective_rank(maps), rel=1e-9)  # batches add up to the whole


def test_the_ratios_say_how_near_a_channel_comes_to_invalid():
    checkerboard = (torch.arange(4).view(1, 4) + torch.arange(2).view(2, 1)) % 2 * 2. - 1.  # +-1: spread 1, peak 1
    amplitudes = torch.tensor([0., 1., 1., 1., 2., 0.5, 30.])
    maps = (amplitudes.view(7, 1, 1) * checkerboard)[None]
    spread_ratio, peak_ratio = channel_ratios(maps)
    torch.testing.assert_close(spread_ratio[0], amplitudes)  # the median channel's spread is 1
    torch.testing.assert_close(peak_ratio[0], amplitudes)  # the median non-flat peak is 1
    flat, outlying = invalid_channels(maps)
    assert flat[0].tolist() == [True] + [False] * 6 and outlying[0].tolist() == [False] * 6 + [True]
    statistics = LayerStatistics()
    statistics.update(maps)
    statistics.update(maps[:, [1, 2, 3, 4, 5, 1, 2]] * 3)  # a second image: all within 0.5 to 2 times the median
    report = statistics.report(0, 'stem')
    assert (report.min_spread_ratio, report.max_peak_ratio) == (0., 30.)
    statistics = LayerStatistics()
    statistics.update(maps[:, 1:6])
    assert statistics.report(0, 'stem').max_peak_ratio == 2. and statistics.min_spread_ratio == 0.5
    statistics.update(torch.zeros(1, 5, 2, 4))
    assert statistics.report(0, 'stem').max_peak_ratio == 2.  # an all-flat image has no peaks to compare


def test_effective_rank_counts_independent_channels():
    torch.manual_seed(0)
    columns = torch.randn(400, 8, dtype=torch.float64)
    columns, _ = torch.linalg.qr(columns - columns.mean(0))  # centred, orthonormal: 8 equally strong independent
    rich = columns.T.reshape(8, 4, 10, 10).permute(1, 0, 2, 3)
    assert effective_rank(rich) == pytest.approx(8, rel=1e-6)
    base = torch.randn(4, 1, 10, 10)
    copies = base * torch.linspace(0.5, 3, 8).view(1, 8, 1, 1) + torch.arange(8.).view(1, 8, 1, 1)
    assert effective_rank(copies) == pytest.approx(1, rel=1e-4)  # one map, scaled and shifted
    two = torch.cat([copies[:, :4], torch.randn(4, 1, 10, 10).expand(4, 4, 10, 10)], dim=1)
    assert 1.5 < effective_rank(two) < 2.01
    assert effective_rank(torch.ones(2, 3, 4, 4)) == 0.
    assert not invalid_channels(torch.randn(4, 32, 8, 8))[0].any()


def test_maps_are_scaled_each_to_its_own_range():
    maps = torch.stack([torch.arange(16.).view(4, 4) * 7 - 3, torch.full((4, 4), 2.)])
    scaled = normalize_maps(maps[None])[0]
    torch.testing.assert_close(scaled[0], torch.arange(16.).view(4, 4) / 15)
    assert scaled[1].eq(0).all()


def test_the_grid_frames_invalid_channels_in_red():
    torch.manual_seed(0)
    maps = torch.randn(6, 4, 4)
    grid = map_grid(LayerMaps('t', maps, torch.tensor([False, True, False, False, True, False])), channels=5,
                    size=120, interpolation='nearest')
    assert grid.shape == (120, 120, 3)  # 5 channels: a 3 x 3 grid of 40-pixel cells
    frame = 2
    for channel in range(5):
        top, left = (channel // 3) * 40, (channel % 3) * 40
        expected_color = [0.9, 0.05, 0.05] if channel in (1, 4) else [0.8, 0.8, 0.8]
        np.testing.assert_allclose(grid[top, left], expected_color, rtol=1e-6)
        inner = grid[top + frame:top + 40 - frame, left + frame:left + 40 - frame, 0]
        expected = normalize_maps(maps[channel:channel + 1][None])[0, 0].repeat_interleave(9, 0).repeat_interleave(9, 1)
        np.testing.assert_allclose(inner, expected.numpy(), rtol=1e-6)
    assert (grid[40:80, 80:] == 1).all() and (grid[80:] == 1).all()  # the other cells stay empty


def test_the_figure_is_drawn_one_row_per_model(tmp_path, small_models):
    panels = []
    for label in ('t2t_vit', 'resnet'):
        model = small_models[label]
        layers = resolve_layers(model, [0, -1])
        with torch.no_grad():
            maps = extract_maps(model, torch.randn(1, 3, 64, 64), layers)
        layer_maps = []
        for index, fmap in zip(layers, maps):
            flat, outlying = invalid_channels(fmap)
            layer_maps.append(LayerMaps(f'layer {index}', fmap[0], (flat | outlying)[0]))
        panels.append(Panel(label, torch.rand(3, 64, 64), layer_maps))
    draw_figure(panels, tmp_path / 'figure.png', size=100, channels=4, title='test')
    assert Image.open(tmp_path / 'figure.png').size == (300, 2 * 155)  # 1 + 2 columns of 100 px; rows with titles


@pytest.fixture(scope='module')
def model_folders(tmp_path_factory):
    """Three small trained-nothing models as saved folders: a T2T-ViT-7, timm's test ViT and test ResNet."""
    root = tmp_path_factory.mktemp('folders')
    torch.manual_seed(0)
    folders = []
    for name, args in [('t2t_vit_7', dict(img_size=64, embed_dim=32, depth=2, num_heads=2, mlp_ratio=1.,
                                          token_dim=8, num_classes=3)),
                       ('test_vit', TINY_VIT), ('test_resnet', dict(num_classes=3))]:
        model = timm.create_model(name, **args)
        model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, 64, 64), crop_pct=1.)
        save_for_hf(model, root / name, model_args=args, safe_serialization=True)
        folders.append(root / name)
    return folders


@pytest.fixture
def images(tmp_path):
    root = tmp_path / 'images'
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (48 + 8 * i, 64, 3), dtype=np.uint8)).save(root / f'img{i}.png')
    return root


def test_the_command_draws_the_figure_and_measures_every_image(images, model_folders, tmp_path, capsys):
    figure, report = tmp_path / 'fig.png', tmp_path / 'features.json'
    cli_main(['features', str(images), '--weights', *map(str, model_folders), '--channels', '4', '--size', '80',
              '--output', str(figure), '--json', str(report), '--batch-size', '2'])
    printed = capsys.readouterr().out.splitlines()
    measured = json.loads(report.read_text())
    assert measured['images'] == 3 and measured['first_image'] == str(images / 'img0.png')
    assert measured['definition'] == dict(flat_spread=0.01, outlying_peak=10.)
    assert [row['model'] for row in measured['models']] == ['t2t_vit_7', 'test_vit', 'test_resnet']
    paths = sorted(images.glob('*.png'))
    for row, folder in zip(measured['models'], model_folders):
        model = load_model(weights=folder)
        layers = resolve_layers(model)
        transform, _, _ = image_transform(model)
        x = torch.stack([transform(Image.open(p).convert('RGB')) for p in paths])
        expected = measure_features(model, [x], layers)
        assert [layer['index'] for layer in row['layers']] == layers and row['input_size'] == [3, 64, 64]
        for layer, reference in zip(row['layers'], expected):
            assert layer['module'] == reference.module
            numbers = {key: value for key, value in reference.__dict__.items() if key != 'module'}
            assert {key: layer[key] for key in numbers} == pytest.approx(numbers, rel=1e-6)
    table = [line for line in printed if line.startswith(('t2t_vit_7 ', 'test_vit ', 'test_resnet '))]
    assert len(table) == 12 and table[0].split()[:3] == ['t2t_vit_7', '0', 'tokens_to_token.attention1']
    assert printed[-2:] == [f'Wrote {report}.', f'Wrote {figure}.']
    assert Image.open(figure).size == (5 * 80, 3 * 135)


def _error_line(*args) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli_main([str(a) for a in args])
    message = str(exit_info.value.code)
    assert message.startswith('timm-t2t features: error: ') and '\n' not in message, message
    return message[len('timm-t2t features: error: '):]


def test_bad_input_is_one_line(images, model_folders, tmp_path, monkeypatch):
    assert _error_line('features', images, '--models', 'nonsense_net') == (
        "Unknown model 'nonsense_net': not a timm model (timm.list_models() lists them).")
    assert _error_line('features', images, '--models', 'test_vit.bogus') == (
        "test_vit has no pretrained tag 'bogus' (its tags: r160_in1k).")
    assert _error_line('features', images, '--weights', model_folders[0], '--layers', '1', '7') == (
        't2t_vit_7 has no layer 7: it has 4 feature layers, 0 to 3 (tokens_to_token.attention1 to blocks.1), or -4 '
        'to -1 counted from the end.')
    assert _error_line('features', images, '--weights', model_folders[0], '--output', tmp_path / 'fig.gif') == (
        f'Cannot tell the format of {tmp_path / "fig.gif"}: name it .png, .jpg, .jpeg, .pdf, .svg.')
    monkeypatch.setattr(weights, 'load_model', lambda name, weights: torch.nn.Sequential())
    assert _error_line('features', images, '--models', 'anything') == (
        'Sequential has no feature_info, so timm gives no intermediate feature maps of it (neither '
        'forward_intermediates nor features_only).')


def test_unreadable_images_and_missing_matplotlib_are_one_line_before_torch_loads(images, tmp_path):
    (images / 'broken.png').write_text('not an image')
    code = ('import json, sys\nfrom timm_t2t.cli import main\ntry:\n    main(ARGS)\n'
            'except SystemExit as e:\n    print(json.dumps([str(e.code), "torch" in sys.modules]))')
    message, torch_imported = run_python(code.replace('ARGS', repr(['features', str(images), '--models', 'x'])))
    assert message == (f'timm-t2t features: error: {images / "broken.png"} is not an image Pillow can read '
                       f'(UnidentifiedImageError).') and not torch_imported
    (images / 'broken.png').unlink()
    no_matplotlib = ('import importlib.util\nfind_spec = importlib.util.find_spec\nimportlib.util.find_spec = '
                     'lambda name, *a: None if name == "matplotlib" else find_spec(name, *a)\n')
    args = ['features', str(images), '--models', 'x', '--output', str(tmp_path / 'fig.png')]
    message, torch_imported = run_python(no_matplotlib + code.replace('ARGS', repr(args)))
    assert message == ('timm-t2t features: error: Drawing the figure (--output) needs matplotlib: pip install '
                       'matplotlib (or pip install "timm-t2t[bench]").') and not torch_imported


def test_an_output_that_cannot_be_written_is_one_line_before_torch_loads(images, tmp_path):
    (tmp_path / 'taken.json').mkdir()
    code = ('import json, sys\nfrom timm_t2t.cli import main\ntry:\n    main(ARGS)\n'
            'except SystemExit as e:\n    print(json.dumps([str(e.code), "torch" in sys.modules]))')
    args = ['features', str(images), '--models', 'x', '--json', str(tmp_path / 'taken.json')]
    message, torch_imported = run_python(code.replace('ARGS', repr(args)))
    assert message == (f'timm-t2t features: error: Cannot write --json {tmp_path / "taken.json"}: Is a '
                       f'directory.') and not torch_imported


def test_a_16_bit_image_is_measured_as_its_8_bit_copy(model_folders, tmp_path):
    greys = np.random.default_rng(0).integers(0, 256, (2, 64, 64), dtype=np.uint8)
    reports = []
    for name, dtype, scale in (('8-bit', np.uint8, 1), ('16-bit', np.uint16, 257)):  # 16-bit: each value times 257
        (tmp_path / name).mkdir()
        for i, grey in enumerate(greys):
            Image.fromarray(grey.astype(dtype) * scale).save(tmp_path / name / f'img{i}.png')
        cli_main(['features', str(tmp_path / name), '--weights', str(model_folders[0]), '--json',
                  str(tmp_path / f'{name}.json')])
        reports.append(json.loads((tmp_path / f'{name}.json').read_text())['models'])
    assert Image.open(tmp_path / '16-bit' / 'img0.png').mode.startswith('I') and reports[1] == reports[0]


def test_models_and_weights_must_pair_up(images, model_folders, capsys):
    for args, problem in [([], 'name the models (--models) or give their weights (--weights)'),
                          (['--models', 'a', 'b', '--weights', str(model_folders[0])],
                           '--models names 2 and --weights gives 1: give one weights path per model, or leave out '
                           '--models when every weights path is a model folder')]:
        with pytest.raises(SystemExit) as exit_info:
            cli_main(['features', str(images), *args])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.splitlines() == [
            f'timm-t2t features: error: {problem} (see timm-t2t features --help)']


def test_the_digits_model_is_drawn_and_measured_offline(digits_model, tmp_path, capsys):
    paths = [sorted((digits_model.data / 'val' / digit).glob('*.png'))[0] for digit in '0123456789']
    report = tmp_path / 'digits.json'
    cli_main(['features', *map(str, paths), '--weights', str(digits_model.folder), '--json', str(report),
              '--output', str(tmp_path / 'digits.png'), '--size', '64'])
    row, = json.loads(report.read_text())['models']
    assert [(layer['index'], layer['module'], layer['channels'], layer['height']) for layer in row['layers']] == [
        (0, 'tokens_to_token.attention1', 64, 16), (3, 'blocks.1', 256, 4), (5, 'blocks.3', 256, 4),
        (8, 'blocks.6', 256, 4)]
    for layer in row['layers']:
        assert layer['images'] == 10 and 1 <= layer['effective_rank'] <= min(layer['channels'], layer['positions'])
    assert Image.open(tmp_path / 'digits.png').size == (5 * 64, 64 + 55)


@pytest.mark.parametrize('env', [dict(HF_HUB_OFFLINE='1'), dict(HF_ENDPOINT='http://127.0.0.1:9')],
                         ids=['hub-offline', 'hub-unreachable'])
def test_offline_a_timm_models_weights_fail_at_once_naming_it(images, tmp_path, env):
    """timm's own download of another model's weights retries for most of a minute, then says nothing of the model:
    the command fails before, in one line naming the model, its source and what to give instead."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(('HF_', 'TIMM_T2T'))}
    environ.update(env, HF_HOME=str(tmp_path / 'hf'), TORCH_HOME=str(tmp_path / 'torch'))
    done = subprocess.run([sys.executable, '-m', 'timm_t2t', 'features', str(images / 'img0.png'), '--models',
                           'resnet18.a1_in1k'], capture_output=True, text=True, env=environ, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert lines[0].startswith('timm-t2t features: error: Cannot get the pretrained weights of resnet18.a1_in1k: '
                               'timm/resnet18.a1_in1k is not in the local cache and the Hugging Face Hub cannot be '
                               'asked (')
    assert lines[0].endswith('Give every model weights you have, with --weights and one path per model (a model '
                             'folder, or a checkpoint with --models naming its architecture).')


def test_a_matplotlib_that_does_not_import_is_one_line(monkeypatch):
    from timm_t2t import features
    monkeypatch.setitem(sys.modules, 'matplotlib.pyplot', None)  # installed, but its import fails
    with pytest.raises(RuntimeError, match=r'^matplotlib is installed but does not import \(ModuleNotFoundError: '
                                           r'.*\): reinstall it, e.g. pip install --force-reinstall matplotlib\.$'):
        features._pyplot()
