"""Attach mlipx-serve to the real mlipx when, and only when, mlipx is imported.

Python runs ``install()`` at start-up through ``mlipx_serve_hook.pth`` in site-packages,
in every process of the environment, so this module imports nothing but ``os``,
``sys`` and ``environment`` and adds one import finder that answers None to every module but these:

- ``mlipx.nodes.generic_ase``: once it has loaded, its ``GenericASECalculator`` gains
  ``name``, ``extra`` and ``get_calculator(use_serve=...)`` (``mlipx_glue.plugin``).
- ``mlipx.cli.main``: once it has loaded, mlipx's command line gains the serve commands.
- ``mlipx.serve``: where mlipx has no such module, it is ``mlipx_serve.mlipx_serve_api``.
- ``mlipx`` itself, in the ``mlipx`` command of mlipx's own script (mlipx installed after
  mlipx-serve) asked for a serve command: the serve command runs there and then, and the
  process ends, so it never pays for mlipx's imports (seconds, and warnings).

``MLIPX_SERVE_HOOK=0`` (or false/no/off) turns all of it off. A failure in here is
reported as a warning and never breaks the import of mlipx.
"""

import os
import sys

from mlipx_serve.environment import HOOK, flag, text

# mlipx module -> name of the function in mlipx_serve.mlipx_glue.plugin that extends it
EXTEND_AFTER_IMPORT = {
    "mlipx.nodes.generic_ase": "extend_generic_ase",
    "mlipx.cli.main": "add_serve_commands",
}
SERVE_MODULE = "mlipx.serve"
SERVE_COMMANDS = ("serve-broker", "serve", "serve-status", "serve-submit")  # (cli.main's)


def enabled():
    # unset, on, or unreadable: on (flag() reads unset as false, hence the first test)
    return text(HOOK) is None or flag(HOOK) is not False


def install():
    """Put the finder first on ``sys.meta_path``, once, unless turned off."""
    if enabled() and not any(isinstance(f, MlipxFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, MlipxFinder())


class MlipxFinder:
    """Finds nothing itself: it wraps the loaders of mlipx's modules that it extends."""

    dispatched = False  # a serve command of mlipx's own script runs

    def find_spec(self, name, path=None, target=None):
        if name == "mlipx" and not self.dispatched and _serve_command_of_mlipx():
            self.dispatched = True  # (the command may import mlipx itself: a models file)
            from mlipx_serve.cli.main import main

            main()  # (it ends the process: SystemExit through the import)
            sys.exit(0)
        if name in EXTEND_AFTER_IMPORT:
            spec = self._spec_from_others(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = ExtendAfterLoad(spec.loader, EXTEND_AFTER_IMPORT[name])
            return spec
        if name == SERVE_MODULE:
            return self._spec_from_others(name, path, target) or _serve_module_spec()
        return None

    def _spec_from_others(self, name, path, target):
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(name, path, target)
            if spec is not None:
                return spec
        return None


class ExtendAfterLoad:
    """A module's own loader, followed by one function of ``mlipx_glue.plugin``."""

    def __init__(self, loader, extension):
        self._loader = loader
        self._extension = extension

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        try:
            from mlipx_serve.mlipx_glue import plugin

            getattr(plugin, self._extension)(module)
        except Exception as error:  # mlipx must import whatever happens here
            import warnings

            warnings.warn(f"mlipx-serve could not extend {module.__name__} ({type(error).__name__}:"
                          f" {error}); set {HOOK}=0 to stop trying", stacklevel=2)

    def __getattr__(self, name):  # get_resource_reader, is_package, get_source, ...
        return getattr(self._loader, name)


def _serve_command_of_mlipx():
    """Whether this process is the ``mlipx`` command asked for one of the serve commands."""
    argv = getattr(sys, "argv", None) or [""]
    return os.path.basename(argv[0]) == "mlipx" and argv[1:2] and argv[1] in SERVE_COMMANDS


def _serve_module_spec():
    from importlib.util import spec_from_file_location

    return spec_from_file_location(SERVE_MODULE, os.path.join(os.path.dirname(__file__),
                                                              "api.py"))
