"""Pretrained weights from the Hugging Face Hub and the release files, through huggingface_hub's and torch's own
download code, against a loopback server (HF_ENDPOINT), in fresh interpreters (release files: in this one, with
torch.hub's cache under TORCH_HOME). No mocks; the table of published digests is filled with digests of the files
the tests make. Checkpoints and model folders converted to the Hub's format say only what is known of them."""
import argparse
import dataclasses
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from timm.models._hub import generate_readme, save_for_hf
from timm.models._registry import _model_pretrained_cfgs

import timm_t2t.digests
from benchmarks.reference_t2t import ReferenceT2TViT, reference_config, training_checkpoint
from fresh_python import run_python
from timm_t2t._compat import create_model_from_folder
from timm_t2t.cli import main as cli_main
from timm_t2t.convert import WeightSource, convert_checkpoint, model_card
from timm_t2t.digests import RECORDS_NAME, DigestMismatchError, FileDigest, file_digest
from timm_t2t.hub import hub_repo_id
from timm_t2t.t2t_vit import RELEASE_DIGESTS
from loopback_hub import LoopbackHub

TINY = dict(embed_dim=32, depth=1, num_heads=2, mlp_ratio=1., token_dim=8)  # t2t_vit_7 made small
REPO = 'testorg/t2t_vit_7.in1k'  # the Hub repo of t2t_vit_7's default pretrained tag, under TIMM_T2T_HUB_ORG

LOAD = '''
import io, json, logging, torch, timm
log = io.StringIO()
logging.basicConfig(level=logging.INFO, stream=log, format='%(levelname)s %(message)s')
torch.manual_seed(0)
x = torch.randn(1, {in_chans}, {size}, {size})
try:
    model = timm.create_model({name!r}, pretrained=True, **{kwargs!r}).eval()
    with torch.no_grad():
        out = model(x)
    result = dict(logits=out[0].tolist(), pos_tokens=model.pos_embed.shape[1])
except Exception as e:
    result = dict(error=type(e).__name__, message=str(e))
result['log'] = log.getvalue()
print(json.dumps(result))
'''


def torch_save_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.fixture
def hub():
    with LoopbackHub() as server:
        yield server


@pytest.fixture
def env(hub, tmp_path):
    return dict(
        HF_ENDPOINT=hub.url,
        HF_HOME=str(tmp_path / 'hf'),
        TORCH_HOME=str(tmp_path / 'torch'),
        TIMM_T2T_HUB_ORG='testorg',
        HF_HUB_DISABLE_TELEMETRY='1',
        NO_PROXY='127.0.0.1,localhost',
    )


def _load(env, name='t2t_vit_7', in_chans=3, size=224, model_in_chans=None, **kwargs):
    """Create `name` with pretrained=True in a fresh interpreter and run it on `_inputs(in_chans, size)`."""
    if not name.startswith('hf-hub:'):
        kwargs = {**TINY, **kwargs}
    if model_in_chans is not None:
        kwargs['in_chans'] = model_in_chans
    return run_python(LOAD.format(name=name, kwargs=kwargs, in_chans=in_chans, size=size), env)


def _inputs(in_chans=3, size=224):
    torch.manual_seed(0)
    return torch.randn(1, in_chans, size, size)


def _logits(model, inputs):
    with torch.no_grad():
        return model.eval()(inputs)[0]


def _assert_logits(result, expected):
    assert 'error' not in result, result
    torch.testing.assert_close(torch.tensor(result['logits']), expected, rtol=0, atol=1e-5)


@pytest.fixture
def hub_model(hub, tmp_path):
    """A small t2t_vit_7 published in timm's Hub format as the repo of its default pretrained tag."""
    torch.manual_seed(1)
    model = timm.create_model('t2t_vit_7', **TINY)
    save_for_hf(model, tmp_path / 'repo', safe_serialization=True)
    hub.add_folder(REPO, tmp_path / 'repo')
    return model


def _release_checkpoint(seed: int):
    """A small reference-format training checkpoint, saved, and the reference model with its EMA weights."""
    torch.manual_seed(seed)
    reference = ReferenceT2TViT(tokens_type='performer', **TINY)
    ema = {k: v + 0.01 * torch.randn_like(v) if v.requires_grad else v for k, v in reference.named_parameters()}
    content = torch_save_bytes(training_checkpoint(reference.state_dict(), ema))
    reference.load_state_dict(ema)
    return content, reference


@pytest.fixture
def release(hub):
    """A small reference-format training checkpoint served as a release file; returns (url, expected EMA model)."""
    hub.releases['71.7_T2T_ViT_7.pth.tar'], reference = _release_checkpoint(2)
    return f'{hub.url}/releases/71.7_T2T_ViT_7.pth.tar', reference


