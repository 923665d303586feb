"""The machine a recorded result comes from."""
import platform


def cpu_name() -> str:
    """The processor's model name and the instruction sets that decide its low-precision speed."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                key, _, value = line.partition(':')
                if key.strip() == 'model name':
                    name = value.strip()
                elif key.strip() == 'flags':
                    flags = set(value.split())
                    break
    except OSError:
        pass
    isa = [f for f in ('avx2', 'avx512f', 'avx512_bf16', 'avx512_vnni', 'amx_bf16', 'amx_int8') if f in flags]
    return f'{name} ({", ".join(isa)})' if isa else name
