"""CPU inference recipes: the ways to make a trained model fast on a CPU, applied the same way to any model.

    from timm_t2t.recipes import prepare
    predict = prepare(model, 'bf16', example)   # a callable: images (float32) -> float32 logits
    logits = predict(images)

- `fp32`: the model as it is, eager.
- `bf16-autocast`: eager under `torch.autocast('cpu', torch.bfloat16)`.
- `bf16`: weights and inputs in bfloat16 (`model.to(torch.bfloat16)`), eager.
- `bf16-compiled`: bf16 weights, `torch.compile` with inductor freezing (weights folded and prepacked).
- `int8-dynamic`: `torch.ao.quantization.quantize_dynamic` of the Linear layers (int8 weights, activations
  quantized per call), eager.
- `int8-static`: int8 weights and activations calibrated on example images, through PyTorch 2 export
  quantization for x86 (torchao's `X86InductorQuantizer`) and `torch.compile` with freezing. Needs torchao
  (`pip install torchao`), imported only for this recipe.

A recipe the machine cannot run (no bfloat16 support in the CPU, no torchao, no C++ compiler for `torch.compile`)
raises `RecipeUnavailableError` saying why and what to do; `check_recipe` asks before any model is built. The tests
run every recipe on a trained model and bound its logits and accuracy against fp32; the benchmark times them.
"""
import copy
import importlib.util
import logging
import os
import shutil
import warnings
from typing import Callable, Iterable, Optional

import torch

__all__ = ['RECIPES', 'Predict', 'RecipeUnavailableError', 'check_recipe', 'prepare']

_logger = logging.getLogger(__name__)

RECIPES = ('fp32', 'bf16-autocast', 'bf16', 'bf16-compiled', 'int8-dynamic', 'int8-static')
Predict = Callable[[torch.Tensor], torch.Tensor]

_DESCRIPTIONS = {
    'fp32': 'float32 weights and activations, eager',
    'bf16-autocast': 'float32 weights, matrix products in bfloat16 under torch.autocast, eager',
    'bf16': 'bfloat16 weights and inputs, eager',
    'bf16-compiled': 'bfloat16 weights and inputs, torch.compile with inductor freezing',
    'int8-dynamic': 'int8 weights in the Linear layers, their inputs quantized on the fly (torch.ao '
                    'quantize_dynamic), the rest float32, eager',
    'int8-static': 'int8 weights and activations calibrated on {count} images (torchao PT2E, X86InductorQuantizer), '
                   'torch.compile with inductor freezing',
}
_TORCHAO_INSTALL = 'pip install torchao, or pip install "timm-t2t[int8]"'


class RecipeUnavailableError(RuntimeError):
    """This machine's CPU, torch build or installed packages cannot run a recipe; the message says what to do."""


def _cpu_has_bf16() -> bool:
    """Whether torch's oneDNN has bfloat16 kernels for this CPU (AVX-512 or AMX on x86, BF16 on Arm)."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _import_pt2e():
    """torchao's PT2E quantization modules, imported on first use (torchao is optional)."""
    if importlib.util.find_spec('torchao') is None:
        raise RecipeUnavailableError(f'int8-static needs torchao, which is not installed: {_TORCHAO_INSTALL}.')
    try:
        from torchao.quantization.pt2e import quantize_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer
    except ImportError as e:
        raise RecipeUnavailableError(
            f'int8-static needs torchao\'s PT2E quantization, which the installed torchao does not import ({e}): '
            f'pip install -U torchao for torch {torch.__version__}.') from e
    return quantize_pt2e, x86_inductor_quantizer


def check_recipe(recipe: str) -> None:
    """Raise ValueError for an unknown recipe, RecipeUnavailableError (saying why and what to do) for one this
    machine cannot run; int8-static imports torchao here."""
    if recipe not in RECIPES:
        raise ValueError(f'Unknown recipe {recipe!r}, expected one of {RECIPES}.')
    if recipe.startswith('bf16') and not _cpu_has_bf16():
        raise RecipeUnavailableError(
            f'{recipe} needs a CPU with bfloat16 support that torch can use (AVX-512 or AMX on x86, BF16 on Arm), '
            f'which this one lacks: use fp32 or int8.')
    if recipe.startswith('int8'):
        engines = set(torch.backends.quantized.supported_engines) - {'none'}
        if not engines or not hasattr(torch.ao.quantization, 'quantize_dynamic'):
            raise RecipeUnavailableError(
                f'This torch {torch.__version__} build has no int8 CPU quantization: use fp32 or bf16.')
    if recipe == 'int8-static':
        if 'x86' not in torch.backends.quantized.supported_engines:
            raise RecipeUnavailableError('int8-static is for x86 CPUs (torchao\'s X86InductorQuantizer): use int8 '
                                         '(dynamic quantization) on this one.')
        _import_pt2e()


