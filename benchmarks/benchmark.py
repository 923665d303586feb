"""Speed of timm-t2t's T2T-ViT in every precision a user runs it in, against the reference's math and timm's ViTs,
in one process and one run.

Each configuration is a group of (model, implementation, recipe) entries timed against each other, interleaved round
by round, so every ratio comes from the same conditions; the median round is reported. The recipes are those of
`timm_t2t/recipes.py` (fp32 eager and compiled with inductor freezing, bf16 autocast, bf16 weights eager and compiled,
int8 dynamic and static quantization); training steps run in fp32 or under bf16 autocast. The bf16 configurations
(and the bf16 matmul peak) run only on a CPU that runs bf16 faster than fp32 (`timm_t2t.recipes.bf16_is_faster`):
elsewhere bf16 is slower than fp32, up to 300x without bf16 kernels. "CPU recipes inference" times every recipe on
this CPU for T2T-ViT-14 and DeiT-S in one configuration: which is fastest here. The competitors: this package's
models, `benchmarks/reference_t2t.py` (the reference's math, eager), timm's `deit_small_patch16_224` (9.2 GFLOP/image
against T2T-ViT-14's 9.57) and `vit_little_patch16_reg1_gap_256` (run at 224).

Reported per entry: img/s, ms per step, seconds from the model to its first step (compiling, quantizing), FLOPs per
image (counted once per model on the eager path), and the fraction of the matching matmul peak (fp32, bf16 or int8,
each measured in the same run) the step achieves. For the configurations the targets are judged on, one profiled step
splits the time into matrix multiplications (GEMMs, attention's matmuls and kernels, and the rest: a target that
needs more than these can give is out of reach.

    python benchmarks/benchmark.py   # CPU (and CUDA) into benchmarks/results
    python benchmarks/benchmark.py --device cpu --quick

Needs matplotlib for the plot and torchao for int8-static (pip install -e ".[bench]").
"""
import argparse
import contextlib
import copy
import dataclasses
import json
import logging
import os
import platform
import statistics
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple
from unittest import mock

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import timm_t2t  # noqa: E402,F401  registers the models, installed or not
from benchmarks.machine import cpu_name  # noqa: E402
from timm_t2t._text import HelpFormatter  # noqa: E402
from timm_t2t.allocator import keep_freed_memory, user_allocator_settings  # noqa: E402
from timm_t2t.attention import cpu_kernel_choices  # noqa: E402
from timm_t2t import tokens_to_token  # noqa: E402
from timm_t2t.tokens_to_token import TokensToToken  # noqa: E402
from timm_t2t.recipes import RecipeUnavailableError, bf16_is_faster, bf16_support, prepare  # noqa: E402
from benchmarks.reference_t2t import ReferenceT2TViT, reference_config  # noqa: E402

_logger = logging.getLogger('benchmark')

OURS, REFERENCE, TIMM = 'this package', 'reference', 'timm'
FUSED_FORCED = 'this package, TIMM_FUSED_ATTN=1'
DEIT_S, VIT_LITTLE = 'deit_small_patch16_224', 'vit_little_patch16_reg1_gap_256'
# profiler op names of the linear layers' matrix multiplications (eager, quantized, compiled) and of attention
_LINEAR_OPS = ('aten::mm', 'aten::addmm', 'aten::_int_mm', 'quantized::linear', 'mkldnn::_linear_pointwise',
               'onednn::qlinear_pointwise', 'mkl::_mkl_linear')
_ATTENTION_OPS = ('aten::bmm', 'aten::baddbmm', 'aten::_scaled_dot_product_flash_attention',
                  'aten::_scaled_dot_product_efficient_attention', 'aten::_scaled_dot_product_cudnn_attention')


@dataclasses.dataclass
class Entry:
    model: str
    implementation: str = OURS
    recipe: str = 'fp32'

    @property
    def key(self) -> str:
        return f'{self.model} | {self.implementation} | {self.recipe}'


@dataclasses.dataclass
class Config:
    """Entries timed against each other, interleaved, on the same task, input size and batch."""
    name: str
    task: str  # 'infer' or 'train'
    img_size: int
    batch_size: int
    entries: List[Entry]
    profile: bool = False  # split the steps into GEMM and other time


