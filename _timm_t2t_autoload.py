"""Register timm-t2t's models with timm as soon as both are importable: the package's one registration point.

At interpreter start, ``timm_t2t_autoload.start`` (Python 3.15+, PEP 829) or the import line of
``timm_t2t_autoload.pth`` (earlier Pythons; a matching ``.start`` file turns it off) calls `install`. It imports
nothing heavy: it only puts an import finder on ``sys.meta_path``. The finder watches the imports of ``timm`` and of
timm-t2t's own modules; when one of them has finished executing, timm is imported and no timm-t2t module is still
half-executed, it imports ``timm_t2t.t2t_vit`` and ``timm_t2t.patch_embed``, whose entry points register with timm's
registry, and steps aside. So ``timm.create_model('t2t_vit_14')`` works in any script, timm's ``train.py`` included,
with no ``import timm_t2t``; and whichever of timm or a timm-t2t module is imported first, the models register once
both are complete, without any model module knowing about this.

Set ``TIMM_T2T_AUTOLOAD=0`` to turn the interpreter-start hook off; ``import timm_t2t`` registers the models either
way (at once if timm is imported, else as soon as it is).
"""
import importlib.abc
import os
import sys
import warnings

ENV_VAR = 'TIMM_T2T_AUTOLOAD'
_DISABLED_VALUES = ('0', 'false', 'no', 'off')
_PACKAGE = 'timm_t2t'
_MODELS = ('timm_t2t.t2t_vit', 'timm_t2t.patch_embed')  # the modules whose entry points register


def _watched(fullname: str) -> bool:
    return fullname == 'timm' or fullname == _PACKAGE or fullname.startswith(_PACKAGE + '.')


def _half_executed(name: str) -> bool:
    spec = getattr(sys.modules.get(name), '__spec__', None)
    return bool(getattr(spec, '_initializing', False))


def _ready(executed: str = '') -> bool:
    """timm is imported and no timm-t2t module is half-executed (the models' own imports would meet it so), but for
    the one that has just `executed` (it is complete; the import system marks it done only after this hook)."""
    return 'timm' in sys.modules and not any(
        _half_executed(name) for name in list(sys.modules) if name.startswith(_PACKAGE + '.') and name != executed)


def _register_models() -> None:
    """Import the model modules (their entry points register with timm) and remove the finder: its work is done."""
    for finder in [f for f in sys.meta_path if isinstance(f, RegistrationFinder)]:
        sys.meta_path.remove(finder)
    try:
        for name in _MODELS:
            __import__(name)
    except Exception as e:  # a broken plugin must not break `import timm`
        warnings.warn(f'timm-t2t could not register its models with timm: {e!r}', stacklevel=2)


class RegistrationFinder(importlib.abc.MetaPathFinder):
    """Finds ``timm`` and timm-t2t's modules through the finders after it, and registers the models once a module
    of theirs has executed and `_ready` holds."""

    def find_spec(self, fullname, path=None, target=None):
        if not _watched(fullname) or self not in sys.meta_path:
            return None
        spec = self._find_spec_after(fullname, path, target)
        loader = getattr(spec, 'loader', None)
        if loader is None or not hasattr(loader, 'exec_module'):
            return spec
        exec_watched = loader.exec_module

        def exec_module(module):
            exec_watched(module)
            if self in sys.meta_path and _ready(executed=module.__name__):
                _register_models()

        loader.exec_module = exec_module  # this loader instance serves this one import
        return spec

    def _find_spec_after(self, fullname, path, target):
        after = sys.meta_path[sys.meta_path.index(self) + 1:]
        for finder in after:
            find_spec = getattr(finder, 'find_spec', None)
            spec = find_spec(fullname, path, target) if find_spec is not None else None
            if spec is not None:
                return spec
        return None


def register_with_timm() -> None:
    """Register the models now if timm is imported and nothing of timm-t2t is half-executed, else arm the finder
    that registers them as soon as that holds."""
    if all(name in sys.modules for name in _MODELS):
        return
    if _ready():
        _register_models()
    elif not any(isinstance(finder, RegistrationFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, RegistrationFinder())


def install() -> None:
    """The interpreter-start entry point: register with timm unless turned off by the environment variable."""
    if os.environ.get(ENV_VAR, '1').strip().lower() not in _DISABLED_VALUES:
        register_with_timm()
