"""Reference checkpoints give the reference logits, through every way timm loads weights."""
import pytest
import timm
import torch

from benchmarks.reference_t2t import (
    REFERENCE_VARIANTS,
    ReferenceT2TViT,
    reference_config,
    strip_module_prefix,
    training_checkpoint,
)
from timm_t2t import T2TViT
from timm_t2t.t2t_vit import sinusoid_pos_embed

from parity_cases import (
    FULL_SIZE_FIXTURE,
    MAIN_FAMILY_CASES,
    PARITY_CASES,
    SMALL_NORMALIZER_CASES,
    load_parity_case,
    perturbed_reference_state_dict,
)

ATOL = 1e-5  # float32 round-off on logits of size ~1 (the contract allows 1e-4)


def _logits(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(inputs)


def _set_fused_attn(model: torch.nn.Module, fused: bool) -> None:
    for module in model.modules():
        if hasattr(module, 'fused_attn'):
            module.fused_attn = fused


@pytest.mark.parametrize('fused', [True, False], ids=['fused', 'eager'])
@pytest.mark.parametrize('entry', ['state_dict', 'state_dict_ema'])
def test_load_state_dict_takes_reference_state_dict(parity_case, entry, fused):
    model = T2TViT(**parity_case.model_kwargs)
    _set_fused_attn(model, fused)
    model.load_state_dict(parity_case.checkpoint[entry])  # `module.` prefixes and reference key names as saved
    torch.testing.assert_close(_logits(model, parity_case.inputs), parity_case.logits[entry], rtol=0, atol=ATOL)


def _create(case, **kwargs):
    # the entry point of the fixture's reference class, made the fixture's size by keyword arguments
    return timm.create_model(case.entry_point, **case.architecture, **kwargs)


def test_create_model_checkpoint_path_prefers_ema(parity_case):
    model = _create(parity_case, checkpoint_path=str(parity_case.checkpoint_path))
    torch.testing.assert_close(_logits(model, parity_case.inputs), parity_case.logits['state_dict_ema'], rtol=0, atol=ATOL)


@pytest.mark.parametrize('use_ema', [True, False])
def test_timm_load_checkpoint(parity_case, use_ema):
    model = _create(parity_case)
    timm.models.load_checkpoint(model, str(parity_case.checkpoint_path), use_ema=use_ema)
    expected = parity_case.logits['state_dict_ema' if use_ema else 'state_dict']
    torch.testing.assert_close(_logits(model, parity_case.inputs), expected, rtol=0, atol=ATOL)


def test_pretrained_file_overlay(parity_case):
    overlay = dict(
        file=str(parity_case.checkpoint_path),
        num_classes=parity_case.architecture['num_classes'],
        input_size=parity_case.input_size,
    )
    model = _create(parity_case, pretrained=True, pretrained_cfg_overlay=overlay)
    torch.testing.assert_close(_logits(model, parity_case.inputs), parity_case.logits['state_dict_ema'], rtol=0, atol=ATOL)


@pytest.mark.parametrize('name', SMALL_NORMALIZER_CASES)
def test_tiny_and_underflowing_normalizers_match_the_reference(name):
    """Where the Performer's normalizer is tiny or underflows, the reference's eps decides the output: kept exact."""
    case = load_parity_case(name)
    model = T2TViT(**case.model_kwargs)
    model.load_state_dict(case.checkpoint['state_dict_ema'])
    torch.testing.assert_close(_logits(model, case.inputs), case.logits['state_dict_ema'], rtol=0, atol=ATOL)
    model = _create(case, checkpoint_path=str(case.checkpoint_path))
    torch.testing.assert_close(_logits(model, case.inputs), case.logits['state_dict_ema'], rtol=0, atol=ATOL)


@pytest.mark.parametrize('name', MAIN_FAMILY_CASES + SMALL_NORMALIZER_CASES)
def test_reference_math_reproduces_reference_logits(name):
    """The benchmarks' re-implementation of the reference is the reference, numerically."""
    case = load_parity_case(name)
    model = ReferenceT2TViT(**case.reference_config)
    for entry, expected in case.logits.items():
        model.load_state_dict(strip_module_prefix(case.checkpoint[entry]))
        torch.testing.assert_close(_logits(model, case.inputs), expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize('name', PARITY_CASES)
def test_sinusoid_table_is_the_reference_table(name):
    case = load_parity_case(name)
    saved = case.checkpoint['state_dict']['module.pos_embed']
    torch.testing.assert_close(sinusoid_pos_embed(saved.shape[1], saved.shape[2]), saved, rtol=0, atol=1e-7)
    model = T2TViT(**case.model_kwargs)
    torch.testing.assert_close(model.pos_embed, saved, rtol=0, atol=1e-7)


@pytest.mark.parametrize('variant', sorted(REFERENCE_VARIANTS))
def test_every_entry_point_matches_the_reference(variant, tmp_path):
    """A reference-format training checkpoint of each entry point's architecture gives the reference logits."""
    torch.manual_seed(0)
    reference = ReferenceT2TViT(**reference_config(variant)).eval()
    ema = {k: v + 0.01 * torch.randn_like(v) if v.requires_grad else v for k, v in reference.named_parameters()}
    path = tmp_path / 'checkpoint.pth.tar'
    torch.save(training_checkpoint(reference.state_dict(), ema), path)
    reference.load_state_dict(ema)
    inputs = torch.randn(1, 3, 224, 224)

    model = timm.create_model(variant, checkpoint_path=str(path))
    torch.testing.assert_close(_logits(model, inputs), _logits(reference, inputs), rtol=0, atol=ATOL)


@pytest.fixture(scope='module')
def full_size_cases():
    return torch.load(FULL_SIZE_FIXTURE, weights_only=True)


@pytest.mark.parametrize('variant', ['t2t_vit_14', 't2t_vit_14_se', 't2t_vit_dense', 't2t_vit_16_ghost'])
def test_perturbed_full_size_checkpoint_matches_the_reference(full_size_cases, variant, tmp_path):
    """Full-size weights perturbed by N(0, 0.02^2), where the reference's eps moves logits by ~5e-4, give the logits
    the reference code gave for them."""
    case = full_size_cases['cases'][variant]
    path = tmp_path / 'checkpoint.pth.tar'
    torch.save(training_checkpoint(perturbed_reference_state_dict(case)), path)
    model = timm.create_model(variant, checkpoint_path=str(path))
    torch.testing.assert_close(_logits(model, full_size_cases['input']), case['logits'], rtol=0, atol=ATOL)
