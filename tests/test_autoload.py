"""The installed package registers its models whenever timm is imported, in fresh interpreters."""
import pathlib
import subprocess
import sys
import zipfile

import pytest

from fresh_python import run_python

EXPECTED = sorted([
    't2t_vit_7', 't2t_vit_10', 't2t_vit_12', 't2t_vit_14', 't2t_vit_19', 't2t_vit_24',
    't2t_vit_t_14', 't2t_vit_t_19', 't2t_vit_t_24', 't2t_vit_14_resnext', 't2t_vit_14_wide',
    't2t_vit_14_se', 't2t_vit_dense', 't2t_vit_16_ghost', 't2t_vit_14_wo_t2t', 't2t_vit_c_14', 't2t_vit_d768_4',
])


def _run(code: str, **env):
    return run_python(code, env)


LIST_MODELS = 'import json, sys, timm; print(json.dumps(dict(models=timm.list_models("t2t_vit*"), ' \
              'plugin="timm_t2t" in sys.modules)))'


def test_importing_timm_registers_the_models():
    result = _run(LIST_MODELS)
    assert sorted(result['models']) == EXPECTED
    assert result['plugin']


def test_interpreter_start_does_not_import_timm_or_torch():
    result = _run('import json, sys; print(json.dumps({m: m in sys.modules for m in ("timm", "torch", "timm_t2t")}))')
    assert result == {'timm': False, 'torch': False, 'timm_t2t': False}


def test_create_model_in_a_plain_script():
    code = 'import json, timm, torch\n' \
           'model = timm.create_model("t2t_vit_7", num_classes=3).eval()\n' \
           'print(json.dumps(list(model(torch.randn(1, 3, 224, 224)).shape)))'
    assert _run(code) == [1, 3]


def test_env_var_turns_it_off_and_import_still_registers():
    assert _run(LIST_MODELS, TIMM_T2T_AUTOLOAD='0') == {'models': [], 'plugin': False}
    code = 'import json, timm, timm_t2t; print(json.dumps(sorted(timm.list_models("t2t_vit*"))))'
    assert _run(code, TIMM_T2T_AUTOLOAD='0') == EXPECTED


@pytest.mark.parametrize('value, armed', [
    ('0', False), ('false', False), (' Off ', False), ('no', False), ('1', True), ('', True), (None, True)])