@dataclasses.dataclass
class Row:
    device: str
    config: str
    task: str
    model: str
    implementation: str
    recipe: str
    img_size: int
    batch_size: int
    img_per_s: float
    step_ms: float
    gflops_per_img: float
    peak: str
    peak_fraction: float
    linear_ms: Optional[float] = None  # the linear layers' matrix multiplications
    attention_ms: Optional[float] = None  # attention's matrix multiplications or fused kernels
    other_ms: Optional[float] = None
    t2t_ms: Optional[float] = None  # the T2T module's forward (its backward is not in the profiler's scope)
    t2t_flops_share: Optional[float] = None  # the T2T module's share of the model's FLOPs
    # the T2T module timed on its own (module_times): forward, forward + backward on the path users run
    # and on the plain path (autograd through the soft splits' unfold views), and its linear layers alone
    t2t_forward_ms: Optional[float] = None
    t2t_forward_backward_ms: Optional[float] = None
    t2t_forward_backward_plain_ms: Optional[float] = None
    t2t_forward_compiled_ms: Optional[float] = None  # the module alone under torch.compile (inductor's defaults)
    t2t_forward_backward_compiled_ms: Optional[float] = None
    t2t_linear_floor_ms: Optional[float] = None
    setup_s: Optional[float] = None  # from the model to its first step: preparing the recipe (compiling) and the step


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_interleaved(steps: Dict[str, Callable[[], None]], device: torch.device, warmup: int, rounds: int):
    """Median seconds per step of each callable, timed one step each per round, in turn."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    _sync(device)
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def matmul_peaks(device: torch.device, rounds: int = 5, bf16: bool = True) -> Dict[str, float]:
    """The machine's peaks (FLOP/s): the best large square matmul over sizes and tries, in fp32, bf16 (unless told
    not to) and int8."""
    sizes = (4096, 8192) if device.type == 'cuda' else (2048, 3072)
    peaks = {}
    for name in ('fp32', 'bf16', 'int8') if bf16 else ('fp32', 'int8'):
        best = 0.
        for n in sizes:
            if name == 'int8':
                a, b = (torch.randint(-128, 127, (n, n), dtype=torch.int8, device=device) for _ in range(2))
                matmul = (lambda a=a, b=b: torch._int_mm(a, b))
            else:
                dtype = torch.float32 if name == 'fp32' else torch.bfloat16
                a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
                matmul = (lambda a=a, b=b: a @ b)
            for _ in range(2):
                matmul()
            for _ in range(rounds):
                _sync(device)
                start = time.perf_counter()
                matmul()
                _sync(device)
                best = max(best, 2 * n ** 3 / (time.perf_counter() - start))
        peaks[name] = best
    return peaks


def _build(entry: Entry, img_size: int, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    if entry.implementation == REFERENCE:
        return ReferenceT2TViT(img_size=img_size, **reference_config(entry.model)).to(device)
    kwargs = dict(img_size=img_size)
    if entry.implementation == FUSED_FORCED:
        os.environ['TIMM_FUSED_ATTN'] = '1'  # read as each attention layer is built
        try:
            return timm.create_model(entry.model, **kwargs).to(device)
        finally:
            del os.environ['TIMM_FUSED_ATTN']
    return timm.create_model(entry.model, **kwargs).to(device)


def flops_per_image(model: torch.nn.Module, img_size: int, device: torch.device) -> Tuple[float, Optional[float]]:
    """FLOPs of one forward pass, and the T2T module's share of them (None for models without one), counted on the
    eager attention path (FlopCounterMode has no formula for every fused kernel; the math is the same)."""
    fused = [m for m in model.modules() if getattr(m, 'fused_attn', False)]
    for m in fused:
        m.fused_attn = False
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            model.eval()(torch.randn(1, 3, img_size, img_size, device=device))
    finally:
        for m in fused:
            m.fused_attn = True
    total = counter.get_total_flops()
    t2t = [sum(ops.values()) for name, ops in counter.get_flop_counts().items() if name.endswith('.tokens_to_token')]
    return total, (t2t[0] / total if t2t else None)


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


_TRAIN_AUTOCAST = {'fp32': None, 'bf16-autocast': torch.bfloat16, 'fp16-autocast': torch.float16}


def _autocast_dtype(recipe: str) -> Optional[torch.dtype]:
    return _TRAIN_AUTOCAST[recipe[:-len('-compiled')] if recipe.endswith('-compiled') else recipe]


def make_step(model: torch.nn.Module, entry: Entry, config: Config, device: torch.device) -> Callable[[], None]:
    x = torch.randn(config.batch_size, 3, config.img_size, config.img_size, device=device)
    if config.task == 'infer':
        if device.type == 'cuda':
            return _cuda_infer_step(model, entry.recipe, x)
        predict = prepare(model, entry.recipe, x)
        return lambda: predict(x)
    model.train()
    target = torch.randint(0, 1000, (config.batch_size,), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = _autocast_dtype(entry.recipe)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    run = torch.compile(model) if entry.recipe.endswith('-compiled') else model

    def step():
        with _autocast(device, dtype):
            loss = torch.nn.functional.cross_entropy(run(x), target)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return step


def _cuda_infer_step(model: torch.nn.Module, recipe: str, x: torch.Tensor) -> Callable[[], None]:
    """fp32, bf16 and fp16 autocast on a GPU, eager or under torch.compile ('...-compiled')."""
    model = model.eval()
    dtype = _autocast_dtype(recipe)
    run = torch.compile(model) if recipe.endswith('-compiled') else model

    def step():
        with torch.inference_mode(), _autocast(x.device, dtype):
            run(x)
    return step


_T2T_SCOPE = 'tokens_to_token'


def _mark_t2t_module(model: torch.nn.Module) -> None:
    """A profiler scope around the T2T module's forward, kept by the copies that recipes make of the model (a compiled
    graph leaves it out)."""
    module = getattr(model, _T2T_SCOPE, None)
    if module is None:
        return
    scope = []

    def enter(*_):
        scope.append(torch.autograd.profiler.record_function(_T2T_SCOPE))
        scope[-1].__enter__()

    def leave(*_):
        scope.pop().__exit__(None, None, None)
    module.register_forward_pre_hook(enter)
    module.register_forward_hook(leave)


def time_shares(step: Callable[[], None], device: torch.device) -> Tuple[float, float, Optional[float]]:
    """Fractions of one step's operator time (kernel time on a GPU) spent in the linear layers' matrix
    multiplications, in attention, and in the T2T module's forward (None for a model without one; compiled and
    quantized graphs hide it too; see `_mark_t2t_module`)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == 'cuda':
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        step()
        _sync(device)
    events = prof.key_averages()
    on_gpu = device.type == 'cuda'
    own = (lambda e: e.self_device_time_total) if on_gpu else (lambda e: e.self_cpu_time_total)
    total = sum(own(e) for e in events) or 1.
    linear = sum(own(e) for e in events if e.key.startswith(_LINEAR_OPS))
    attention = sum(own(e) for e in events if e.key.startswith(_ATTENTION_OPS))
    t2t = [e.device_time_total if on_gpu else e.cpu_time_total for e in events if e.key == _T2T_SCOPE]
    return linear / total, attention / total, (t2t[0] / total if t2t else None)