def test_first_download_then_cached_loads_make_no_request(hub, env, hub_model):
    expected = _logits(hub_model, _inputs())
    first = _load(env)
    _assert_logits(first, expected)
    assert hub.requests_to(f'/{REPO}/resolve/main/model.safetensors')
    assert f'loading weights from the Hugging Face Hub ({REPO})' in first['log']

    hub.requests.clear()
    _assert_logits(_load(env), expected)
    _assert_logits(_load({**env, 'HF_HUB_OFFLINE': '1'}), expected)
    assert hub.requests == []


def test_missing_repo_falls_back_to_the_release_file(hub, env, release):
    url, reference = release
    result = _load(env, pretrained_cfg_overlay=dict(url=url))
    _assert_logits(result, _logits(reference, _inputs()))  # converted on the fly, EMA weights
    assert hub.requests_to(f'/{REPO}/resolve/')  # the Hub was asked first
    assert f'{REPO} is not on the Hugging Face Hub (RepositoryNotFoundError); falling back' in result['log']
    assert f'loading weights from the official release ({url})' in result['log']

    hub.requests.clear()
    _assert_logits(_load(env, pretrained_cfg_overlay=dict(url=url)), _logits(reference, _inputs()))
    assert not hub.requests_to('/releases/')  # cached by torch.hub


def test_corrupted_hub_file_is_a_clear_error_and_is_not_cached(hub, env, hub_model, tmp_path):
    good = hub.repos[REPO]['model.safetensors']
    hub.repos[REPO]['model.safetensors'] = good[:len(good) // 2]  # complete download of a broken file
    result = _load(env)
    assert result['error'] == 'InvalidCheckpointError'
    assert f'The weights downloaded from the Hugging Face Hub ({REPO}) are not a usable checkpoint' in result['message']
    assert 'removed from the cache' in result['message']
    cached = list((tmp_path / 'hf').rglob('model.safetensors')) + list((tmp_path / 'hf' / 'hub').rglob('blobs/*'))
    assert cached == []

    hub.repos[REPO]['model.safetensors'] = good
    _assert_logits(_load(env), _logits(hub_model, _inputs()))  # downloaded again, not the broken copy


@pytest.mark.parametrize('damage', ['truncated', 'not_a_checkpoint'])
def test_broken_release_file_is_a_clear_error_and_is_not_cached(hub, env, release, tmp_path, damage):
    url, _ = release
    name = '71.7_T2T_ViT_7.pth.tar'
    good = hub.releases[name]
    hub.releases[name] = good[:len(good) // 3] if damage == 'truncated' else torch_save_bytes({'acc': 98.3})
    result = _load(env, pretrained_cfg_overlay=dict(url=url))
    assert result['error'] == 'InvalidCheckpointError'
    assert f'The weights downloaded from {url} are not a usable checkpoint' in result['message']
    assert not list((tmp_path / 'torch').rglob(name))


def test_pretrained_adapts_classes_size_and_channels(env, hub_model):
    result = _load(env, in_chans=1, size=160, model_in_chans=1, num_classes=5, img_size=160)
    assert 'error' not in result, result
    assert len(result['logits']) == 5  # head reset for 5 classes
    assert result['pos_tokens'] == 1 + 10 * 10  # 14 x 14 grid resampled to 10 x 10


def _convert_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, '-m', 'timm_t2t', 'convert', *map(str, args)],
        capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


@pytest.fixture
def release_file(release, hub, tmp_path):
    path = tmp_path / '71.7_T2T_ViT_7.pth.tar'
    path.write_bytes(hub.releases['71.7_T2T_ViT_7.pth.tar'])
    return path


def test_convert_push_to_hub_round_trip_pinned_to_the_pushed_commit(hub, env, release, release_file, tmp_path):
    _, reference = release
    out = tmp_path / 'converted'
    tiny_args = [f'{k}={v}' for k, v in TINY.items()]
    done = _convert_cli(release_file, out, '--model', 't2t_vit_7', '--model-kwargs', *tiny_args,
                        '--push-to-hub', 'someone/t2t-tiny', '--token', 'hf_test', env=env)
    assert done.returncode == 0, done.stderr
    assert 'converted weights reproduce the source logits' in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    assert hub.repos['someone/t2t-tiny'] == {p.name: p.read_bytes() for p in out.iterdir()}  # what was uploaded
    (commit,) = hub.commits['someone/t2t-tiny']
    assert (f'Pushed to {hub.url}/someone/t2t-tiny/commit/{commit} (commit {commit}). Pin it with '
            f"hf_hub_id='someone/t2t-tiny@{commit}', or load timm.create_model('hf-hub:someone/t2t-tiny@{commit}')."
            in done.stdout)
    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 't2t_vit_7' and config['model_args']['embed_dim'] == 32
    card = (out / 'README.md').read_text()
    assert "timm.create_model('hf-hub:someone/t2t-tiny', pretrained=True)" in card
    # a small model under a release file's name is not that release: no reference licence, no paper numbers
    assert 'license: other' in card and '@inproceedings{yuan2021tokens' in card
    assert ', paper:' not in card and 'datasets:' not in card
    assert 'not known to be a released reference file' in done.stderr

    hub.requests.clear()
    _assert_logits(_load(env, name=f'hf-hub:someone/t2t-tiny@{commit}'), _logits(reference, _inputs()))
    assert hub.requested_revisions('someone/t2t-tiny') and set(hub.requested_revisions('someone/t2t-tiny')) == {commit}


def test_convert_cli_error_is_one_line_on_the_terminal(tmp_path):
    done = _convert_cli(tmp_path / 'missing.pth', tmp_path / 'out', '--model', 't2t_vit_7')
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f'timm-t2t convert: error: No checkpoint file or model folder at {tmp_path}/missing.pth.']


