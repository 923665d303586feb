"""The CPU deployment recipes of `timm_t2t.recipes` on a real trained model (the small-data experiment's T2T-ViT-7 on
the digits): each keeps the logits near fp32 and the validation accuracy within half a point; a recipe the machine
cannot run says why in one line; and the default attention kernel is the fast one for the precision."""
import itertools
import logging
import sys

import pytest
import timm
import torch

from timm_t2t import recipes
from timm_t2t.recipes import RECIPES, prepare
from benchmarks.small_data import val_loader

# Largest |logit - fp32 logit| allowed on the digits model (its logits span about +-7).
LOGIT_TOLERANCE = {
    'fp32': 0.,
    'bf16-autocast': 0.1,
    'bf16': 0.1,
    'bf16-compiled': 0.1,
    'int8-dynamic': 0.3,
    'int8-static': 0.3,
}
ACCURACY_TOLERANCE = 0.5  # points


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
def test_recipe_keeps_logits_and_accuracy(digits_model, validation, recipe):
    images, labels, reference = validation
    train_images = (x for x, _ in val_loader(digits_model.data, digits_model.recipe, split='train'))
    calibration = list(itertools.islice(train_images, 2))  # calibrated on training images, judged on validation
    predict = prepare(digits_model.model, recipe, images, calibration=calibration)
    logits = predict(images)
    assert logits.dtype == torch.float32 and logits.shape == reference.shape
    assert (logits - reference).abs().max().item() <= LOGIT_TOLERANCE[recipe]
    assert abs(_accuracy(logits, labels) - _accuracy(reference, labels)) <= ACCURACY_TOLERANCE
    assert _accuracy(reference, labels) >= 90.


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