# The T2T module timed on its own: forward, and forward + backward on the path users run and on the plain path
# (autograd through the soft splits' unfold views, as before `soft_split_adjoint`; a forward without gradients runs the
# plain ops on both), beside its floor: the same module's linear layers alone on inputs of their real shapes.

_MODULE_ROUNDS = 7


def _plain_soft_splits(fn: Callable[[], None]) -> Callable[[], None]:
    def run():
        with mock.patch.object(tokens_to_token, '_soft_split_op', None):
            fn()
    return run


def _linear_floor(module: TokensToToken, x: torch.Tensor, dtype: Optional[torch.dtype]) -> Callable[[], None]:
    """Every linear layer of the module once, on a random input of the shape it sees for `x`."""
    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append((m, i[0].shape)))
             for m in module.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad(), _autocast(x.device, dtype):
        module(x)
    for hook in hooks:
        hook.remove()
    inputs = [(m, torch.randn(shape, device=x.device, dtype=dtype or m.weight.dtype)) for m, shape in shapes]

    def run():
        with torch.no_grad(), _autocast(x.device, dtype):
            for linear, data in inputs:
                linear(data)
    return run


def module_times(model: torch.nn.Module, x: torch.Tensor, autocast_dtype: Optional[torch.dtype],
                 rounds: int = _MODULE_ROUNDS) -> Optional[Dict[str, float]]:
    """ms of the T2T module of `model` on `x`: forward and forward + backward (gradients of its parameters), eager on
    the path users run, eager on the plain path, and compiled; and its linear layers alone; None for a model
    without one. The compiled ones compile in their warm-up call."""
    module = getattr(model, 'tokens_to_token', None)
    if not isinstance(module, TokensToToken):
        return None
    training = module.training
    compiled = torch.compile(module.forward_tokens)

    def forward(run=module.forward_tokens):
        with torch.no_grad(), _autocast(x.device, autocast_dtype):
            run(x)

    def forward_backward(run=module.forward_tokens):
        with _autocast(x.device, autocast_dtype):
            tokens = run(x)
        tokens.float().sum().backward()

    module.eval()
    try:
        seconds = time_interleaved({
            'forward': forward,
            'forward_backward': forward_backward, 'forward_backward_plain': _plain_soft_splits(forward_backward),
            'forward_compiled': lambda: forward(compiled),
            'forward_backward_compiled': lambda: forward_backward(compiled),
            'linear_floor': _linear_floor(module, x, autocast_dtype),
        }, x.device, warmup=1, rounds=rounds)
    finally:
        module.train(training)
        module.zero_grad(set_to_none=True)
    return {name: value * 1e3 for name, value in seconds.items()}