def test_convert_cli_errors_name_the_problem(release_file, tmp_path):
    text_file = tmp_path / 'notes.txt'
    text_file.write_text('not a checkpoint')
    (tmp_path / 'full').mkdir()
    (tmp_path / 'full' / 'x').write_text('x')
    cases = [
        ((release_file, tmp_path / 'o2', '--model', 't2t_vit_99'), "Unknown T2T-ViT variant 't2t_vit_99'"),
        ((release_file, tmp_path / 'o3', '--model', 't2t_vit_7.in22k'), "Unknown pretrained tag 't2t_vit_7.in22k'"),
        ((text_file, tmp_path / 'o4', '--model', 't2t_vit_7'),
         'notes.txt is not a readable checkpoint: not a PyTorch or safetensors weight file.'),
        ((release_file, tmp_path / 'o5', '--model', 't2t_vit_14'), 'does not fit t2t_vit_14: 143 keys missing'),
        ((release_file, tmp_path / 'full', '--model', 't2t_vit_7'), 'already exists and is not an empty directory'),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            cli_main(['convert', *map(str, args)])
        error = str(exit_info.value.code)
        assert error.startswith('timm-t2t convert: error: ') and message in error and '\n' not in error, error


def test_convert_help_explains_every_flag():
    done = _convert_cli('--help')
    assert done.returncode == 0
    for flag in ('SOURCE', 'OUT_DIR', '--model', '--model-kwargs', '--mean', '--std', '--crop-pct',
                 '--interpolation', '--label-names', '--no-ema', '--push-to-hub', '--private', '--token'):
        assert flag in done.stdout


def test_model_card_of_a_released_configuration():
    model = timm.create_model('t2t_vit_14.in1k_ft_cifar100')
    source = WeightSource('cirfar100_t2t-vit-14_88.4.pth', model.pretrained_cfg['url'], 'its file name', 'reference')
    card = model_card(model, source, 'my-org/t2t_vit_14.in1k_ft_cifar100')
    stats = card['details']['Model Stats']
    assert stats['Params (M), paper'] == 21.5 and stats['GMACs at 224 x 224, paper'] == 4.8
    assert stats['Top-1 accuracy (%), paper'] == 88.4 and stats['Params (M)'] == 21.1  # a 100-class head
    assert card['details']['Dataset'] == 'CIFAR-100'
    assert card['details']['Weights'] == model.pretrained_cfg['url']
    assert "timm.create_model('hf-hub:my-org/t2t_vit_14.in1k_ft_cifar100', pretrained=True)" in card['usage']
    readme = generate_readme(card, 'my-org/t2t_vit_14.in1k_ft_cifar100')
    assert 'datasets:\n- cifar-100' in readme and 'license: bsd-3-clause-clear' in readme
    assert ('the weights released with the reference implementation (https://github.com/yitu-opensource/T2T-ViT), '
            'converted to timm from `cirfar100_t2t-vit-14_88.4.pth`, the official release file (known by its file '
            'name)') in readme


def test_model_card_of_a_timm_checkpoint_claims_nothing_of_the_release():
    model = timm.create_model('t2t_vit_7', num_classes=10)
    readme = generate_readme(model_card(model, WeightSource('model_best.pth.tar', key_format='timm')), 't2t_vit_7')
    assert 'license: other' in readme and 'bsd' not in readme
    assert ('T2T-ViT (t2t_vit_7), a Tokens-to-Token Vision Transformer, with weights converted to timm from a timm '
            "checkpoint (`model_best.pth.tar`), not known to be a released reference file: the paper's numbers do "
            'not describe them.') in readme
    assert '- **License:** not known: state the licence of these weights here and in the `license` field above' \
        in readme
    assert 'datasets:' not in readme and ', paper:' not in readme and 'reference format' not in readme


def _reference_checkpoint(path: Path, img_size: int = 224) -> Path:
    torch.manual_seed(0)
    reference = ReferenceT2TViT(img_size=img_size, **reference_config('t2t_vit_7'))
    torch.save(training_checkpoint(reference.state_dict()), path)
    return path


def _timm_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    torch.save({'state_dict': timm.create_model('t2t_vit_7').state_dict(), 'epoch': 3}, path)
    return path


_T2T_VIT_7_URL = timm.models.get_pretrained_cfg('t2t_vit_7.in1k').url
PAPER_NAME = 'Tokens-to-Token ViT: Training Vision Transformers from Scratch on ImageNet'


@pytest.mark.parametrize('file, make, model_name, publish, known_by', [
    ('checkpoint.pth.tar', _reference_checkpoint, 't2t_vit_7.in1k', None,
     'the tag it was converted as, t2t_vit_7.in1k'),
    ('71.7_T2T_ViT_7.pth.tar', _reference_checkpoint, 't2t_vit_7', None, 'its file name'),
    ('mine.pth.tar', _reference_checkpoint, 't2t_vit_7', 'its digest', 'its published SHA-384 digest'),
    ('checkpoint.pth.tar', lambda p: _reference_checkpoint(p, 160), 't2t_vit_7.in1k', None, None),  # not its size
    ('checkpoint.pth.tar', _reference_checkpoint, 't2t_vit_7.in1k', 'another digest', None),  # not its digest
    ('71.7_T2T_ViT_7.pth.tar', _timm_checkpoint, 't2t_vit_7.in1k', None, None),  # timm's format: no release is
    ('checkpoint.pth.tar', _reference_checkpoint, 't2t_vit_7', None, None),  # nothing says it is the release
])
def test_card_claims_the_release_only_for_a_released_file(tmp_path, monkeypatch, file, make, model_name, publish,
                                                          known_by):
    path = make(tmp_path / file)
    if publish:
        digest = file_digest(path)
        monkeypatch.setitem(RELEASE_DIGESTS, _T2T_VIT_7_URL, digest if publish == 'its digest' else FileDigest(
            digest.size, '0' * 96))
    folder, diff = convert_checkpoint(path, tmp_path / 'out', model_name)
    assert diff <= 1e-5
    card = (folder / 'README.md').read_text()
    released = known_by is not None
    assert ('license: bsd-3-clause-clear' in card, 'license: other' in card) == (released, not released)
    assert ('Top-1 accuracy (%), paper: 71.7' in card) == released
    config = json.loads((folder / 'config.json').read_text())['pretrained_cfg']  # says what the card says
    claims = {key: config.get(key) for key in ('tag', 'license', 'paper_ids', 'paper_name', 'origin_url')}
    if released:
        assert claims == dict(tag='in1k', license='bsd-3-clause-clear', paper_ids='arXiv:2101.11986',
                              paper_name=PAPER_NAME, origin_url='https://github.com/yitu-opensource/T2T-ViT')
    else:
        assert claims == dict(tag=None, license='other', paper_ids=None, paper_name=None, origin_url=None)
    if released:
        assert f'from `{file}`, the official release file (known by {known_by})' in card
        assert f'- **Weights:** {_T2T_VIT_7_URL}' in card
    else:
        kind = 'a timm checkpoint' if make is _timm_checkpoint else \
            "a checkpoint in the reference implementation's format"
        assert f'with weights converted to timm from {kind} (`{file}`), not known to be a released reference file' \
            in card


TINY_ARGS = [f'{k}={v}' for k, v in TINY.items()]


def _ten_class_checkpoint(path: Path, **args) -> Path:
    """A small t2t_vit_7 for 10 classes at 64 px as a training checkpoint, with the training arguments `args` (an
    argparse.Namespace, as timm's CheckpointSaver stores them) if any."""
    torch.manual_seed(0)
    model = timm.create_model('t2t_vit_7', img_size=64, num_classes=10, **TINY)
    checkpoint = {'state_dict': model.state_dict(), 'epoch': 5}
    if args:
        checkpoint['args'] = argparse.Namespace(**args)
    torch.save(checkpoint, path)
    return path


def _saved_folder(path: Path) -> Path:
    """A small t2t_vit_7 for 3 classes saved as a model folder with its own preprocessing and label names (and the
    default tag's claims in its config, which a folder cannot be known to deserve)."""
    torch.manual_seed(0)
    args = dict(img_size=64, num_classes=3, **TINY)
    model = timm.create_model('t2t_vit_7', **args)
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, 64, 64), num_classes=3, mean=(0.5, 0.5, 0.5),
                                std=(0.25, 0.25, 0.25), crop_pct=1., interpolation='bilinear')
    save_for_hf(model, path, model_config=dict(label_names=['cat', 'dog', 'bird']), model_args=args,
                safe_serialization=True)
    return path


