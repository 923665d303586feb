"""The CPU deployment recipes of `timm_t2t.recipes` on a real trained model (the small-data experiment's T2T-ViT-7 on
the digits): each keeps the logits near fp32 and the validation accuracy within half a point (a point in int8); a
recipe the machine cannot run says why in one line; and bfloat16 is judged faster than float32 exactly on the CPUs
where it is."""
import itertools
import logging
import platform
import sys

import pytest
import timm
import torch

from timm_t2t import recipes
from timm_t2t.recipes import RECIPES, Bf16Support, bf16_is_faster, bf16_support, explain_bf16, prepare
from benchmarks.benchmark import DEIT_S, RECIPES_CONFIG, cpu_configs
from benchmarks.machine import AVX2_EMULATION, ISA_LIMITS, cpu_name
from benchmarks.small_data import val_loader

from fresh_python import run_python

# Largest |logit - fp32 logit| allowed on the digits model (its logits span about +-7).
LOGIT_TOLERANCE = {
    'fp32': 0.,
    'fp32-compiled': 1e-3,
    'bf16-autocast': 0.1,
    'bf16': 0.1,
    'bf16-compiled': 0.1,
    'int8-dynamic': 0.3,
    'int8-static': 0.3,
}
# Largest change in validation top-1 allowed (points; one image of the 360 is 0.28): int8's activation scales cost
# int8-static two images (0.56) on a T2T-ViT-7 trained in fp32 on a Xeon with AVX-512.
ACCURACY_TOLERANCE = {recipe: 1. if recipe.startswith('int8') else 0.5 for recipe in RECIPES}