_MODULE_RECIPES = ('fp32', 'bf16', 'bf16-autocast')  # eager recipes whose T2T module is timed on its own


def t2t_module_row_fields(model: torch.nn.Module, entry: Entry, config: Config, device: torch.device) -> Dict:
    """The T2T module's own times for an eager entry of this package (see `module_times`)."""
    if entry.implementation != OURS or entry.recipe not in _MODULE_RECIPES:
        return {}
    x = torch.randn(config.batch_size, 3, config.img_size, config.img_size, device=device)
    if entry.recipe == 'bf16':
        model, x = copy.deepcopy(model).to(torch.bfloat16), x.to(torch.bfloat16)
    times = module_times(model, x, _autocast_dtype(entry.recipe) if entry.recipe != 'bf16' else None)
    return {f't2t_{name}_ms': value for name, value in (times or {}).items()}


def _peak_name(recipe: str) -> str:
    return 'int8' if recipe.startswith('int8') else ('fp32' if recipe.startswith('fp32') else 'bf16')


def run_config(config: Config, device: torch.device, warmup: int, rounds: int, peaks: Dict[str, float],
               flops_cache: Dict) -> List[Row]:
    steps, module_fields = {}, {}
    for entry in config.entries:
        try:
            model = _build(entry, config.img_size, device)
            key = (entry.model, entry.implementation == REFERENCE, config.img_size)
            if key not in flops_cache:
                flops_cache[key] = flops_per_image(model, config.img_size, device)
            if config.profile and not entry.recipe.endswith('compiled') and entry.recipe != 'int8-static':
                _mark_t2t_module(model)  # (graphs built by torch.compile run without the scope's hooks)
            if device.type == 'cpu':
                module_fields[entry.key] = t2t_module_row_fields(model, entry, config, device)
            start = time.perf_counter()
            step = make_step(model, entry, config, device)
            step()  # compiles, quantizes, and finds out whether it fits
            _sync(device)
            setup_s = time.perf_counter() - start
        except (ImportError, RecipeUnavailableError) as e:  # int8-static needs torchao, compiling a C++ compiler
            _logger.info(f'{config.name}: {entry.key} skipped ({e})')
            continue
        except torch.cuda.OutOfMemoryError:
            _logger.info(f'{config.name}: {entry.key} out of memory')
            torch.cuda.empty_cache()
            continue
        steps[entry.key] = (entry, step, setup_s)
    seconds = time_interleaved({k: s for k, (_, s, _) in steps.items()}, device, warmup, rounds)
    rows = []
    for key, (entry, step, setup_s) in steps.items():
        flops, t2t_flops_share = flops_cache[(entry.model, entry.implementation == REFERENCE, config.img_size)]
        flops *= 3 if config.task == 'train' else 1  # backward ~ 2x forward
        img_per_s = config.batch_size / seconds[key]
        peak = _peak_name(entry.recipe)
        row = Row(
            device=device.type, config=config.name, task=config.task, model=entry.model,
            implementation=entry.implementation, recipe=entry.recipe, img_size=config.img_size,
            batch_size=config.batch_size, img_per_s=img_per_s, step_ms=seconds[key] * 1e3,
            gflops_per_img=flops / 1e9, peak=peak, peak_fraction=flops * img_per_s / peaks[peak],
            t2t_flops_share=t2t_flops_share, setup_s=setup_s, **module_fields.get(key, {}))
        if config.profile:
            linear, attention, t2t = time_shares(step, device)
            row.linear_ms, row.attention_ms = row.step_ms * linear, row.step_ms * attention
            row.other_ms = row.step_ms - row.linear_ms - row.attention_ms
            row.t2t_ms = None if t2t is None else row.step_ms * t2t
        rows.append(row)
        _logger.info(f'{config.name}: {key}: {img_per_s:.1f} img/s')
    return rows