def _convert_here(capsys, *args) -> list:
    """Run `timm-t2t convert` in this interpreter; the lines it wrote on stderr."""
    cli_main(['convert', *map(str, args)])
    return capsys.readouterr().err.splitlines()


def _preprocessing(folder: Path) -> dict:
    cfg = json.loads((folder / 'config.json').read_text())['pretrained_cfg']
    return {key: cfg[key] for key in ('mean', 'std', 'crop_pct', 'interpolation')}


def test_convert_carries_the_preprocessing_a_timm_training_checkpoint_records(tmp_path, capsys):
    """train.py's arguments: the settings given are the config's, those left unset (None, '') the model's own."""
    path = _ten_class_checkpoint(tmp_path / 'last.pth.tar', model='t2t_vit_7', epochs=6, mean=[0.5, 0.5, 0.5],
                                 std=None, crop_pct=1.0, interpolation='')
    errors = _convert_here(capsys, path, tmp_path / 'out', '--model', 't2t_vit_7', '--model-kwargs', *TINY_ARGS)
    assert _preprocessing(tmp_path / 'out') == dict(
        mean=[0.5, 0.5, 0.5], std=[0.229, 0.224, 0.225], crop_pct=1.0, interpolation='bicubic')
    assert not [line for line in errors if 'preprocessing' in line]


