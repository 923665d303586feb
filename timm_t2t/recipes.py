"""CPU inference recipes: the ways to make a trained model fast on a CPU, applied the same way to any model.

    from timm_t2t.recipes import prepare
    predict = prepare(model, 'bf16', example)   # a callable: images (float32) -> float32 logits
    logits = predict(images)

- `fp32`: the model as it is, eager.
- `fp32-compiled`: float32, `torch.compile` with inductor freezing (weights folded and prepacked).
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

Whether bfloat16 is worth using at all depends on the CPU: `bf16_is_faster(bf16_support())` says whether this one
runs bfloat16 faster than float32, which decides the default precision of training and timing in this repository
(the digits experiment, its test fixture, the benchmark).
"""
import copy
import dataclasses
import functools
import importlib.util
import logging
import os
import platform
import shutil
import time
import warnings
from typing import Callable, Iterable, Optional

import torch

from ._compat import x86_has_bf16_instructions
from ._text import plural

__all__ = [
    'RECIPES', 'Bf16Support', 'Predict', 'RecipeUnavailableError', 'bf16_is_faster', 'bf16_support', 'check_recipe',
    'explain_bf16', 'prepare',
]

_logger = logging.getLogger(__name__)

RECIPES = ('fp32', 'fp32-compiled', 'bf16-autocast', 'bf16', 'bf16-compiled', 'int8-dynamic', 'int8-static')
Predict = Callable[[torch.Tensor], torch.Tensor]

_DESCRIPTIONS = {
    'fp32': 'float32 weights and activations, eager',
    'fp32-compiled': 'float32 weights and activations, torch.compile with inductor freezing',
    'bf16-autocast': 'float32 weights, matrix products in bfloat16 under torch.autocast, eager',
    'bf16': 'bfloat16 weights and inputs, eager',
    'bf16-compiled': 'bfloat16 weights and inputs, torch.compile with inductor freezing',
    'int8-dynamic': 'int8 weights in the Linear layers, their inputs quantized on the fly (torch.ao '
                    'quantize_dynamic), the rest float32, eager',
    'int8-static': 'int8 weights and activations calibrated on {images} (torchao PT2E, X86InductorQuantizer), '
                   'torch.compile with inductor freezing',
}
_TORCHAO_INSTALL = 'pip install torchao, or pip install "timm-t2t[int8]"'


class RecipeUnavailableError(RuntimeError):
    """This machine's CPU, torch build or installed packages cannot run a recipe; the message says what to do."""