RECIPES_CONFIG = 'CPU recipes inference'


def cpu_configs(quick: bool, bf16: bool = True) -> List[Config]:
    """The CPU configurations; those in bf16 (and the bf16 recipes of RECIPES_CONFIG) only if `bf16`."""
    t2t = 't2t_vit_14'
    b = 4 if quick else 8
    recipes = ('fp32', 'fp32-compiled', 'int8-dynamic', 'int8-static') + (('bf16', 'bf16-compiled') if bf16 else ())
    configs = [
        Config('fp32 inference', 'infer', 224, b, [
            Entry(t2t), Entry(t2t, REFERENCE), Entry('t2t_vit_t_14'), Entry('t2t_vit_t_14', implementation=REFERENCE),
            Entry(DEIT_S, TIMM), Entry(VIT_LITTLE, TIMM)]),
        Config('bf16 autocast inference', 'infer', 224, b, [
            Entry(t2t, recipe='bf16-autocast'), Entry(t2t, REFERENCE, 'bf16-autocast'),
            Entry(t2t, FUSED_FORCED, 'bf16-autocast'), Entry(DEIT_S, TIMM, 'bf16-autocast'),
            Entry(VIT_LITTLE, TIMM, 'bf16-autocast')], profile=True),
        Config('bf16 weights inference', 'infer', 224, b, [
            Entry(t2t, recipe='bf16'), Entry(DEIT_S, TIMM, 'bf16'), Entry(VIT_LITTLE, TIMM, 'bf16')], profile=True),
        Config('bf16 compiled inference', 'infer', 224, b, [
            Entry(t2t, recipe='bf16-compiled'), Entry(DEIT_S, TIMM, 'bf16-compiled'),
            Entry(VIT_LITTLE, TIMM, 'bf16-compiled')], profile=True),
        Config('int8 inference', 'infer', 224, b, [
            Entry(t2t), Entry(t2t, recipe='int8-dynamic'), Entry(t2t, recipe='int8-static'),
            Entry(DEIT_S, TIMM, 'int8-dynamic'), Entry(DEIT_S, TIMM, 'int8-static')], profile=True),
        Config(RECIPES_CONFIG, 'infer', 224, b, [
            Entry(model, implementation, recipe) for model, implementation in ((t2t, OURS), (DEIT_S, TIMM))
            for recipe in recipes], profile=True),
        Config('bf16 autocast training step', 'train', 224, b, [
            Entry(t2t, recipe='bf16-autocast'), Entry(t2t, REFERENCE, 'bf16-autocast'),
            Entry(DEIT_S, TIMM, 'bf16-autocast'), Entry(VIT_LITTLE, TIMM, 'bf16-autocast')], profile=True),
    ]
    if not quick:
        configs += [
            Config('fp32 training step', 'train', 224, b, [
                Entry(t2t), Entry(t2t, REFERENCE), Entry(DEIT_S, TIMM)]),
            Config('fp32 inference at 384', 'infer', 384, 4, [
                Entry('t2t_vit_t_14'), Entry('t2t_vit_t_14', REFERENCE), Entry(t2t), Entry(t2t, REFERENCE)]),
        ]
    return configs if bf16 else [c for c in configs if not c.name.startswith('bf16')]


