"""Pretrained weights from the Hugging Face Hub and the release files, through huggingface_hub's and torch's own
download code, against a loopback server (HF_ENDPOINT), in fresh interpreters. No mocks."""
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from timm.models._hub import generate_readme, save_for_hf

from benchmarks.reference_t2t import ReferenceT2TViT, reference_config, training_checkpoint
from fresh_python import run_python
from timm_t2t.cli import main as cli_main
from timm_t2t.convert import convert_checkpoint, model_card
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


@pytest.fixture
def release(hub):
    """A small reference-format training checkpoint served as a release file; returns (url, expected EMA model)."""
    torch.manual_seed(2)
    reference = ReferenceT2TViT(tokens_type='performer', **TINY)
    ema = {k: v + 0.01 * torch.randn_like(v) if v.requires_grad else v for k, v in reference.named_parameters()}
    hub.releases['71.7_T2T_ViT_7.pth.tar'] = torch_save_bytes(training_checkpoint(reference.state_dict(), ema))
    reference.load_state_dict(ema)
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


def test_convert_push_to_hub_round_trip(hub, env, release, release_file, tmp_path):
    _, reference = release
    out = tmp_path / 'converted'
    tiny_args = [f'{k}={v}' for k, v in TINY.items()]
    done = _convert_cli(release_file, out, '--model', 't2t_vit_7', '--model-kwargs', *tiny_args,
                        '--push-to-hub', 'someone/t2t-tiny', '--token', 'hf_test', env=env)
    assert done.returncode == 0, done.stderr
    assert 'converted weights reproduce the source logits' in done.stdout
    assert f'Pushed to {hub.url}/someone/t2t-tiny/commit/' in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    assert hub.repos['someone/t2t-tiny'] == {p.name: p.read_bytes() for p in out.iterdir()}  # what was uploaded
    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 't2t_vit_7' and config['model_args']['embed_dim'] == 32
    card = (out / 'README.md').read_text()
    assert "timm.create_model('hf-hub:someone/t2t-tiny', pretrained=True)" in card
    assert 'license: bsd-3-clause-clear' in card and '@inproceedings{yuan2021tokens' in card

    _assert_logits(_load(env, name='hf-hub:someone/t2t-tiny'), _logits(reference, _inputs()))


def test_convert_cli_error_is_one_line_on_the_terminal(tmp_path):
    done = _convert_cli(tmp_path / 'missing.pth', tmp_path / 'out', '--model', 't2t_vit_7')
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f'timm-t2t convert: error: No checkpoint file at {tmp_path}/missing.pth.']


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
    for flag in ('checkpoint', 'output_dir', '--model', '--model-kwargs', '--no-ema', '--push-to-hub', '--private',
                 '--token'):
        assert flag in done.stdout


def test_model_card_of_a_released_configuration():
    model = timm.create_model('t2t_vit_14.in1k_ft_cifar100')
    card = model_card(model, 'my-org/t2t_vit_14.in1k_ft_cifar100')
    stats = card['details']['Model Stats']
    assert stats['Params (M), paper'] == 21.5 and stats['GMACs at 224 x 224, paper'] == 4.8
    assert stats['Top-1 accuracy (%), paper'] == 88.4 and stats['Params (M)'] == 21.1  # a 100-class head
    assert card['details']['Dataset'] == 'CIFAR-100'
    assert "timm.create_model('hf-hub:my-org/t2t_vit_14.in1k_ft_cifar100', pretrained=True)" in card['usage']
    readme = generate_readme(card, 'my-org/t2t_vit_14.in1k_ft_cifar100')
    assert 'datasets:\n- cifar-100' in readme and 'license: bsd-3-clause-clear' in readme


@pytest.mark.parametrize('img_size, quoted', [(224, True), (160, False)])
def test_card_quotes_the_paper_only_for_a_released_configuration(tmp_path, img_size, quoted):
    torch.manual_seed(0)
    reference = ReferenceT2TViT(img_size=img_size, **reference_config('t2t_vit_7'))
    path = tmp_path / 'checkpoint.pth.tar'
    torch.save(training_checkpoint(reference.state_dict()), path)
    folder, diff = convert_checkpoint(path, tmp_path / 'out', 't2t_vit_7.in1k')
    assert diff <= 1e-5
    card = (folder / 'README.md').read_text()
    assert f'Image size: {img_size} x {img_size}' in card
    assert ('Top-1 accuracy (%), paper: 71.7' in card) == quoted
    assert ('weights released with the reference implementation' in card) == quoted


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
