"""Speed and memory of timm-t2t's T2T-ViT against the reference's math and timm's DeiT, in one process and one run.

For each configuration the implementations compared are timed interleaved, round by round, so every ratio comes from
the same conditions; the median round is reported. Peak memory is the high-water mark of tensor memory allocated during
one step (weights excluded): from the profiler's allocation events on CPU, from the caching allocator on CUDA. FLOPs
per image are counted by torch's FlopCounterMode, and the fraction of peak compares achieved FLOP/s with a large fp32
(or bf16) matmul timed in the same run.

    python benchmarks/benchmark.py                 # CPU (and CUDA when present); table, JSON and PNG in benchmarks/results
    python benchmarks/benchmark.py --device cpu --quick

Needs matplotlib for the plot (pip install -e ".[bench]").
"""
import argparse
import contextlib
import dataclasses
import json
import logging
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.reference_t2t import ReferenceT2TViT, reference_config  # noqa: E402

_logger = logging.getLogger('benchmark')

# T2T-ViT models are this package's; REFERENCE is benchmarks/reference_t2t.py; DeiT models are timm's.
EAGER, COMPILED, REFERENCE = 'eager', 'compiled', 'reference'


@dataclasses.dataclass
class Row:
    device: str
    precision: str
    task: str  # 'infer' or 'train'
    model: str
    implementation: str
    img_size: int
    batch_size: int
    img_per_s: float
    step_ms: float
    peak_mem_mb: Optional[float] = None
    gflops_per_img: Optional[float] = None
    peak_fraction: Optional[float] = None


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


def peak_memory_bytes(step: Callable[[], None], device: torch.device) -> int:
    """High-water mark of tensor memory allocated while `step` runs, above what was allocated before it."""
    if device.type == 'cuda':
        _sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == '[memory]'), key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def flops_per_image(model: torch.nn.Module, img_size: int, device: torch.device) -> float:
    """FLOPs of one forward pass, counted on the eager attention path: FlopCounterMode has no formula for every
    fused attention kernel (the CPU flash kernel among them), and the math is the same."""
    fused = [m for m in model.modules() if getattr(m, 'fused_attn', False)]
    for m in fused:
        m.fused_attn = False
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            model(torch.randn(1, 3, img_size, img_size, device=device))
    finally:
        for m in fused:
            m.fused_attn = True
    return counter.get_total_flops()


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, rounds: int = 10) -> float:
    """The machine's peak: the best FLOP/s of a large square matmul over several sizes and tries."""
    best = 0.
    for n in ((4096, 8192) if device.type == 'cuda' else (2048, 3072)):
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        for _ in range(2):
            a @ b
        for _ in range(rounds):
            _sync(device)
            start = time.perf_counter()
            a @ b
            _sync(device)
            best = max(best, 2 * n ** 3 / (time.perf_counter() - start))
    return best