def _cpu_has_bf16() -> bool:
    """Whether torch's oneDNN has bfloat16 kernels for this CPU (AVX-512 or AMX on x86, BF16 on Arm)."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


# bf16 must beat fp32 by this much in a bare matmul to be chosen: autocast also converts weights and activations on
# every call, which a smaller gain does not pay for
MIN_BF16_MATMUL_SPEEDUP = 1.25


@dataclasses.dataclass(frozen=True)
class Bf16Support:
    """What decides whether a CPU runs bfloat16 faster than float32 (see `bf16_is_faster`)."""
    kernels: bool  # torch's oneDNN runs bfloat16 here (False on AVX2-only x86, or with ONEDNN_MAX_CPU_ISA below it)
    instructions: bool  # the CPU computes in bfloat16: AVX512-BF16 or AMX on x86 (Arm: implied by `kernels`)
    matmul_speedup: Optional[float] = None  # bf16 over fp32 matmul throughput, measured; None where not measured


def bf16_is_faster(support: Bf16Support) -> bool:
    """Whether a CPU with this support runs bfloat16 faster than float32: it needs torch's bf16 kernels, bf16
    arithmetic in the CPU, and a measured bf16 matmul at least `MIN_BF16_MATMUL_SPEEDUP` times fp32's.

    Each condition alone is wrong somewhere. Without the kernels (AVX2-only x86: AMD EPYC before Zen 4, most Intel
    desktop and laptop chips), bf16 runs in reference loops, 100 to 300 times slower than fp32. With the kernels but
    no bf16 arithmetic (AVX-512 without AVX512-BF16: Skylake to Ice Lake Xeons), oneDNN converts to fp32 and computes
    there: ~0.2x fp32 (measured with oneDNN capped at AVX512_CORE on a Sapphire Rapids Xeon). And the instructions can
    be there yet slower than fp32's AVX-512 path (oneDNN capped at AVX512_CORE_BF16 on that Xeon: ~0.6x), so the
    timing settles it; it costs under a tenth of a second, once per process. Measured where all three hold: 3 to 4.5x
    with AMX (that Xeon, 512 x 512), 2.4x with AVX512-BF16 (AMD EPYC Zen 4, the matmul peaks of
    benchmarks/results/benchmark_cpu_bf16.json); on one thread, as `bf16_support` times it, 4.1 to 4.3x on an AMD
    EPYC with AVX512-BF16 (2 cores, busy with other work).
    """
    return (support.kernels and support.instructions and support.matmul_speedup is not None
            and support.matmul_speedup >= MIN_BF16_MATMUL_SPEEDUP)


def explain_bf16(support: Bf16Support) -> str:
    """Why a CPU with this support runs bfloat16 faster than float32, or not, in a few words."""
    if not support.kernels:
        return ('torch has no bfloat16 kernels for this CPU (on x86 they need AVX-512, on Arm BF16): bfloat16 would '
                'run many times slower than float32')
    if not support.instructions:
        return 'this CPU has no bfloat16 arithmetic (AVX512-BF16 or AMX): bfloat16 would run slower than float32'
    if bf16_is_faster(support):
        return f'this CPU runs a bfloat16 matmul {support.matmul_speedup:.1f}x as fast as float32'
    return (f'this CPU runs a bfloat16 matmul only {support.matmul_speedup:.2f}x as fast as float32 (bfloat16 pays '
            f'from {MIN_BF16_MATMUL_SPEEDUP}x)')


def _cpu_has_bf16_instructions() -> bool:
    """AVX512-BF16 or AMX on x86. Elsewhere, and with a torch too old to ask (before 2.3), True: on Arm torch's
    kernel check already requires the BF16 extension, and the matmul timing decides the rest."""
    if platform.machine().lower() not in ('x86_64', 'amd64', 'i386', 'i686'):
        return True
    has = x86_has_bf16_instructions()
    return True if has is None else has


def _bf16_matmul_speedup(size: int = 512, tries: int = 20) -> float:
    """fp32 time over bf16 time of a square matmul on one thread, each the best of `tries` interleaved rounds after
    one to warm up (under a tenth of a second; measured only where bf16 has kernels and instructions).

    One thread, because on all of them a matmul of a millisecond or two waits for whichever thread another process
    has pushed off its core: on a busy 2-core machine, processes timing all threads, best of 5, found from 1.8x to
    16.5x; on one thread, best of 20, they agree within a few percent (4.0 to 4.3x there). The ratio is the cores' own,
    whatever their number.
    """
    a, b = torch.randn(size, size), torch.randn(size, size)
    pairs = {torch.float32: (a, b), torch.bfloat16: (a.bfloat16(), b.bfloat16())}
    best = dict.fromkeys(pairs, float('inf'))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for round_ in range(tries + 1):
            for dtype, (x, y) in pairs.items():
                start = time.perf_counter()
                torch.matmul(x, y)
                if round_:
                    best[dtype] = min(best[dtype], time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return best[torch.float32] / best[torch.bfloat16]


@functools.lru_cache(maxsize=None)
def bf16_support() -> Bf16Support:
    """This CPU's bfloat16 support as torch sees it, with the matmul timed where kernels and instructions are both
    there: once per process, so every caller in it (training's precision, the test session's header, the benchmark)
    states the same figure."""
    kernels, instructions = _cpu_has_bf16(), _cpu_has_bf16_instructions()
    speedup = _bf16_matmul_speedup() if kernels and instructions else None
    support = Bf16Support(kernels, instructions, speedup)
    _logger.info(f'bfloat16 on this CPU: {support}; faster than float32: {bf16_is_faster(support)}.')
    return support


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
    """The model compiled for the example's shape; a smaller batch is padded to it rather than compiled again (which
    takes as long as the first compile: tens of seconds on a small CPU)."""
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
        count = len(x)
        if count < len(example) and x.shape[1:] == example.shape[1:]:
            x = torch.cat([x, x.new_zeros(len(example) - count, *x.shape[1:])])
        with torch.no_grad(), _freezing():
            return compiled(x.to(example.dtype)).float()[:count]
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
        example: An input batch of the shape the predict function will see (compiled recipes are built for it,
            and pad smaller batches to it).
        calibration: Batches of representative images for int8-static calibration (default: the example).

    Raises:
        RecipeUnavailableError: This machine cannot run the recipe (the message says why and what to do).
    """
    check_recipe(recipe)
    calibration = list(calibration or [example])
    description = _DESCRIPTIONS[recipe].format(images=plural(sum(len(images) for images in calibration), 'image'))
    _logger.info(f'CPU recipe {recipe}: {description}; logits returned in float32.')
    model = copy.deepcopy(model).eval()
    if recipe == 'fp32':
        return lambda x: _no_grad(model, x)
    if recipe == 'fp32-compiled':
        return _compiled(model, example, recipe)
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
