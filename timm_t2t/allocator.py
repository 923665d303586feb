"""glibc's malloc, kept from handing the T2T module's large temporaries back to the system between forwards.

A T2T-ViT's first T2T layer works on every token of the batch at once (25,088 of them for 8 images at 224), so each
forward allocates and frees tens of megabytes of short-lived tensors. glibc's malloc returns freed memory at the top
of its heap to the system once more than its trim threshold is free there, and serves large blocks by `mmap`; both
thresholds adapt only up to 32 and 64 MiB. The memory then comes back page by page, as page faults, on the next
forward. Raising the thresholds keeps it in the process.

This changes the whole process, so the package does it only in processes it owns: the `timm-t2t` command and the
benchmarks call `keep_freed_memory()` at start. Importing the package never calls it. Library users choose for
their own processes: the same thresholds through the environment (`MALLOC_MMAP_THRESHOLD_`,
`MALLOC_TRIM_THRESHOLD_`), or another allocator (jemalloc, tcmalloc) through `LD_PRELOAD`; docs/performance.md
says what each measured.
"""
import ctypes
import logging
import os
import platform
from typing import Optional

__all__ = ['MMAP_THRESHOLD', 'TRIM_THRESHOLD', 'keep_freed_memory', 'user_allocator_settings']

_logger = logging.getLogger(__name__)

MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts on 64-bit: blocks up to it come from the heap
TRIM_THRESHOLD = 1 << 30  # free memory at the top of the heap kept for the next forward
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
_ALLOCATORS = ('jemalloc', 'tcmalloc', 'mimalloc')


def user_allocator_settings() -> Optional[str]:
    """The allocator settings this process was started with (malloc variables, glibc's malloc tunables, another
    allocator preloaded), or None: where there are some, `keep_freed_memory` leaves them in force."""
    names = [k for k in os.environ if k.startswith('MALLOC_') and os.environ[k]]
    if 'glibc.malloc' in os.environ.get('GLIBC_TUNABLES', ''):
        names.append('GLIBC_TUNABLES')
    if any(name in os.environ.get('LD_PRELOAD', '') for name in _ALLOCATORS):
        names.append('LD_PRELOAD')
    return ', '.join(sorted(names)) or None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (see the module's docstring); whether it did.

    Does nothing outside glibc, or where the user set the allocator up themselves (`user_allocator_settings`).
    """
    settings = user_allocator_settings()
    if settings is not None:
        _logger.info(f'Allocator: left as set by {settings}.')
        return False
    if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if done:
        _logger.info(f'Allocator: glibc malloc keeps freed memory (mmap threshold {MMAP_THRESHOLD >> 20} MiB, '
                     f'trim threshold {TRIM_THRESHOLD >> 20} MiB) for this process.')
    return done