def test_convert_of_unknown_preprocessing_warns_and_takes_the_options(tmp_path, capsys):
    """A checkpoint of 10 classes recording no preprocessing (the digits experiment's arguments name none): one
    warning line; the options then make the config, with the label names."""
    path = _ten_class_checkpoint(tmp_path / 'last.pth.tar', model='t2t_vit_7', img_size=64, epochs=6)
    common = ('--model', 't2t_vit_7', '--model-kwargs', *TINY_ARGS)
    errors = _convert_here(capsys, path, tmp_path / 'guessed', *common)
    assert [line for line in errors if 'preprocessing' in line] == [
        f"{path} records no preprocessing, and its 10 classes are not ImageNet's: {tmp_path / 'guessed'}/config.json "
        f"gives the model config's (mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225), crop_pct 0.9); if it "
        f"was trained otherwise, convert again with --mean, --std and --crop-pct."]

    digits = [str(d) for d in range(10)]
    errors = _convert_here(capsys, path, tmp_path / 'told', *common, '--mean', '0.5', '0.5', '0.5', '--std', '0.5',
                           '0.4', '0.3', '--crop-pct', '1', '--interpolation', 'bilinear', '--label-names', *digits)
    assert _preprocessing(tmp_path / 'told') == dict(
        mean=[0.5, 0.5, 0.5], std=[0.5, 0.4, 0.3], crop_pct=1.0, interpolation='bilinear')
    assert not [line for line in errors if 'preprocessing' in line]
    assert create_model_from_folder(tmp_path / 'told').pretrained_cfg['label_names'] == digits


@pytest.mark.parametrize('args, problem', [
    (['--mean', '0.5', '0.5'], 'argument --mean: expected 3 values (one per input channel of the model) or 1 (for '
                               'every channel), got 2'),
    (['--crop-pct', '1.5'], "argument --crop-pct: expected a fraction of the resized image in (0, 1], got '1.5'"),
    (['--label-names', 'cat', 'dog'], 'argument --label-names: expected 10 names (one per class of the model), '
                                      'got 2'),
])
def test_convert_options_that_do_not_fit_are_usage_errors(tmp_path, capsys, args, problem):
    path = _ten_class_checkpoint(tmp_path / 'last.pth.tar')
    with pytest.raises(SystemExit) as exit_info:
        cli_main(['convert', str(path), str(tmp_path / 'out'), '--model', 't2t_vit_7', '--model-kwargs', *TINY_ARGS,
                  *args])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f'timm-t2t convert: error: {problem} (see timm-t2t convert --help)']
    assert not (tmp_path / 'out').exists()


def test_a_checkpoint_file_needs_its_variant_named(tmp_path, capsys):
    path = _ten_class_checkpoint(tmp_path / 'last.pth.tar')
    with pytest.raises(SystemExit) as exit_info:
        cli_main(['convert', str(path), str(tmp_path / 'out')])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f'timm-t2t convert: error: --model is needed for a checkpoint file such as {path} (a model folder names its '
        f'own architecture) (see timm-t2t convert --help)']


