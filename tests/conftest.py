"""Shared fixtures: the reference parity cases and small models."""
import pytest
import torch

from timm_t2t import T2TViT
from timm_t2t import recipes

from digits import DigitsModel, train_digits_model
from parity_cases import PARITY_CASES, ParityCase, load_parity_case

# A small architecture for API tests, run with both kinds of T2T layer.
SMALL = dict(img_size=64, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2., token_dim=16, num_classes=10)


def pytest_report_header(config) -> str:
    support = recipes.bf16_support()
    precision = 'bf16 autocast' if recipes.bf16_is_faster(support) else 'float32'
    return f'digits model trained in {precision}: {recipes.explain_bf16(support)}'


@pytest.fixture(params=PARITY_CASES)
def parity_case(request) -> ParityCase:
    return load_parity_case(request.param)


@pytest.fixture(params=['performer', 'transformer'])
def t2t_layer(request) -> str:
    return request.param


@pytest.fixture
def make_small_model(t2t_layer):
    """Builds the small architecture with this test's T2T layer kind; keyword arguments override it."""
    def make(**kwargs) -> T2TViT:
        return T2TViT(**{**SMALL, 't2t_layer': t2t_layer, **kwargs}).eval()
    return make


@pytest.fixture
def small_model(make_small_model) -> T2TViT:
    torch.manual_seed(0)
    return make_small_model()


@pytest.fixture(scope='session')
def digits_model(tmp_path_factory) -> DigitsModel:
    """T2T-ViT-7 trained on the digits by the small-data experiment's recipe, once per session."""
    return train_digits_model(tmp_path_factory.mktemp('digits'))


@pytest.fixture
def needs_bf16():
    """`needs_bf16(recipe)` passes on a CPU with bfloat16 kernels. On one without, it checks that the recipe is
    refused there in one line, as it must be, and skips the test: running it needs bf16 hardware to mean anything."""
    def check(recipe: str) -> None:
        if recipes._cpu_has_bf16():
            return
        with pytest.raises(recipes.RecipeUnavailableError, match=f'^{recipe} needs a CPU with bfloat16 support'):
            recipes.check_recipe(recipe)
        pytest.skip(f'{recipe} needs a CPU with bfloat16 kernels, which this one lacks (it refuses {recipe} in one '
                    f'line there, as checked)')
    return check
