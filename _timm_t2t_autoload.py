"""Register timm-t2t's models with timm as soon as ``timm`` is imported.

``timm_t2t_autoload.pth`` imports this module at interpreter start. It imports nothing heavy: it only puts a
one-shot finder for ``timm`` on ``sys.meta_path``. When ``timm`` is first imported, the finder lets timm's own
``__init__`` run and then imports ``timm_t2t``, whose model module registers the ``t2t_vit_*`` entry points.
So ``timm.create_model('t2t_vit_14')`` works in any script, timm's ``train.py`` included, with no
``import timm_t2t``.

Set ``TIMM_T2T_AUTOLOAD=0`` to turn this off; ``import timm_t2t`` registers the models either way.
"""
import importlib.abc
import importlib.util
import os
import sys
import warnings

ENV_VAR = 'TIMM_T2T_AUTOLOAD'
_DISABLED_VALUES = ('0', 'false', 'no', 'off')


def _register_models() -> None:
    try:
        import timm_t2t  # noqa: F401  importing it registers the models
    except Exception as e:  # a broken plugin must not break `import timm`
        warnings.warn(f'timm-t2t could not register its models with timm: {e!r}', stacklevel=2)


class TimmImportHook(importlib.abc.MetaPathFinder):
    """Finds ``timm`` through the other finders and registers timm-t2t once timm's module has executed."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != 'timm':
            return None
        sys.meta_path.remove(self)  # one-shot, and keeps the lookup below from coming back here
        spec = importlib.util.find_spec('timm')
        loader = getattr(spec, 'loader', None)
        if loader is None or not hasattr(loader, 'exec_module'):
            return spec
        exec_timm = loader.exec_module

        def exec_module(module):
            exec_timm(module)
            _register_models()

        loader.exec_module = exec_module  # this loader instance serves this one import of timm
        return spec


def install() -> None:
    """Arm the hook (or register right away if timm is already imported), unless turned off by the env var."""
    if os.environ.get(ENV_VAR, '1').strip().lower() in _DISABLED_VALUES:
        return
    if 'timm' in sys.modules:
        _register_models()
    elif not any(isinstance(finder, TimmImportHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, TimmImportHook())


install()