def _has_cxx_compiler() -> bool:
    return any(shutil.which(name) for name in (os.environ.get('CXX'), 'g++', 'clang++', 'c++') if name)


def _freezing():
    from torch._inductor import config
    return config.patch(freezing=True)


def _compiled(model: torch.nn.Module, example: torch.Tensor, recipe: str) -> Predict:
    compiled = torch.compile(model)
    try:
        with torch.no_grad(), _freezing():
            compiled(example)  # compiles and freezes now, so a timer sees the steady state
    except Exception as e:  # inductor fails in many ways (no C++ compiler, an op it cannot lower): one line here
        first_line = (str(e).strip().splitlines() or [''])[0]
        advice = '' if _has_cxx_compiler() else '; it needs a C++ compiler (g++ or clang++, or CXX set to one)'
        raise RecipeUnavailableError(
            f'{recipe}: torch.compile failed on this machine ({type(e).__name__}: {first_line}){advice}.') from e

    def predict(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), _freezing():
            return compiled(x.to(example.dtype)).float()
    return predict


def _quantize_static(
        model: torch.nn.Module, example: torch.Tensor, calibration: Iterable[torch.Tensor]) -> torch.nn.Module:
    """The model exported for any batch size, with int8 weights and activations calibrated on `calibration`."""
    quantize_pt2e, x86 = _import_pt2e()
    quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
    batch = torch.export.Dim('batch', min=1, max=1024)  # calibration batches need not have the example's size
    traced = example if example.shape[0] > 1 else example.expand(2, *example.shape[1:])  # export fixes a batch of 1
    with torch.no_grad():
        exported = torch.export.export(model, (traced,), dynamic_shapes=({0: batch},)).module()
        prepared = quantize_pt2e.prepare_pt2e(exported, quantizer)
        for images in calibration:
            prepared(images)
        return quantize_pt2e.convert_pt2e(prepared)


def prepare(
        model: torch.nn.Module,
        recipe: str,
        example: torch.Tensor,
        calibration: Optional[Iterable[torch.Tensor]] = None,
) -> Predict:
    """A predict function running a copy of `model` (in eval mode) the way `recipe` says: float32 images in,
    float32 logits out.

    Args:
        model: The model; it is not modified.
        recipe: One of RECIPES.
        example: An input batch of the shape the predict function will see (compiled recipes are built for it).
        calibration: Batches of representative images for int8-static calibration (default: the example).

    Raises:
        RecipeUnavailableError: This machine cannot run the recipe (the message says why and what to do).
    """
    check_recipe(recipe)
    calibration = list(calibration or [example])
    description = _DESCRIPTIONS[recipe].format(count=sum(len(images) for images in calibration))
    _logger.info(f'CPU recipe {recipe}: {description}; logits returned in float32.')
    model = copy.deepcopy(model).eval()
    if recipe == 'fp32':
        return lambda x: _no_grad(model, x)
    if recipe == 'bf16-autocast':
        def predict(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
                return model(x).float()
        return predict
    if recipe in ('bf16', 'bf16-compiled'):
        model = model.to(torch.bfloat16)
        if recipe == 'bf16-compiled':
            return _compiled(model, example.to(torch.bfloat16), recipe)
        return lambda x: _no_grad(model, x.to(torch.bfloat16)).float()
    if recipe == 'int8-dynamic':
        with warnings.catch_warnings():  # torch.ao's eager quantization is deprecated in favour of torchao
            warnings.simplefilter('ignore')
            quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        return lambda x: _no_grad(quantized, x)
    return _compiled(_quantize_static(model, example, calibration), example, recipe)


def _no_grad(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).float()
