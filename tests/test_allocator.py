"""glibc's malloc thresholds: raised in the processes the package owns, never on import, never over the user's."""
import platform

import pytest

from fresh_python import run_python

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='the thresholds are glibc malloc settings')

# Frees and allocates again, round after round, what a T2T layer does with its temporaries: six 10 MB blocks, each
# written. Prints the page faults of the rounds after the first: memory handed back to the system faults in again.
CHURN = '''
import json, resource
{setup}
def churn(rounds):
    for _ in range(rounds):
        blocks = [bytearray(10 << 20) for _ in range(6)]
        del blocks
churn(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn(4)
print(json.dumps(dict(kept={kept}, faults=resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)))
'''
PAGES_PER_ROUND = 6 * (10 << 20) // 4096
KEEP = 'from timm_t2t.allocator import keep_freed_memory\nkept = keep_freed_memory()'


def _churn(setup: str = '', kept: str = 'None', env=None):
    return run_python(CHURN.format(setup=setup, kept=kept), env=env)


def test_keep_freed_memory_stops_the_page_faults():
    default = _churn()
    tuned = _churn(KEEP, kept='kept')
    assert default['faults'] > 3 * PAGES_PER_ROUND  # glibc's default: every round faults its blocks in again
    assert tuned['kept'] is True
    assert tuned['faults'] < PAGES_PER_ROUND // 10


def test_importing_the_package_leaves_the_allocator_alone():
    imported = _churn('import timm, timm_t2t, timm_t2t.cli')
    assert imported['faults'] > 3 * PAGES_PER_ROUND


@pytest.mark.parametrize('env', [
    {'MALLOC_TRIM_THRESHOLD_': '131072'},
    {'GLIBC_TUNABLES': 'glibc.malloc.trim_threshold=131072'},
])
def test_the_users_settings_stay_in_force(env):
    result = _churn(KEEP, kept='kept', env=env)
    assert result['kept'] is False
    assert result['faults'] > 3 * PAGES_PER_ROUND  # the user's low trim threshold still hands the memory back


def test_the_command_keeps_freed_memory():
    result = run_python('import json\n'
                        'from unittest import mock\n'
                        'from timm_t2t import allocator, cli\n'
                        'keep = mock.patch.object(allocator, "keep_freed_memory", wraps=allocator.keep_freed_memory)\n'
                        'with keep as k, mock.patch.dict(cli._COMMANDS, list=lambda args: None):\n'
                        '    cli.main(["list"])\n'
                        'print(json.dumps(k.call_count))')
    assert result == 1