def cuda_configs(quick: bool) -> List[Config]:
    """Inference and training steps at batch 64 and 256 (224) and 64 / 16 (384), fp32 and bf16 / fp16 AMP, eager and
    compiled, for T2T-ViT-14, T2T-ViT_t-14, the reference's math of both, DeiT-S and ViT-Little."""
    models = [('t2t_vit_14', OURS), ('t2t_vit_14', REFERENCE), ('t2t_vit_t_14', OURS), ('t2t_vit_t_14', REFERENCE),
              (DEIT_S, TIMM), (VIT_LITTLE, TIMM)]
    recipes = ('bf16-autocast', 'bf16-autocast-compiled') if quick else (
        'fp32', 'bf16-autocast', 'fp16-autocast', 'bf16-autocast-compiled', 'fp16-autocast-compiled')
    shapes = [(224, 64, 64), (224, 256, 256)] + ([] if quick else [(384, 64, 16)])
    configs = []
    for size, infer_batch, train_batch in shapes:
        for task, batch in (('infer', infer_batch), ('train', train_batch)):
            for recipe in recipes:
                entries = [Entry(m, impl, recipe) for m, impl in models
                           if not (recipe.endswith('compiled') and impl == REFERENCE)]
                name = f'cuda {recipe} {"inference" if task == "infer" else "training step"} {size} b{batch}'
                configs.append(Config(name, task, size, batch, entries, profile=True))
    return configs


def _pick(rows: List[Row], config: str, model: str, implementation: str, recipe: str) -> Optional[Row]:
    match = [r for r in rows if (r.config, r.model, r.implementation, r.recipe) == (config, model, implementation,
                                                                                  recipe)]
    return match[0] if match else None


def _bound(ours: Row, other: Row, goal: float) -> Optional[str]:
    """Where the time of `ours` goes, and what a speed-up goal over `other` leaves for each part."""
    if ours.linear_ms is None:
        return None
    allowed = other.step_ms / goal
    if ours.linear_ms >= allowed:
        return (f'the linear layers\' matrix multiplications alone take {ours.linear_ms:.0f} ms of the {allowed:.0f} ms '
                f'the goal allows')
    rest = ours.attention_ms + ours.other_ms
    return (f'linear layers {ours.linear_ms:.0f} ms, attention {ours.attention_ms:.0f} ms, the rest '
            f'{ours.other_ms:.0f} ms; the goal leaves {allowed - ours.linear_ms:.0f} ms for attention and the rest '
            f'({(allowed - ours.linear_ms) / rest:.0%} of their time today)')


# (configuration, recipe, least T2T-ViT-14 / DeiT-S speed): the targets of issue 25, one CPU, one run, batch 8 at 224
_DEIT_S_TARGETS = (
    ('bf16 weights inference', 'bf16', 0.82),
    ('bf16 compiled inference', 'bf16-compiled', 0.82),
    ('bf16 autocast training step', 'bf16-autocast', 0.90),
    ('fp32 training step', 'fp32', 0.88),
    ('fp32 inference', 'fp32', 0.91),
)
_MODULE_SHARE_TARGET = 0.13  # the T2T module's share of a bf16-weights forward, at most


def cpu_targets(rows: List[Row]) -> List[dict]:
    """The targets on this CPU, judged by ratios from this run: T2T-ViT-14 against DeiT-S in the same recipe, and the
    T2T module's share of a bf16-weights forward."""
    t2t = 't2t_vit_14'
    checks = []
    for config, recipe, goal in _DEIT_S_TARGETS:
        ours, deit = _pick(rows, config, t2t, OURS, recipe), _pick(rows, config, DEIT_S, TIMM, recipe)
        ratio = ours.img_per_s / deit.img_per_s if ours and deit else None
        checks.append(dict(target=f'{t2t} vs {DEIT_S}, {config}', ratio=ratio, goal=f'>= {goal:g}',
                           met=None if ratio is None else ratio >= goal,
                           bound=ours and deit and _bound(ours, deit, goal)))
    row = _pick(rows, 'bf16 weights inference', t2t, OURS, 'bf16')
    share = row.t2t_ms / row.step_ms if row and row.t2t_ms is not None else None
    bound = None
    if share is not None and row.t2t_linear_floor_ms is not None:
        bound = (f'T2T module forward {row.t2t_ms:.1f} of {row.step_ms:.0f} ms; its linear layers alone take '
                 f'{row.t2t_linear_floor_ms:.1f} ms, the goal leaves {_MODULE_SHARE_TARGET * row.step_ms:.1f} ms')
    checks.append(dict(target=f'{t2t} bf16 weights inference: T2T module share of the forward (FLOP share '
                              f'{row.t2t_flops_share:.1%})' if row else f'{t2t} T2T module share', ratio=share,
                       goal=f'<= {_MODULE_SHARE_TARGET:g}',
                       met=None if share is None else share <= _MODULE_SHARE_TARGET,
                       bound=bound))
    return checks


