"""``import sparsa`` makes sparsa checkpoints loadable by transformers, without importing it.

transformers resolves ``quantization_config.quant_method`` through ``transformers.quantizers.auto``.
:func:`install` registers sparsa's quantizer (:func:`sparsa.nn.hf_quantizer.register`) right after
that module is first imported, or at once when it already is; a process that never loads a
transformers model pays nothing (importing transformers' quantizers takes seconds). The
registration module is named, not imported here: the package root sits below ``nn`` in the layer
order, and this is the one place it reaches up, on purpose, as the entry point's plug-in hook.
"""

import importlib
import importlib.abc
import importlib.util
import sys

TARGET = "transformers.quantizers.auto"
REGISTRATION = "sparsa.nn.hf_quantizer"


def register() -> None:
    importlib.import_module(REGISTRATION).register()


class RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds :data:`TARGET` with the other finders, then registers once its module has executed."""

    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            register()
        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Register now if transformers' quantizers are loaded, else when they load."""
    if TARGET in sys.modules:
        register()
    elif not any(isinstance(f, RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, RegisterAfterImport())