def build(implementation: str, model_name: str, img_size: int, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    if implementation == REFERENCE:
        model = ReferenceT2TViT(img_size=img_size, **reference_config(model_name))
    else:
        model = timm.create_model(model_name, img_size=img_size)
    model = model.to(device)
    return torch.compile(model) if implementation == COMPILED else model


def _autocast(device: torch.device, precision: str):
    if precision == 'fp32':
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def make_step(model: torch.nn.Module, task: str, batch_size: int, img_size: int, device: torch.device, precision: str):
    x = torch.randn(batch_size, 3, img_size, img_size, device=device)
    if task == 'infer':
        model.eval()

        def step():
            with torch.inference_mode(), _autocast(device, precision):
                model(x)
        return step
    model.train()
    target = torch.randint(0, 1000, (batch_size,), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with _autocast(device, precision):
            loss = torch.nn.functional.cross_entropy(model(x), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


@dataclasses.dataclass
class Config:
    """Models and implementations timed against each other, interleaved, on the same input size and batch."""
    task: str
    img_size: int
    batch_size: int
    entries: List[Tuple[str, str]]  # (model name, implementation)
    memory: bool = True


def run_config(config: Config, device: torch.device, precision: str, warmup: int, rounds: int, peak: float,
               flops_cache: Dict) -> List[Row]:
    """Time one configuration's entries against each other; one row per entry."""
    steps, models = {}, {}
    for entry in config.entries:
        model_name, impl = entry
        try:
            model = build(impl, model_name, config.img_size, device)
            step = make_step(model, config.task, config.batch_size, config.img_size, device, precision)
            step()  # compiles, and finds out whether it fits
        except torch.cuda.OutOfMemoryError:
            _logger.info(f'{config.task} {model_name} {impl} {config.img_size} b{config.batch_size}: out of memory')
            torch.cuda.empty_cache()
            continue
        models[entry], steps[entry] = model, step
    seconds = time_interleaved(steps, device, warmup, rounds)
    rows = []
    for (model_name, impl), step in steps.items():
        key = (model_name, impl == REFERENCE, config.img_size)
        if key not in flops_cache:
            model = models[(model_name, impl)]
            flops_cache[key] = flops_per_image(getattr(model, '_orig_mod', model).eval(), config.img_size, device)
        flops = flops_cache[key] * (3 if config.task == 'train' else 1)  # backward ~ 2x forward
        img_per_s = config.batch_size / seconds[(model_name, impl)]
        rows.append(Row(
            device=device.type, precision=precision, task=config.task, model=model_name, implementation=impl,
            img_size=config.img_size, batch_size=config.batch_size, img_per_s=img_per_s,
            step_ms=seconds[(model_name, impl)] * 1e3,
            peak_mem_mb=peak_memory_bytes(step, device) / 2 ** 20 if config.memory else None,
            gflops_per_img=flops / 1e9, peak_fraction=flops * img_per_s / peak,
        ))
        _logger.info(f'{config.task} {model_name} {impl} {config.img_size} b{config.batch_size}: '
                     f'{img_per_s:.1f} img/s')
    return rows


def _versus_reference(*models: str) -> List[Tuple[str, str]]:
    return [(m, impl) for m in models for impl in (EAGER, REFERENCE)]


def cpu_configs(quick: bool) -> List[Config]:
    deit_s, deit_t = 'deit_small_patch16_224', 'deit_tiny_patch16_224'
    configs = [
        Config('infer', 224, 8, _versus_reference('t2t_vit_14') + [('t2t_vit_14', COMPILED), (deit_s, EAGER),
                                                                    (deit_s, COMPILED)]),
        Config('infer', 224, 8, _versus_reference('t2t_vit_7') + [(deit_t, EAGER)]),
        Config('infer', 224, 8, _versus_reference('t2t_vit_t_14')),
        Config('train', 224, 8, _versus_reference('t2t_vit_14', 't2t_vit_t_14') + [(deit_s, EAGER)]),
        Config('infer', 384, 4, _versus_reference('t2t_vit_t_14', 't2t_vit_14') + [(deit_s, EAGER)]),
    ]
    sweep = [
        Config('infer', size, 4, _versus_reference('t2t_vit_14', 't2t_vit_t_14') + [(deit_s, EAGER)], memory=False)
        for size in ((160,) if quick else (160, 288, 448))
    ]
    return configs + sweep


def cuda_configs(quick: bool) -> List[Config]:
    sizes = (224, 384) if quick else (224, 384, 512, 768)
    entries = _versus_reference('t2t_vit_14', 't2t_vit_t_14') + [
        ('t2t_vit_14', COMPILED), ('t2t_vit_t_14', COMPILED),
        ('deit_small_patch16_224', EAGER), ('deit_small_patch16_224', COMPILED)]
    return [
        Config(task, size, 64 if size <= 384 else 16, entries)
        for size in sizes for task in ('infer', 'train')
    ]


def output_agreement(device: torch.device) -> Dict[str, float]:
    """Max |logit| difference of the fused, compiled and eager-attention paths (fp32, same weights)."""
    x = torch.randn(2, 3, 224, 224, device=device)
    result = {}
    for name in ('t2t_vit_14', 't2t_vit_t_14'):
        model = build(EAGER, name, 224, device).eval()
        with torch.no_grad():
            fused = model(x)
            result[f'{name} compiled vs eager'] = (torch.compile(model)(x) - fused).abs().max().item()
            timm.layers.set_fused_attn(False)
            unfused = build(EAGER, name, 224, device).eval()
            timm.layers.set_fused_attn(True)
            result[f'{name} fused vs eager attention'] = (unfused(x) - fused).abs().max().item()
    return result


def _ratio(rows: List[Row], num: dict, den: dict, field: str = 'img_per_s') -> Optional[float]:
    def pick(spec):
        match = [r for r in rows if all(getattr(r, k) == v for k, v in spec.items())]
        return getattr(match[0], field) if match else None
    a, b = pick(num), pick(den)
    return a / b if a and b else None


def cpu_targets(rows: List[Row]) -> List[dict]:
    """The issue's targets on this CPU, judged by ratios from this run."""
    infer224 = dict(device='cpu', task='infer', img_size=224, precision='fp32')
    t2t14 = dict(infer224, model='t2t_vit_14')
    tt14_384 = dict(device='cpu', task='infer', img_size=384, model='t2t_vit_t_14', precision='fp32')
    train = dict(device='cpu', task='train', img_size=224, model='t2t_vit_14', precision='fp32')
    checks = [
        ('t2t_vit_t_14 @384 b4 throughput vs reference', '>=', 2.5,
         _ratio(rows, dict(tt14_384, implementation=EAGER), dict(tt14_384, implementation=REFERENCE))),
        ('t2t_vit_t_14 @384 b4 peak memory vs reference', '<=', 1 / 3,
         _ratio(rows, dict(tt14_384, implementation=EAGER), dict(tt14_384, implementation=REFERENCE), 'peak_mem_mb')),
        ('t2t_vit_14 @224 b8 eager inference vs reference', '>=', 1.1,
         _ratio(rows, dict(t2t14, implementation=EAGER), dict(t2t14, implementation=REFERENCE))),
        ('t2t_vit_14 @224 b8 compiled inference vs reference', '>=', 1.3,
         _ratio(rows, dict(t2t14, implementation=COMPILED), dict(t2t14, implementation=REFERENCE))),
        ('t2t_vit_14 @224 b8 training step vs reference', '>=', 1.1,
         _ratio(rows, dict(train, implementation=EAGER), dict(train, implementation=REFERENCE))),
        ('t2t_vit_14 @224 b8 inference vs deit_small_patch16_224', '>=', 0.95,
         _ratio(rows, dict(t2t14, implementation=EAGER),
                dict(infer224, model='deit_small_patch16_224', implementation=EAGER))),
    ]
    return [
        dict(target=name, ratio=value, goal=f'{op} {goal:.3g}',
             met=None if value is None else (value >= goal if op == '>=' else value <= goal))
        for name, op, goal, value in checks
    ]


def format_table(rows: List[Row]) -> str:
    header = f'{"device":6} {"prec":5} {"task":5} {"model":24} {"implementation":18} {"size":>4} {"batch":>5} ' \
             f'{"img/s":>8} {"ms/step":>9} {"peak MB":>9} {"GFLOP/img":>9} {"of peak":>7}'
    lines = [header, '-' * len(header)]
    for r in rows:
        mem = f'{r.peak_mem_mb:9.0f}' if r.peak_mem_mb is not None else f'{"":9}'
        lines.append(
            f'{r.device:6} {r.precision:5} {r.task:5} {r.model:24} {r.implementation:18} {r.img_size:4d} '
            f'{r.batch_size:5d} {r.img_per_s:8.1f} {r.step_ms:9.1f} {mem} {r.gflops_per_img:9.2f} '
            f'{r.peak_fraction:7.0%}')
    return '\n'.join(lines)


def plot(rows: List[Row], path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    groups = {}
    for r in rows:
        if r.task == 'infer' and r.precision == 'fp32':
            groups.setdefault((r.device, r.batch_size), {}).setdefault(f'{r.model} ({r.implementation})', []).append(r)
    panels = [(k, v) for k, v in groups.items() if any(len(series) > 1 for series in v.values())]
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5), squeeze=False)
    for ax, ((device, batch), series) in zip(axes[0], panels):
        for label, points in sorted(series.items()):
            points = sorted(points, key=lambda r: r.img_size)
            if len(points) > 1:
                ax.plot([p.img_size for p in points], [p.img_per_s for p in points], marker='o', label=label)
        ax.set(title=f'{device}, batch {batch}, fp32 inference', xlabel='image size (px)', ylabel='images / s',
               yscale='log')
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='auto',
                        help='auto: CPU, then CUDA too when present')
    parser.add_argument('--quick', action='store_true', help='fewer rounds and sizes (a smoke run)')
    parser.add_argument('--out', type=Path, default=Path(__file__).parent / 'results', help='output folder')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')

    devices = [torch.device('cpu')] if args.device in ('auto', 'cpu') else []
    if args.device == 'cuda' or (args.device == 'auto' and torch.cuda.is_available()):
        devices.append(torch.device('cuda'))
    warmup, rounds = (1, 2) if args.quick else (2, 7)
    result = dict(
        torch=torch.__version__, timm=timm.__version__, platform=platform.platform(),
        threads=torch.get_num_threads(), rows=[], targets=[], matmul_peak_gflops={}, output_agreement={})
    rows: List[Row] = []
    for device in devices:
        if device.type == 'cuda':
            result['gpu'] = torch.cuda.get_device_name(device)
            torch.backends.cuda.matmul.allow_tf32 = False
        precisions = ['fp32'] if device.type == 'cpu' else ['fp32', 'bf16']
        configs = cpu_configs(args.quick) if device.type == 'cpu' else cuda_configs(args.quick)
        flops_cache = {}
        for precision in precisions:
            dtype = torch.float32 if precision == 'fp32' else torch.bfloat16
            peak = matmul_peak_flops(device, dtype)
            result['matmul_peak_gflops'][f'{device.type} {precision}'] = peak / 1e9
            _logger.info(f'{device.type} {precision} matmul peak: {peak / 1e9:.0f} GFLOP/s')
            for config in configs:
                rows += run_config(config, device, precision, warmup, rounds, peak, flops_cache)
        result['output_agreement'][device.type] = output_agreement(device)
    result['targets'] = cpu_targets(rows) if devices[0].type == 'cpu' else []
    result['rows'] = [dataclasses.asdict(r) for r in rows]

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / 'benchmark.json').write_text(json.dumps(result, indent=2))
    plot(rows, args.out / 'throughput_vs_size.png')
    print(format_table(rows))
    print('\nmatmul peak (GFLOP/s): ' + ', '.join(f'{k} {v:.0f}' for k, v in result['matmul_peak_gflops'].items()))
    for device, diffs in result['output_agreement'].items():
        print(f'output agreement on {device}: ' + ', '.join(f'{k} {v:.1e}' for k, v in diffs.items()))
    for t in result['targets']:
        status = 'n/a' if t['met'] is None else ('met' if t['met'] else 'NOT met')
        ratio = 'n/a' if t['ratio'] is None else f'{t["ratio"]:.2f}'
        print(f'target {t["target"]}: {ratio} (goal {t["goal"]}): {status}')
    print(f'\nwrote {args.out / "benchmark.json"} and {args.out / "throughput_vs_size.png"}')


if __name__ == '__main__':
    main()