def format_table(rows: List[Row]) -> str:
    header = f'{"config":30} {"model":32} {"implementation":31} {"recipe":14} {"img/s":>7} {"ms":>7} ' \
             f'{"of peak":>7} {"linear/attn/rest ms":>20} {"T2T fwd: ms, share (FLOPs)":>27} {"setup s":>8}'
    lines = [header, '-' * len(header)]
    module_lines = []
    for r in rows:
        if r.t2t_forward_ms is not None:
            module_lines.append(
                f'{r.config:30} {r.model:14} {r.recipe:14} {r.t2t_forward_ms:9.1f} '
                f'{r.t2t_forward_backward_ms:9.1f} {r.t2t_forward_backward_plain_ms:9.1f} '
                f'{r.t2t_forward_compiled_ms:9.1f} {r.t2t_forward_backward_compiled_ms:9.1f} '
                f'{r.t2t_linear_floor_ms:9.1f} {r.t2t_flops_share:11.1%}')
        split = f'{r.linear_ms:.0f}/{r.attention_ms:.0f}/{r.other_ms:.0f}' if r.linear_ms is not None else ''
        t2t = f'{r.t2t_ms:.0f}, {r.t2t_ms / r.step_ms:.0%} ({r.t2t_flops_share:.0%})' if r.t2t_ms is not None else ''
        lines.append(f'{r.config:30} {r.model:32} {r.implementation:31} {r.recipe:14} {r.img_per_s:7.1f} '
                     f'{r.step_ms:7.0f} {r.peak_fraction:7.0%} {split:>20} {t2t:>27} {r.setup_s:8.1f}')
    if module_lines:
        module_header = (f'{"T2T module alone, ms":30} {"model":14} {"recipe":14} {"fwd":>9} '
                         f'{"fwd+bwd":>9} {"f+b plain":>9} {"fwd comp.":>9} {"f+b comp.":>9} {"linears":>9} '
                         f'{"FLOP share":>11}')
        lines += ['', module_header, '-' * len(module_header)] + module_lines
    return '\n'.join(lines)


