"""Run code in a fresh interpreter, as a user's script would run, and read the JSON line it prints last."""
import json
import os
import subprocess
import sys
from typing import Any, Dict, Optional, Sequence

_CLEARED = ('TIMM_T2T_AUTOLOAD', 'TIMM_T2T_HUB_ORG', 'HF_ENDPOINT', 'HF_HUB_OFFLINE', 'HTTP_PROXY', 'HTTPS_PROXY',
            'http_proxy', 'https_proxy')


def run_python(
        code: str, env: Optional[Dict[str, str]] = None, timeout: float = 300, flags: Sequence[str] = ()) -> Any:
    """Run `code` with `python [flags] -c` and return the JSON value on the last line of its output."""
    environ = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    environ.update(env or {})
    result = subprocess.run(
        [sys.executable, *flags, '-c', code], capture_output=True, text=True, env=environ, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f'exit code {result.returncode}\n{result.stdout}\n{result.stderr}')
    return json.loads(result.stdout.strip().splitlines()[-1])
