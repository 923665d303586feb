"""Register timm-t2t's models with timm as soon as ``timm`` is imported.

``timm_t2t_autoload.pth`` imports this module at interpreter start. It imports nothing heavy: it only puts a
one-shot finder for ``timm`` on ``sys.meta_path``. When ``timm`` is first imported, the finder lets timm's own
``__init__`` run and then imports ``timm_t2t.t2t_vit``, whose entry points register with timm's registry. A mere
lookup (``importlib.util.find_spec('timm')``, as transformers does to see whether timm is installed) leaves the
finder in place for the import that follows.
So ``timm.create_model('t2t_vit_14')`` works in any script, timm's ``train.py`` included, with no
``import timm_t2t``.

Set ``TIMM_T2T_AUTOLOAD=0`` to turn this off; ``import timm_t2t`` registers the models either way (at once if
timm is imported, else as soon as it is).

When timm's first import comes from inside one of timm-t2t's own modules, that module is not complete yet, so
the models cannot be imported then: the hook leaves them to that module, which imports them once complete.
"""
import importlib.abc
import importlib.util
import os
import sys
import warnings

ENV_VAR = 'TIMM_T2T_AUTOLOAD'
_DISABLED_VALUES = ('0', 'false', 'no', 'off')


def _importing_timm_t2t(completing: str = '') -> bool:
    """A timm-t2t module (other than the one `completing`) is being imported; it registers the models itself once
    complete."""
    return any(
        name.startswith('timm_t2t.') and name != completing
        and getattr(getattr(module, '__spec__', None), '_initializing', False)
        for name, module in list(sys.modules.items()))


def _register_models(completing: str = '') -> None:
    if _importing_timm_t2t(completing):
        return
    try:
        import timm_t2t.t2t_vit  # noqa: F401  importing it registers the models
    except Exception as e:  # a broken plugin must not break `import timm`
        warnings.warn(f'timm-t2t could not register its models with timm: {e!r}', stacklevel=2)


class TimmImportHook(importlib.abc.MetaPathFinder):
    """Finds ``timm`` through the other finders and registers timm-t2t once timm's module has executed."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != 'timm':
            return None
        sys.meta_path.remove(self)  # keeps the lookup below from coming back here
        try:
            spec = importlib.util.find_spec('timm')
        finally:
            sys.meta_path.insert(0, self)  # a lookup is not an import: stay until timm's module executes
        loader = getattr(spec, 'loader', None)
        if loader is None or not hasattr(loader, 'exec_module'):
            return spec
        exec_timm = loader.exec_module

        def exec_module(module):
            if self in sys.meta_path:  # one-shot
                sys.meta_path.remove(self)
            exec_timm(module)
            _register_models()

        loader.exec_module = exec_module  # this loader instance serves this one import of timm
        return spec


def register_with_timm(completing: str = '') -> None:
    """Register the models now if timm is imported, else arm the hook that registers them when it is.

    Args:
        completing: The timm-t2t module calling this as its last statement, complete but for that.
    """
    if 'timm' in sys.modules:
        _register_models(completing)
    elif not any(isinstance(finder, TimmImportHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, TimmImportHook())


def install() -> None:
    """The interpreter-start entry: register with timm unless turned off by the environment variable."""
    if os.environ.get(ENV_VAR, '1').strip().lower() not in _DISABLED_VALUES:
        register_with_timm()


install()