def plot(rows: List[Row], path: Path, processor: str) -> None:
    """img/s of T2T-ViT-14 (this package, the reference) and DeiT-S in each CPU recipe, one bar group per config, on
    the CPU named."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    cpu = [r for r in rows if r.device == 'cpu' and r.img_size == 224 and r.implementation != FUSED_FORCED]
    several = {r.config for r in cpu if len({c.recipe for c in cpu if c.config == r.config}) > 1}

    def group_of(r: Row) -> str:  # a configuration of several recipes: a group per recipe
        return f'{r.config}\n{r.recipe}' if r.config in several else r.config
    groups = list(dict.fromkeys(group_of(r) for r in cpu))
    series = list(dict.fromkeys(f'{r.model} ({r.implementation})' for r in cpu))
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(groups)), 5))
    width = 0.8 / len(series)
    for i, name in enumerate(series):
        xs, ys = [], []
        for j, group in enumerate(groups):
            match = [r for r in cpu if f'{r.model} ({r.implementation})' == name and group_of(r) == group]
            if match:
                xs.append(j + i * width)
                ys.append(match[0].img_per_s)
        ax.bar(xs, ys, width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))])
    ax.set_xticklabels(groups, fontsize=7)
    ax.set(ylabel='images / s (batch 8, 224 px)')
    ax.set_title(f'CPU throughput by recipe (same run)\n{textwrap.fill(processor, 110)}', fontsize=9)
    ax.grid(True, axis='y', alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='auto',
                        help='auto: CPU, then CUDA too when present')
    parser.add_argument('--quick', action='store_true', help='fewer rounds and configurations (a smoke run)')
    parser.add_argument('--out', type=Path, default=Path(__file__).parent / 'results', help='output folder')
    parser.add_argument('--configs', nargs='+', metavar='TEXT',
                        help='run only the configurations whose name contains one of these (e.g. "bf16 weights")')
    parser.add_argument('--name', help='base name of the JSON and PNG (default: benchmark, benchmark_cuda)')
    parser.add_argument('--default-malloc', action='store_true',
                        help="leave glibc's malloc thresholds as they are, as in a library user's process (by "
                             'default the benchmark raises them, as the timm-t2t command does: timm_t2t.allocator)')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    kept_freed_memory = False if args.default_malloc else keep_freed_memory()

    devices = [torch.device('cpu')] if args.device in ('auto', 'cpu') else []
    if args.device == 'cuda' or (args.device == 'auto' and torch.cuda.is_available()):
        devices.append(torch.device('cuda'))
    warmup, rounds = (1, 3) if args.quick else (2, 9)
    support = bf16_support()
    bf16 = bf16_is_faster(support)
    result = dict(torch=torch.__version__, timm=timm.__version__, platform=platform.platform(), cpu=cpu_name(),
                  threads=torch.get_num_threads(), cpu_bf16=dict(dataclasses.asdict(support), faster_than_fp32=bf16),
                  matmul_peak_gflops={}, rows=[], targets=[],
                  malloc_env={k: v for k, v in os.environ.items() if k.startswith('MALLOC_')},
                  allocator=dict(kept_freed_memory=kept_freed_memory, user_settings=user_allocator_settings()))
    if 'cpu' in [d.type for d in devices] and not bf16:
        _logger.info(f'This CPU runs bf16 slower than fp32 ({support}): its bf16 configurations are left out.')
    rows: List[Row] = []
    for device in devices:
        if device.type == 'cuda':
            result['gpu'] = torch.cuda.get_device_name(device)
            torch.backends.cuda.matmul.allow_tf32 = False
        peaks = matmul_peaks(device, bf16=bf16 or device.type == 'cuda')
        result['matmul_peak_gflops'][device.type] = {k: v / 1e9 for k, v in peaks.items()}
        _logger.info(f'{device.type} matmul peaks: ' + ', '.join(f'{k} {v / 1e9:.0f}' for k, v in peaks.items()))
        configs = cpu_configs(args.quick, bf16) if device.type == 'cpu' else cuda_configs(args.quick)
        if args.configs:
            configs = [c for c in configs if any(text in c.name for text in args.configs)]
        flops_cache = {}
        for config in configs:
            rows += run_config(config, device, warmup, rounds, peaks, flops_cache)
    if devices[0].type == 'cpu':
        result['targets'] = cpu_targets(rows)
    result['rows'] = [dataclasses.asdict(r) for r in rows]
    result['cpu_attention_kernels'] = [dict(zip(('dtype', 'grad', 'head_dim', 'batch_x_heads', 'tokens', 'threads'),
                                                map(str, key)), kernel=kernel)
                                       for key, kernel in cpu_kernel_choices().items()]

    args.out.mkdir(parents=True, exist_ok=True)
    name = args.name or ('benchmark' if devices[0].type == 'cpu' else 'benchmark_cuda')
    (args.out / f'{name}.json').write_text(json.dumps(result, indent=2))
    print(format_table(rows))
    for device, peaks in result['matmul_peak_gflops'].items():
        print(f'\nmatmul peaks on {device} (GFLOP/s, GOP/s for int8): ' + ', '.join(
            f'{k} {v:.0f}' for k, v in peaks.items()))
    for t in result['targets']:
        status = 'n/a' if t['met'] is None else ('met' if t['met'] else 'NOT met')
        ratio = 'n/a' if t['ratio'] is None else f'{t["ratio"]:.2f}'
        print(f'target {t["target"]}: {ratio} (goal {t["goal"]}): {status}' + (f'; {t["bound"]}' if t['bound'] else ''))
    if devices[0].type == 'cpu':
        plot(rows, args.out / ('cpu_recipes.png' if args.name is None else f'{args.name}.png'), result['cpu'])
    print(f'\nwrote {args.out / (name + ".json")}')


if __name__ == '__main__':
    main()