def test_convert_takes_a_model_folder_with_its_preprocessing_and_labels(tmp_path, capsys):
    folder = _saved_folder(tmp_path / 'runs' / 't2t_vit_7')
    errors = _convert_here(capsys, folder, tmp_path / 'out')
    assert _preprocessing(tmp_path / 'out') == _preprocessing(folder)
    config = json.loads((tmp_path / 'out' / 'config.json').read_text())
    assert config['label_names'] == ['cat', 'dog', 'bird']
    assert config['pretrained_cfg']['license'] == 'other' and 'tag' not in config['pretrained_cfg']
    assert 'with weights converted to timm from a timm model folder (`t2t_vit_7`), not known to be a released ' \
           'reference file' in (tmp_path / 'out' / 'README.md').read_text()
    assert not [line for line in errors if 'preprocessing' in line]
    inputs = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(_logits(create_model_from_folder(tmp_path / 'out'), inputs),
                               _logits(create_model_from_folder(folder), inputs), rtol=0, atol=0)


def test_convert_of_a_folder_names_what_does_not_fit(tmp_path):
    folder = _saved_folder(tmp_path / 't2t_vit_7')
    resnet = tmp_path / 'resnet18'
    resnet.mkdir()
    (resnet / 'config.json').write_text(json.dumps(dict(architecture='resnet18', num_classes=10, pretrained_cfg={})))
    cases = [
        ((folder, '--model', 't2t_vit_7.in1k'),
         f'{folder} is a model folder, which carries its own config: leave out the pretrained tag, or --model '
         f'altogether.'),
        ((folder, '--model', 't2t_vit_14'), f'{folder} holds a t2t_vit_7, not a t2t_vit_14; leave out the model name.'),
        ((folder, '--model-kwargs', 'depth=2'),
         f'{folder} is a saved model folder, which names its own arguments: leave out the model arguments.'),
        ((resnet,), f'{resnet} holds a resnet18, not a T2T-ViT.'),
        ((tmp_path,), f'{tmp_path} is a folder without config.json: not a saved model folder.'),
    ]
    for (source, *args), message in cases:
        with pytest.raises(SystemExit) as exit_info:
            cli_main(['convert', str(source), str(tmp_path / 'out'), *map(str, args)])
        assert str(exit_info.value.code) == f'timm-t2t convert: error: {message}'
    assert not (tmp_path / 'out').exists()


def _closed_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_unreachable_sources_fail_fast_naming_each(tmp_path):
    """No retries against hosts that refuse: one line naming the Hub and the release file, and why."""
    endpoint = f'http://127.0.0.1:{_closed_port()}'
    env = dict(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / 'hf'), TORCH_HOME=str(tmp_path / 'torch'),
               TIMM_T2T_HUB_ORG='testorg', NO_PROXY='127.0.0.1')
    url = f'{endpoint}/releases/71.7_T2T_ViT_7.pth.tar'
    start = time.perf_counter()
    result = _load(env, pretrained_cfg_overlay=dict(url=url))
    assert time.perf_counter() - start < 30  # an interpreter start and a model build; huggingface_hub retried ~50 s
    assert result['error'] == 'WeightsUnavailableError'
    port = endpoint.rsplit(':', 1)[1]
    assert result['message'].startswith(
        f'Cannot get the pretrained weights of t2t_vit_7.in1k: testorg/t2t_vit_7.in1k is not in the local cache and the '
        f'Hugging Face Hub cannot be asked (127.0.0.1:{port}: Connection refused); the release file {url} is not '
        f'cached and cannot be downloaded (127.0.0.1:{port}: Connection refused). Connect to the internet')
    assert '\n' not in result['message']


def test_offline_mode_uses_the_caches_only(env, hub, release):
    url, reference = release
    offline = {**env, 'HF_HUB_OFFLINE': '1'}
    result = _load(offline, pretrained_cfg_overlay=dict(url=url))
    assert result['error'] == 'WeightsUnavailableError' and 'HF_HUB_OFFLINE is set: no downloads' in result['message']
    assert hub.requests == []
    _load(env, pretrained_cfg_overlay=dict(url=url))  # online: the release file lands in torch.hub's cache
    hub.requests.clear()
    _assert_logits(_load(offline, pretrained_cfg_overlay=dict(url=url)), _logits(reference, _inputs()))
    assert hub.requests == []


# --- digests of release files, checked in this interpreter (torch.hub's cache under TORCH_HOME) ---

RELEASE_NAME = '71.7_T2T_ViT_7.pth.tar'


