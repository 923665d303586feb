"""What the memory allocator does to T2T-ViT-14 on the CPU: one process per allocator setting, each timing, interleaved,

- the T2T module on the whole batch at once (`tokens_to_token(x)`, as `forward_intermediates` runs it),
- T2T-ViT-14, whose forward tokenizes the batch in slices (`TokensToToken.forward_tokens`),
- T2T-ViT-14 with its module run on the whole batch at once (as before the slices),
- DeiT-S,

with the page faults of the timed rounds. The settings: glibc's malloc as it comes, its thresholds raised by
`timm_t2t.allocator.keep_freed_memory` (what the timm-t2t command does), the same through the environment, and
jemalloc and tcmalloc preloaded where they are installed (Debian: libjemalloc2, libtcmalloc-minimal4).

    python benchmarks/allocator.py                 # bf16 weights and fp32, batch 8 at 224; table and JSON
"""
import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional
from unittest import mock

PRELOADS = {'jemalloc': 'libjemalloc.so.2', 'tcmalloc': 'libtcmalloc_minimal.so.4'}
THRESHOLDS_ENV = {'MALLOC_MMAP_THRESHOLD_': str(4 << 30), 'MALLOC_TRIM_THRESHOLD_': str(4 << 30)}
SETTINGS = ('glibc default', 'keep_freed_memory', 'MALLOC_ thresholds', 'jemalloc', 'tcmalloc')


@dataclasses.dataclass
class Row:
    setting: str
    precision: str
    module_whole_batch_ms: float
    t2t_vit_14_ms: float
    t2t_vit_14_unsliced_ms: float
    deit_s_ms: float
    page_faults_per_round: int

    @property
    def ratio(self) -> float:
        return self.deit_s_ms / self.t2t_vit_14_ms


def _library(name: str) -> Optional[str]:
    """The path of a shared library the dynamic linker knows, or None."""
    try:
        listing = subprocess.run(['ldconfig', '-p'], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    paths = [line.split('=>')[-1].strip() for line in listing.splitlines() if line.strip().startswith(name)]
    return paths[0] if paths else None


def _environment(setting: str) -> Optional[Dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith('MALLOC_') and k != 'LD_PRELOAD'}
    if setting == 'MALLOC_ thresholds':
        env.update(THRESHOLDS_ENV)
    elif setting in PRELOADS:
        path = _library(PRELOADS[setting])
        if path is None:
            return None
        env['LD_PRELOAD'] = path
    return env


def measure(setting: str, precision: str, rounds: int) -> Row:
    """In this process: the three timings under the allocator this process runs with."""
    import timm
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import timm_t2t  # noqa: F401  registers the models, installed or not
    from benchmarks.benchmark import time_interleaved
    from timm_t2t import tokens_to_token
    from timm_t2t.allocator import keep_freed_memory

    if setting == 'keep_freed_memory' and not keep_freed_memory():
        raise RuntimeError('keep_freed_memory() did nothing here (not glibc, or allocator settings in force)')
    dtype = {'bf16': torch.bfloat16, 'fp32': torch.float32}[precision]
    torch.manual_seed(0)
    x = torch.randn(8, 3, 224, 224).to(dtype)
    t2t = timm.create_model('t2t_vit_14').eval().to(dtype)
    deit = timm.create_model('deit_small_patch16_224').eval().to(dtype)
    def unsliced():
        with mock.patch.object(tokens_to_token, 'SLICE_TOKENS', x.shape[0] * x.shape[2] * x.shape[3]):
            t2t(x)

    steps = {'module': lambda: t2t.tokens_to_token(x), 't2t': lambda: t2t(x), 'unsliced': unsliced,
             'deit': lambda: deit(x)}
    with torch.inference_mode():
        time_interleaved(steps, x.device, warmup=2, rounds=1)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        seconds = time_interleaved(steps, x.device, warmup=0, rounds=rounds)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return Row(setting, precision, seconds['module'] * 1e3, seconds['t2t'] * 1e3, seconds['unsliced'] * 1e3,
               seconds['deit'] * 1e3, faults // rounds)


def format_table(rows: List[Row]) -> str:
    header = (f'{"allocator":20} {"precision":9} {"T2T module, whole batch":>24} {"T2T-ViT-14":>11} '
              f'{"(unsliced)":>11} {"DeiT-S":>9} {"T2T-ViT-14/DeiT-S":>18} {"page faults a round":>20}')
    lines = [header, '-' * len(header)]
    lines += [f'{r.setting:20} {r.precision:9} {r.module_whole_batch_ms:21.1f} ms {r.t2t_vit_14_ms:8.1f} ms '
              f'{r.t2t_vit_14_unsliced_ms:8.1f} ms {r.deit_s_ms:6.1f} ms {r.ratio:18.2f} '
              f'{r.page_faults_per_round:20d}' for r in rows]
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    from timm_t2t._text import HelpFormatter

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument('--precisions', nargs='+', choices=['bf16', 'fp32'], default=['bf16', 'fp32'])
    parser.add_argument('--rounds', type=int, default=9, help='timed rounds a process (default: %(default)s)')
    parser.add_argument('--out', type=Path, default=Path(__file__).parent / 'results' / 'allocator_cpu.json',
                        help='the JSON (default: %(default)s)')
    parser.add_argument('--child', nargs=2, metavar=('SETTING', 'PRECISION'), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(dataclasses.asdict(measure(*args.child, rounds=args.rounds))))
        return

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.machine import cpu_name

    rows, skipped = [], []
    for precision in args.precisions:
        for setting in SETTINGS:
            env = _environment(setting)
            if env is None:
                skipped.append(f'{setting}: {PRELOADS[setting]} is not installed')
                continue
            done = subprocess.run([sys.executable, __file__, '--child', setting, precision, '--rounds',
                                   str(args.rounds)], capture_output=True, text=True, env=env)
            if done.returncode != 0:
                raise SystemExit(f'{setting}, {precision}: {done.stderr.strip().splitlines()[-1]}')
            rows.append(Row(**json.loads(done.stdout.strip().splitlines()[-1])))
    import timm
    import torch

    print(format_table(rows))
    for line in skipped:
        print(f'skipped: {line}')
    result = dict(cpu=cpu_name(), platform=platform.platform(), libc=' '.join(platform.libc_ver()),
                  torch=torch.__version__, timm=timm.__version__, threads=torch.get_num_threads(), batch_size=8,
                  img_size=224, rounds=args.rounds, skipped=skipped,
                  rows=[dict(dataclasses.asdict(r), t2t_vit_14_vs_deit_s=r.ratio) for r in rows])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f'\nwrote {args.out}')


if __name__ == '__main__':
    main()
