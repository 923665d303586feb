"""The machine a recorded result comes from."""
import os
import platform

# Variables that make torch's libraries use narrower instruction sets than the CPU has: oneDNN (convolutions, bf16 and
# int8 kernels), ATen's own vectorized kernels, MKL (fp32 matrix products) and FBGEMM (int8 dynamic quantization).
ISA_LIMITS = ('ONEDNN_MAX_CPU_ISA', 'DNNL_MAX_CPU_ISA', 'ATEN_CPU_CAPABILITY', 'MKL_ENABLE_INSTRUCTIONS',
              'FBGEMM_ENABLE_INSTRUCTIONS')
# An AVX2-only CPU (no AVX-512, no bf16) on one that has more: every library above limited to AVX2. With the first
# two alone, MKL's fp32 and FBGEMM's int8 still run AVX-512 (1.7x and 2.8x faster than under AVX2 on a Xeon with AMX).
AVX2_EMULATION = dict(ONEDNN_MAX_CPU_ISA='AVX2', ATEN_CPU_CAPABILITY='avx2', MKL_ENABLE_INSTRUCTIONS='AVX2',
                      FBGEMM_ENABLE_INSTRUCTIONS='AVX2')


def cpu_name(cpuinfo: str = '/proc/cpuinfo') -> str:
    """The processor's model name, its family and model numbers (which tell generations apart where the name does
    not, as 'AMD EPYC' on a virtual machine) and the instruction sets that decide its low-precision speed; any
    ISA_LIMITS set are named after them, for a run that emulates a narrower CPU."""
    name, fields, flags = platform.processor() or platform.machine(), {}, set()
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(':')
                key = key.strip()
                if key == 'model name':
                    name = value.strip()
                elif key in ('cpu family', 'model'):
                    fields[key] = value.strip()
                elif key == 'flags':
                    flags = set(value.split())
                    break
    except OSError:
        pass
    isa = [f for f in ('avx2', 'avx512f', 'avx512_bf16', 'avx512_vnni', 'amx_bf16', 'amx_int8') if f in flags]
    details = [f'family {fields["cpu family"]}, model {fields["model"]}'] if len(fields) == 2 else []
    if isa:
        details.append(', '.join(isa))
    name = f'{name} ({"; ".join(details)})' if details else name
    limits = [f'{key}={os.environ[key]}' for key in ISA_LIMITS if os.environ.get(key)]
    return f'{name}, emulating a narrower CPU: {" ".join(limits)}' if limits else name