@pytest.fixture
def release_cache(tmp_path, monkeypatch) -> Path:
    """torch.hub's checkpoint folder, where release files are cached, for downloads made in this interpreter."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.setenv('NO_PROXY', '127.0.0.1,localhost')
    return tmp_path / 'torch' / 'hub' / 'checkpoints'


def _from_release(url: str) -> torch.nn.Module:
    """The small t2t_vit_7 with pretrained weights from the release file at `url` (no Hub repo)."""
    return timm.create_model('t2t_vit_7', pretrained=True, pretrained_cfg_overlay=dict(url=url, hf_hub_id=None), **TINY)


def _digest(content: bytes) -> FileDigest:
    return FileDigest(len(content), hashlib.sha384(content).hexdigest())


def _records(cache: Path) -> dict:
    return json.loads((cache / RECORDS_NAME).read_text())


def test_the_published_digest_of_t2t_vit_14_is_the_openvino_one():
    url = timm.models.get_pretrained_cfg('t2t_vit_14.in1k').url
    assert url == 'https://github.com/yitu-opensource/T2T-ViT/releases/download/main/81.5_T2T_ViT_14.pth.tar'
    assert RELEASE_DIGESTS[url] == FileDigest(
        86_212_823, '98c8ae06a1e9997f3e83ad2dfbac49985bf7bd7723eb64e4b8462338163be02657998f0bd9f8997367417003caeaf7a1')


def test_release_file_matching_its_published_digest_loads_and_is_hashed_once(hub, release, release_cache, monkeypatch):
    url, reference = release
    published = _digest(hub.releases[RELEASE_NAME])
    monkeypatch.setitem(RELEASE_DIGESTS, url, published)
    hashed = []
    monkeypatch.setattr(
        timm_t2t.digests, 'file_digest', lambda path: hashed.append(Path(path).name) or file_digest(path))

    torch.testing.assert_close(_logits(_from_release(url), _inputs()), _logits(reference, _inputs()), rtol=0, atol=1e-5)
    assert hashed == [f'.{RELEASE_NAME}.unchecked']  # the download, checked before it entered the cache
    assert sorted(p.name for p in release_cache.iterdir()) == [RELEASE_NAME, RECORDS_NAME]
    assert {k: _records(release_cache)[url][k] for k in ('size', 'sha384')} == dataclasses.asdict(published)

    _from_release(url)
    assert len(hashed) == 1  # cached and unchanged since it matched: not hashed again
    cached = release_cache / RELEASE_NAME
    os.utime(cached, ns=(cached.stat().st_atime_ns, cached.stat().st_mtime_ns + 10 ** 9))
    _from_release(url)
    assert hashed[1:] == [RELEASE_NAME]  # touched: hashed again, and it still matches


def _tampered(content: bytes, damage: str) -> bytes:
    if damage == 'other bytes':
        changed = bytearray(content)
        changed[len(content) // 2] ^= 0xFF
        return bytes(changed)
    return content + b'\0'


@pytest.mark.parametrize('damage', ['other bytes', 'other size'])
def test_release_file_unlike_its_published_digest_is_refused_and_not_cached(hub, release, release_cache, monkeypatch,
                                                                            damage):
    url, _ = release
    good = hub.releases[RELEASE_NAME]
    monkeypatch.setitem(RELEASE_DIGESTS, url, _digest(good))
    hub.releases[RELEASE_NAME] = bad = _tampered(good, damage)
    with pytest.raises(DigestMismatchError) as error:
        _from_release(url)
    found = f'sha384 {_digest(good).sha384}, found sha384 {_digest(bad).sha384}' if damage == 'other bytes' else \
        f'{len(good):,} bytes, found {len(bad):,} bytes'
    assert str(error.value) == (
        f'The weight file {url} does not match its published digest: expected {found}. It was removed from the cache.')
    assert list(release_cache.iterdir()) == []


def test_cached_release_file_changed_on_disk_is_refused_and_evicted(hub, release, release_cache, monkeypatch):
    url, reference = release
    good = hub.releases[RELEASE_NAME]
    monkeypatch.setitem(RELEASE_DIGESTS, url, _digest(good))
    _from_release(url)
    cached = release_cache / RELEASE_NAME
    cached.write_bytes(_tampered(good, 'other bytes'))
    os.utime(cached, ns=(cached.stat().st_atime_ns, cached.stat().st_mtime_ns + 10 ** 9))
    with pytest.raises(DigestMismatchError, match='does not match its published digest: expected sha384'):
        _from_release(url)
    assert not cached.exists()

    hub.requests.clear()
    torch.testing.assert_close(_logits(_from_release(url), _inputs()), _logits(reference, _inputs()), rtol=0, atol=1e-5)
    assert hub.requests_to(f'/releases/{RELEASE_NAME}')  # downloaded again, and it matches


def test_first_download_is_recorded_and_a_later_change_refused(hub, release, release_cache):
    url, reference = release
    first = _digest(hub.releases[RELEASE_NAME])
    assert url not in RELEASE_DIGESTS
    _from_release(url)
    record = _records(release_cache)[url]
    assert (record['size'], record['sha384']) == (first.size, first.sha384)
    assert re.fullmatch(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ', record['first_download'])

    (release_cache / RELEASE_NAME).unlink()  # the cache is cleared, and upstream the file is replaced
    hub.releases[RELEASE_NAME] = changed = _release_checkpoint(5)[0]  # a checkpoint as good, of the same size
    assert len(changed) == first.size
    with pytest.raises(DigestMismatchError) as error:
        _from_release(url)
    records = release_cache / RECORDS_NAME
    assert str(error.value) == (
        f'The weight file {url} does not match the digest of its first download on {record["first_download"]} '
        f'(recorded in {records}): expected sha384 {first.sha384}, found sha384 {_digest(changed).sha384}. It was '
        f'removed from the cache. If it was changed on purpose, delete its entry in {records}.')
    assert sorted(p.name for p in release_cache.iterdir()) == [RECORDS_NAME]


def test_unreadable_digest_records_are_one_clear_error(hub, release, release_cache):
    url, _ = release
    release_cache.mkdir(parents=True)
    (release_cache / RECORDS_NAME).write_text('{"truncated')
    with pytest.raises(ValueError) as error:
        _from_release(url)
    assert str(error.value).startswith(f'Cannot read the weight digest records {release_cache / RECORDS_NAME} (')
    assert str(error.value).endswith('); delete the file to record the digests of the next downloads anew.')
    assert '\n' not in str(error.value)


def test_info_shows_the_digest_and_pin_of_a_tag(hub, release, release_cache, monkeypatch, capsys):
    url, _ = release
    commit = 'c0ffee' * 6 + 'c0ff'
    cfg = _model_pretrained_cfgs['t2t_vit_7.in1k']
    monkeypatch.setitem(_model_pretrained_cfgs, 't2t_vit_7.in1k',
                        dataclasses.replace(cfg, url=url, hf_hub_id=f'testorg/t2t_vit_7.in1k@{commit}'))
    cli_main(['info', 't2t_vit_7.in1k'])
    text = capsys.readouterr().out
    assert (f'weights: Hugging Face Hub testorg/t2t_vit_7.in1k@{commit} (pinned to commit {commit}), falling back to '
            f'{url}\n         release file digest: no published digest (first download not recorded yet: it will be, '
            f'and later copies checked against it)\n') in text

    _from_release(url)
    first = _digest(hub.releases[RELEASE_NAME])
    when = _records(release_cache)[url]['first_download']
    cli_main(['info', 't2t_vit_7.in1k', '--json'])
    weights = json.loads(capsys.readouterr().out)['weights']
    assert (weights['hub_revision'], weights['hub_pinned']) == (commit, True)
    assert weights['release_digest'] == dict(published=False, size=first.size, sha384=first.sha384, first_download=when)
    cli_main(['info', 't2t_vit_7.in1k'])
    assert (f'release file digest: no published digest (first download recorded: sha384 {first.sha384}, '
            f'{first.size:,} bytes, {when})') in capsys.readouterr().out


def test_a_pin_is_a_commit(monkeypatch):
    monkeypatch.setenv('TIMM_T2T_HUB_ORG', 'testorg')
    assert hub_repo_id('t2t_vit_7.in1k') == 'testorg/t2t_vit_7.in1k'
    assert hub_repo_id('t2t_vit_7.in1k', 'ab' * 20) == f'testorg/t2t_vit_7.in1k@{"ab" * 20}'
    with pytest.raises(ValueError) as error:
        hub_repo_id('t2t_vit_7.in1k', 'main')
    assert str(error.value) == "t2t_vit_7.in1k: a pinned Hub revision must be a commit id (40 hex digits), got 'main'."


def test_pinned_revision_is_the_one_downloaded_and_looked_up(hub, env, hub_model, tmp_path):
    (pinned,) = hub.commits[REPO]
    torch.manual_seed(3)
    newer = timm.create_model('t2t_vit_7', **TINY)
    save_for_hf(newer, tmp_path / 'newer', safe_serialization=True)
    hub.add_folder(REPO, tmp_path / 'newer')  # main moves on
    pin = dict(pretrained_cfg_overlay=dict(hf_hub_id=f'{REPO}@{pinned}'))

    result = _load(env, **pin)
    _assert_logits(result, _logits(hub_model, _inputs()))
    assert f'loading weights from the Hugging Face Hub ({REPO}@{pinned})' in result['log']
    assert set(hub.requested_revisions(REPO)) == {pinned}
    hub.requests.clear()
    _assert_logits(_load(env), _logits(newer, _inputs()))  # unpinned: main
    assert set(hub.requested_revisions(REPO)) == {'main'}

    hub.requests.clear()
    offline = {**env, 'HF_HUB_OFFLINE': '1'}
    _assert_logits(_load(offline, **pin), _logits(hub_model, _inputs()))  # the cache, at the pinned commit
    _assert_logits(_load(offline), _logits(newer, _inputs()))
    assert hub.requests == []