@pytest.fixture(scope='module')
def validation(digits_model):
    """The 360 validation images as one batch (one shape: compiled recipes build once), labels, fp32 logits."""
    batches = list(val_loader(digits_model.data, digits_model.recipe))
    images = torch.cat([x for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    with torch.no_grad():
        logits = digits_model.model(images)
    return images, labels, logits


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100. * (logits.argmax(dim=-1) == labels).float().mean().item()


@pytest.mark.parametrize('recipe', RECIPES)
def test_recipe_keeps_logits_and_accuracy(digits_model, validation, needs_bf16, recipe):
    if recipe.startswith('bf16'):
        needs_bf16(recipe)
    images, labels, reference = validation
    train_images = (x for x, _ in val_loader(digits_model.data, digits_model.recipe, split='train'))
    calibration = list(itertools.islice(train_images, 2))  # calibrated on training images, judged on validation
    predict = prepare(digits_model.model, recipe, images, calibration=calibration)
    logits = predict(images)
    assert logits.dtype == torch.float32 and logits.shape == reference.shape
    assert (logits - reference).abs().max().item() <= LOGIT_TOLERANCE[recipe]
    assert abs(_accuracy(logits, labels) - _accuracy(reference, labels)) <= ACCURACY_TOLERANCE[recipe]
    assert _accuracy(reference, labels) >= 90.
    if recipe.endswith('compiled') or recipe == 'int8-static':  # a smaller batch is padded, not compiled again
        graphs = torch._dynamo.utils.counters['stats']['unique_graphs']
        torch.testing.assert_close(predict(images[:100]), logits[:100], rtol=0, atol=1e-5)
        assert torch._dynamo.utils.counters['stats']['unique_graphs'] == graphs


def test_unknown_recipe_is_named(digits_model):
    with pytest.raises(ValueError, match="Unknown recipe 'fp8'"):
        prepare(digits_model.model, 'fp8', torch.randn(1, 3, 64, 64))


def test_int8_static_quantizes_from_an_example_of_one_image():
    torch.manual_seed(0)
    model = timm.create_model('t2t_vit_7', img_size=64, depth=1, num_classes=10).eval()
    example, images = torch.randn(1, 3, 64, 64), torch.randn(3, 3, 64, 64)
    quantized = recipes._quantize_static(model, example, [images])
    with torch.no_grad():
        logits, reference = quantized(images), model(images)
    assert logits.shape == (3, 10)
    assert (logits - reference).abs().max().item() <= 0.05 * reference.abs().max().item()  # 0.8% measured


def test_int8_static_without_torchao_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, 'torchao', None)  # as if not installed: find_spec answers None
    with pytest.raises(recipes.RecipeUnavailableError) as error:
        recipes.check_recipe('int8-static')
    assert str(error.value) == ('int8-static needs torchao, which is not installed: pip install torchao, or pip '
                                'install "timm-t2t[int8]".')


def test_int8_static_with_a_torchao_lacking_pt2e_says_to_upgrade_it(monkeypatch):
    import torchao  # noqa: F401  installed, but without the PT2E modules
    monkeypatch.setitem(sys.modules, 'torchao.quantization.pt2e', None)
    with pytest.raises(recipes.RecipeUnavailableError, match=r"^int8-static needs torchao's PT2E quantization, which "
                                                             r"the installed torchao does not import \(.*\): pip "
                                                             r"install -U torchao for torch "):
        recipes.check_recipe('int8-static')


def test_recipes_are_logged(digits_model, caplog):
    caplog.set_level(logging.INFO, logger='timm_t2t.recipes')
    prepare(digits_model.model, 'int8-dynamic', torch.randn(2, 3, 64, 64))
    assert caplog.messages == ['CPU recipe int8-dynamic: int8 weights in the Linear layers, their inputs quantized '
                               'on the fly (torch.ao quantize_dynamic), the rest float32, eager; logits returned in '
                               'float32.']


# What torch reports on each kind of CPU (speed-ups measured: Sapphire Rapids with AMX at 512 x 512, capped with
# ONEDNN_MAX_CPU_ISA for the last two; AMD EPYC Zen 4 from benchmarks/results/benchmark_cpu_bf16.json's peaks).
CPUS = {
    'AMX': (Bf16Support(kernels=True, instructions=True, matmul_speedup=4.5), True),
    'AVX512-BF16 (EPYC Zen 4)': (Bf16Support(kernels=True, instructions=True, matmul_speedup=2.4), True),
    'AVX2 only (EPYC Zen 3)': (Bf16Support(kernels=False, instructions=False), False),
    'AVX2 emulated on a CPU with AMX': (Bf16Support(kernels=False, instructions=True), False),
    'AVX-512 without BF16 (Skylake to Ice Lake)': (Bf16Support(kernels=True, instructions=False), False),
    'AVX512-BF16 slower than its AVX-512 fp32': (Bf16Support(kernels=True, instructions=True, matmul_speedup=0.55),
                                                  False),
}


@pytest.mark.parametrize('cpu', CPUS)
def test_bf16_is_judged_faster_only_where_it_is(cpu):
    support, faster = CPUS[cpu]
    assert bf16_is_faster(support) is faster
    reason = explain_bf16(support)
    assert ('as fast as float32' in reason) == (support.matmul_speedup is not None)
    assert ('slower' in reason or 'only' in reason) is not faster, reason


def test_bf16_support_is_what_torch_reports_for_this_cpu():
    support = bf16_support()
    assert support.kernels == torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert (support.matmul_speedup is not None) == (support.kernels and support.instructions)
    if platform.machine() == 'x86_64':
        assert support.instructions == (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    assert bf16_support() is support  # measured once per process


def test_the_bf16_matmul_is_timed_on_one_thread_and_the_threads_restored(monkeypatch):
    """All threads would wait for whichever one a busy machine delays: a figure that changes from run to run."""
    calls, matmul = [], torch.matmul
    threads = torch.get_num_threads()

    def recorded(x, y):
        calls.append((x.dtype, torch.get_num_threads()))
        return matmul(x, y)

    monkeypatch.setattr(torch, 'matmul', recorded)
    assert recipes._bf16_matmul_speedup(size=64, tries=3) > 0
    assert calls == [(dtype, 1) for _ in range(1 + 3) for dtype in (torch.float32, torch.bfloat16)]
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize('images, words', [(1, '1 image'), (2, '2 images')])
def test_the_calibration_images_are_counted_in_words(monkeypatch, caplog, images, words):
    try:
        recipes.check_recipe('int8-static')
    except recipes.RecipeUnavailableError as e:
        pytest.skip(str(e))
    monkeypatch.setattr(recipes, '_quantize_static', lambda model, example, calibration: model)  # the log line only
    monkeypatch.setattr(recipes, '_compiled', lambda model, example, recipe: model)
    caplog.set_level(logging.INFO, logger='timm_t2t.recipes')
    prepare(torch.nn.Linear(4, 2), 'int8-static', torch.randn(1, 4), [torch.randn(1, 4)] * images)
    assert f'calibrated on {words} (torchao' in caplog.text


@pytest.mark.skipif(platform.machine() != 'x86_64', reason='the AVX2 emulation limits x86 instruction sets only')
def test_an_avx2_only_cpu_trains_and_times_in_float32():
    """A real run of torch on AVX2 alone (the instruction sets of this CPU limited to AVX2, as on an AMD EPYC before
    Zen 4): no bf16 kernels, so no matmul to time, and float32."""
    code = ('import dataclasses, json\nfrom timm_t2t.recipes import bf16_is_faster, bf16_support\n'
            'print(json.dumps([dataclasses.asdict(bf16_support()), bf16_is_faster(bf16_support())]))')
    support, faster = run_python(code, env=AVX2_EMULATION)
    assert support['kernels'] is False and support['matmul_speedup'] is None and faster is False


def test_a_result_names_the_cpus_family_and_model(tmp_path):
    cpuinfo = tmp_path / 'cpuinfo'
    cpuinfo.write_text('processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n'
                       'model name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16 sha_ni\n')
    assert cpu_name(str(cpuinfo)) == 'AMD EPYC (family 26, model 2; avx2, avx512f, avx512_bf16)'


def test_a_result_from_an_emulated_cpu_says_so(monkeypatch):
    for key in ISA_LIMITS:
        monkeypatch.delenv(key, raising=False)
    real = cpu_name()
    for key, value in AVX2_EMULATION.items():
        monkeypatch.setenv(key, value)
    assert cpu_name() == (f'{real}, emulating a narrower CPU: ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 '
                          f'MKL_ENABLE_INSTRUCTIONS=AVX2 FBGEMM_ENABLE_INSTRUCTIONS=AVX2')


@pytest.mark.parametrize('quick', [True, False])
def test_the_benchmark_times_bf16_only_where_it_is_faster(quick):
    without = cpu_configs(quick, bf16=False)
    assert without and not [e for c in without for e in c.entries if 'bf16' in c.name or 'bf16' in e.recipe]
    recipes = {c.name: c for c in cpu_configs(quick, bf16=True)}[RECIPES_CONFIG]
    expected = ('fp32', 'fp32-compiled', 'int8-dynamic', 'int8-static', 'bf16', 'bf16-compiled')
    assert [(e.model, e.recipe) for e in recipes.entries] == [
        (model, recipe) for model in ('t2t_vit_14', DEIT_S) for recipe in expected]
    assert [c.name for c in without] == [c.name for c in cpu_configs(quick) if not c.name.startswith('bf16')]