def test_env_var_values(monkeypatch, value, armed):
    """Which values of the variable turn the start-up hook off (what it then does is tested above)."""
    import _timm_t2t_autoload as hook
    calls = []
    monkeypatch.setattr(hook, 'register_with_timm', lambda: calls.append(True))
    if value is None:
        monkeypatch.delenv(hook.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(hook.ENV_VAR, value)
    hook.install()
    assert bool(calls) == armed


def test_importing_the_package_first_works():
    code = 'import json, timm_t2t, timm; print(json.dumps(sorted(timm.list_models("t2t_vit*"))))'
    assert _run(code) == EXPECTED


def test_registry_metadata():
    code = 'import json, timm\n' \
           'print(json.dumps(dict(pretrained=timm.list_pretrained("t2t_vit*"),\n' \
           '    module=sorted(timm.list_models(module="t2t_vit")),\n' \
           '    cfg=timm.models.get_pretrained_cfg("t2t_vit_14.in1k_384").to_dict(),\n' \
           '    cifar=timm.models.get_pretrained_cfg("t2t_vit_19.in1k_ft_cifar100").to_dict())))'
    result = _run(code)
    assert result['module'] == EXPECTED
    assert sorted(result['pretrained']) == sorted([
        't2t_vit_7.in1k', 't2t_vit_10.in1k', 't2t_vit_12.in1k', 't2t_vit_14.in1k', 't2t_vit_14.in1k_384',
        't2t_vit_14.in1k_ft_cifar10', 't2t_vit_14.in1k_ft_cifar100', 't2t_vit_19.in1k', 't2t_vit_19.in1k_ft_cifar10',
        't2t_vit_19.in1k_ft_cifar100', 't2t_vit_24.in1k', 't2t_vit_24.tl_in1k',
        't2t_vit_t_14.in1k', 't2t_vit_t_19.in1k', 't2t_vit_t_24.in1k',
    ])
    cfg = result['cfg']
    assert cfg['input_size'] == [3, 384, 384] and cfg['crop_pct'] == 0.9 and cfg['interpolation'] == 'bicubic'
    assert cfg['url'] == 'https://github.com/yitu-opensource/T2T-ViT/releases/download/main/83.3_T2T_ViT_14.pth.tar'
    assert cfg['hf_hub_id'] == 'timm-t2t/t2t_vit_14.in1k_384'
    assert cfg['paper_ids'] == 'arXiv:2101.11986' and cfg['first_conv'] == 'tokens_to_token.attention1.attn.qkv'
    cifar = result['cifar']
    assert cifar['num_classes'] == 100 and cifar['url'].endswith('/cifar100_t2t-vit-19_89.0.pth')
    assert cifar['mean'] == [0.4914, 0.4822, 0.4465] and cifar['crop_pct'] == 1.0


def test_hub_organisation_is_a_setting():
    code = 'import json, timm; print(json.dumps(timm.models.get_pretrained_cfg("t2t_vit_t_24.in1k").hf_hub_id))'
    assert _run(code, TIMM_T2T_HUB_ORG='my-org') == 'my-org/t2t_vit_t_24.in1k'


def test_looking_timm_up_before_importing_it_still_registers():
    """Libraries check that timm is installed with importlib.util.find_spec (transformers does) before importing it."""
    code = 'import importlib.util, json\n' \
           'assert importlib.util.find_spec("timm") is not None\n' \
           'import timm\n' \
           'print(json.dumps(sorted(timm.list_models("t2t_vit*"))))'
    assert _run(code) == EXPECTED


_MODULES = ['attention', 'blocks', 'catalog', 'convert', 'hub', 'patch_embed', 'predict', 't2t_vit', 'weights']
_REGISTERED = 'import json, sys, timm, _timm_t2t_autoload as hook\n' \
              'print(json.dumps(dict(models=sorted(timm.list_models("t2t_vit*")),\n' \
              '    finders=sum(isinstance(f, hook.RegistrationFinder) for f in sys.meta_path))))'


_EACH_MODULE_FIRST = f"""import importlib, json, sys
results = {{}}
for module in {_MODULES!r}:
    # timm and timm-t2t imported afresh for each module (torch stays: nothing of the hook depends on it)
    for name in [n for n in sys.modules if n.split('.')[0] in ('timm', 'timm_t2t', '_timm_t2t_autoload')]:
        del sys.modules[name]
    importlib.import_module('timm_t2t.' + module)
    import timm
    results[module] = dict(models=sorted(timm.list_models('t2t_vit*')),
                           finders=sum(type(f).__name__ == 'RegistrationFinder' for f in sys.meta_path))
print(json.dumps(results))"""


def test_importing_any_module_first_registers_once_complete():
    """With the start-up hook off, the package arms the registration itself: whichever module comes first (most
    import timm half-way through), the models register once it is complete, and the finder steps aside."""
    results = _run(_EACH_MODULE_FIRST, TIMM_T2T_AUTOLOAD='0')
    assert results == {module: {'models': EXPECTED, 'finders': 0} for module in _MODULES}


def test_finder_is_armed_at_start_and_gone_after_registration():
    code = 'import json, sys, _timm_t2t_autoload as hook\n' \
           'before = sum(isinstance(f, hook.RegistrationFinder) for f in sys.meta_path)\n' \
           'hook.install(); hook.install()\n' \
           'again = sum(isinstance(f, hook.RegistrationFinder) for f in sys.meta_path)\n' \
           'import timm\n' \
           'after = sum(isinstance(f, hook.RegistrationFinder) for f in sys.meta_path)\n' \
           'print(json.dumps([before, again, after, len(timm.list_models("t2t_vit*"))]))'
    assert _run(code) == [1, 1, 0, len(EXPECTED)]


@pytest.fixture(scope='module')
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The wheel `pip install .` would install, built by the project's build backend."""
    out = tmp_path_factory.mktemp('wheel')
    root = pathlib.Path(__file__).parents[1]
    build = f'from hatchling.build import build_wheel; print(build_wheel({str(out)!r}))'
    name = subprocess.run([sys.executable, '-c', build], cwd=root, capture_output=True, text=True, check=True)
    return zipfile.ZipFile(out / name.stdout.strip().splitlines()[-1])


def _lines(wheel: zipfile.ZipFile, name: str):
    text = wheel.read(name).decode('utf-8')
    return [line for line in text.splitlines() if line.strip() and not line.startswith('#')]


def test_wheel_ships_the_hook_for_every_python(wheel):
    names = set(wheel.namelist())
    assert {'_timm_t2t_autoload.py', 'timm_t2t_autoload.pth', 'timm_t2t_autoload.start'} <= names
    assert 'timm_t2t/t2t_vit.py' in names
    # PEP 829: a .start file of the same name turns off the .pth's import line on 3.15+, so one of them runs
    assert _lines(wheel, 'timm_t2t_autoload.start') == ['_timm_t2t_autoload:install']
    assert _lines(wheel, 'timm_t2t_autoload.pth') == ['import _timm_t2t_autoload; _timm_t2t_autoload.install()']


def test_start_entry_point_alone_registers_the_models(wheel):
    """As Python 3.15+ runs it: no .pth import line (site is off here), the .start entry point resolved by
    pkgutil.resolve_name and called, then a plain `import timm`."""
    entry_point, = _lines(wheel, 'timm_t2t_autoload.start')
    paths = [str(pathlib.Path(__file__).parents[1])] + [path for path in sys.path if path]  # what site had added
    code = f'import sys; sys.path[:0] = {paths!r}\n' \
           f'import pkgutil; pkgutil.resolve_name({entry_point!r})()\n' + _REGISTERED
    assert _run_flags(code, '-S') == {'models': EXPECTED, 'finders': 0}
    code = f'import sys; sys.path[:0] = {paths!r}\n' + _REGISTERED
    assert _run_flags(code, '-S') == {'models': [], 'finders': 0}  # without it, nothing registers


def _run_flags(code: str, *flags: str):
    return run_python(code, flags=flags)
