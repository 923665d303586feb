"""CPU inference recipes: the ways a user makes a trained model fast on a CPU, applied the same way to any model.

    predict = prepare(model, 'bf16-compiled', example)   # a callable: images (float32) -> float32 logits
    logits = predict(images)

- `fp32`: the model as it is, eager.
- `bf16-autocast`: eager under `torch.autocast('cpu', torch.bfloat16)`.
- `bf16`: weights and inputs in bfloat16 (`model.to(torch.bfloat16)`), eager.
- `bf16-compiled`: bf16 weights, `torch.compile` with inductor freezing (weights folded and prepacked).
- `int8-dynamic`: `torch.ao.quantization.quantize_dynamic` of the Linear layers (int8 weights, activations
  quantized per call), eager.
- `int8-static`: int8 weights and activations calibrated on example images, through PyTorch 2 export
  quantization for x86 (torchao's `X86InductorQuantizer`) and `torch.compile` with freezing. Needs torchao.

The tests run every recipe on a trained model (the small-data experiment's) and bound its logits and accuracy
against fp32; the benchmark times them.
"""
import copy
import warnings
from typing import Callable, Iterable, Optional

import torch

__all__ = ['RECIPES', 'prepare']

RECIPES = ('fp32', 'bf16-autocast', 'bf16', 'bf16-compiled', 'int8-dynamic', 'int8-static')
Predict = Callable[[torch.Tensor], torch.Tensor]


def _freezing():
    return torch._inductor.config.patch(freezing=True)


def _compiled(model: torch.nn.Module, example: torch.Tensor) -> Predict:
    compiled = torch.compile(model)
    with torch.no_grad(), _freezing():
        compiled(example)  # compiles and freezes now, so a timer sees the steady state

    def predict(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), _freezing():
            return compiled(x.to(example.dtype)).float()
    return predict


def _int8_static(model: torch.nn.Module, example: torch.Tensor, calibration: Iterable[torch.Tensor]) -> Predict:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

    quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
    batch = torch.export.Dim('batch', min=1, max=1024)  # calibration batches need not have the example's size
    with torch.no_grad():
        exported = torch.export.export(model, (example,), dynamic_shapes=({0: batch},)).module()
        prepared = prepare_pt2e(exported, quantizer)
        for images in calibration:
            prepared(images)
        return _compiled(convert_pt2e(prepared), example)


def prepare(
        model: torch.nn.Module,
        recipe: str,
        example: torch.Tensor,
        calibration: Optional[Iterable[torch.Tensor]] = None,
) -> Predict:
    """A predict function running a copy of `model` (in eval mode) the way `recipe` says.

    Args:
        model: The model; it is not modified.
        recipe: One of RECIPES.
        example: An input batch of the shape the predict function will see (compiled recipes are built for it).
        calibration: Batches of representative images for int8-static calibration (default: the example).
    """
    if recipe not in RECIPES:
        raise ValueError(f'Unknown recipe {recipe!r}, expected one of {RECIPES}.')
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
            return _compiled(model, example.to(torch.bfloat16))
        return lambda x: _no_grad(model, x.to(torch.bfloat16)).float()
    if recipe == 'int8-dynamic':
        with warnings.catch_warnings():  # torch.ao's eager quantization is deprecated in favour of torchao
            warnings.simplefilter('ignore')
            quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        return lambda x: _no_grad(quantized, x)
    return _int8_static(model, example, calibration or [example])


def _no_grad(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).float()
