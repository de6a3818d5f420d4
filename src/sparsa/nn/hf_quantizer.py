"""sparsa checkpoints in transformers: ``AutoModelForCausalLM.from_pretrained(ckpt)`` after ``import sparsa``.

transformers' out-of-tree route (``register_quantization_config``, ``register_quantizer``) files
:class:`SparsaQuantConfig` and :class:`SparsaQuantizer` under ``quant_method: sparsa``. A
checkpoint's ``config.json`` carries ``quantization_config: {"quant_method": "sparsa", "schema":
1, "formats": {module: {"format", "meta", "bytes"}}}``: each compressed module, its format and the
bytes its arrays take (the ``formats`` of ``sparsa.json``), so the config alone rebuilds the model.

Loading, on the model transformers builds on the ``meta`` device:

1. before the weights load, every compressed ``nn.Linear`` becomes a :class:`SparseLinear` whose
   format arrays are ``meta`` buffers of the shapes and dtypes the checkpoint's safetensors
   headers give (checked against the file sizes), so memory never holds a dense copy;
2. transformers loads every tensor, the format arrays under ``<module>.<array>`` as
   :func:`~sparsa.nn.checkpoint.save_checkpoint` wrote them;
3. after, each format is rebuilt and validated as :func:`~sparsa.nn.checkpoint.load_checkpoint`
   does (dtypes, shapes, index ranges, finite values, the bytes the config names); a
   :class:`~sparsa.errors.SparsaError` names the file and the tensor at fault.

``save_pretrained`` writes the same state dict, so the weight file's bytes equal the checkpoint's.
Registration happens when ``transformers.quantizers.auto`` is imported after ``import sparsa``
(:func:`register`), so ``import sparsa`` itself stays light.
"""

from pathlib import Path

import torch
from torch import nn

from sparsa.errors import SparsaError
from sparsa.formats.registry import get_format
from sparsa.nn.safetensors_io import DTYPE_TORCH, read_header
from sparsa.nn.sparse_linear import SparseLinear
from sparsa.nn.surgery import set_submodule, sparse_linears

QUANT_METHOD = "sparsa"
CONFIG_SCHEMA = 1


def quantization_config(manifest: dict) -> dict:
    """The ``quantization_config`` of ``config.json`` for a checkpoint with ``manifest`` (``sparsa.json``)."""
    return {"quant_method": QUANT_METHOD, "schema": CONFIG_SCHEMA, "formats": manifest["formats"]}


def stored_arrays(checkpoint_files) -> tuple[dict, dict]:
    """``(name -> StoredTensor, name -> file)`` of every tensor in the checkpoint's safetensors files
    (each header checked against its file)."""
    stored, where = {}, {}
    for path in map(Path, checkpoint_files or ()):
        for name, info in read_header(path).items():
            stored[name], where[name] = info, path
    return stored, where


def meta_sparse_linear(fqn: str, entry: dict, linear: nn.Linear, stored: dict, where: Path) -> SparseLinear:
    """A :class:`SparseLinear` on ``meta`` buffers for the module ``fqn`` of config entry ``entry``."""
    cls = get_format(entry["format"])
    shapes = {}
    for array in cls.array_names(entry["meta"]):
        info = stored.get(f"{fqn}.{array}")
        if info is None:
            raise SparsaError(f"{where}: tensor {fqn}.{array} is missing (the config compresses {fqn} "
                              f"as {entry['format']})")
        if info.dtype not in DTYPE_TORCH:
            raise SparsaError(f"{where}: tensor {fqn}.{array} has dtype {info.dtype}, which no format stores")
        shapes[array] = (info.shape, DTYPE_TORCH[info.dtype])
    out, inp = linear.out_features, linear.in_features
    if tuple(entry["meta"].get("shape", (out, inp))) != (out, inp):
        raise SparsaError(f"{where}: {fqn} is {tuple(entry['meta']['shape'])} in the config's formats, "
                          f"the architecture has {out}x{inp}")
    bias = None if linear.bias is None else torch.empty(out, device="meta", dtype=linear.bias.dtype)
    return SparseLinear.empty(cls, entry["meta"], shapes, bias)


def swap_linears(model: nn.Module, formats: dict, stored: dict, where: dict) -> None:
    """Step 1 of the module docstring, in place; ``stored``, ``where``: as :func:`stored_arrays` gives them."""
    modules = dict(model.named_modules())
    for fqn, entry in formats.items():
        old = modules.get(fqn)
        origin = where.get(f"{fqn}.{get_format(entry['format']).ARRAYS[0]}", "config.json")
        if not isinstance(old, nn.Linear):
            raise SparsaError(f"{origin}: the config compresses {fqn}, which {type(model).__name__} has "
                              f"{'as ' + type(old).__name__ if old is not None else 'not'}; expected an nn.Linear")
        set_submodule(model, fqn, meta_sparse_linear(fqn, entry, old, stored, origin))


def validate_loaded(model: nn.Module, formats: dict, where: dict) -> None:
    """Step 3 of the module docstring: every format's arrays loaded, valid and of the configured bytes;
    every other tensor of the model stored in the checkpoint (or tied to one that is) and finite."""
    sparse = {}
    for fqn, module in sparse_linears(model):
        entry = formats[fqn]
        names = module.format_cls.array_names(entry["meta"])
        origin = f"{where.get(f'{fqn}.{names[0]}', 'config.json')}:{fqn}"
        arrays = {name: module._buffers[name] for name in names}
        unloaded = [name for name, a in arrays.items() if a is None or a.is_meta]
        if unloaded:
            raise SparsaError(f"{origin}: tensor {fqn}.{unloaded[0]} was not loaded from the checkpoint")
        fmt = module.format_cls.from_state_dict(arrays, entry["meta"], where=origin)
        if fmt.nbytes != entry["bytes"]:
            raise SparsaError(f"{origin}: {fmt.nbytes} bytes stored, the config says {entry['bytes']}")
        sparse.update({f"{fqn}.{name}": a for name, a in arrays.items()})
    state = model.state_dict()
    stored_ptrs = {t.data_ptr() for name, t in state.items() if name in where and t.numel()}
    for name, tensor in state.items():
        if name in sparse:
            continue
        if name not in where and not (tensor.numel() and tensor.data_ptr() in stored_ptrs):
            raise SparsaError(f"tensor {name} is missing from the checkpoint (transformers would leave it random)")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise SparsaError(f"{where.get(name, 'checkpoint')}: tensor {name} holds "
                              f"{int((~torch.isfinite(tensor)).sum())} NaN/inf values")


def register() -> None:
    """File the config and the quantizer with transformers (once per process)."""
    # from the submodules: this runs while ``transformers.quantizers`` itself may still be importing
    from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING, register_quantization_config, register_quantizer
    from transformers.quantizers.base import HfQuantizer
    from transformers.utils.quantization_config import QuantizationConfigMixin

    if QUANT_METHOD in AUTO_QUANTIZER_MAPPING:
        return

    @register_quantization_config(QUANT_METHOD)
    class SparsaQuantConfig(QuantizationConfigMixin):
        """``quantization_config`` of a sparsa checkpoint (see the module docstring)."""

        def __init__(self, formats: dict | None = None, schema: int = CONFIG_SCHEMA, **kwargs):
            self.quant_method = QUANT_METHOD
            self.schema = schema
            self.formats = dict(formats or {})
            if schema != CONFIG_SCHEMA or not all(
                    isinstance(e, dict) and {"format", "meta", "bytes"} <= set(e) for e in self.formats.values()):
                raise SparsaError(f"config.json: quantization_config schema {schema!r} with formats of "
                                  f"{{format, meta, bytes}} per module expected (this sparsa reads {CONFIG_SCHEMA})")

        def to_dict(self) -> dict:
            return {"quant_method": QUANT_METHOD, "schema": self.schema, "formats": self.formats}

    @register_quantizer(QUANT_METHOD)
    class SparsaQuantizer(HfQuantizer):
        """Swaps compressed linears for :class:`SparseLinear` before the weights load, validates after."""

        requires_calibration = True

        def validate_environment(self, *args, **kwargs):
            if not self.pre_quantized:
                raise SparsaError("quant_method sparsa loads checkpoints that sparsa compress wrote; "
                                  "compress a model with sparsa compress")

        def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
            stored, self.where = stored_arrays(checkpoint_files)
            swap_linears(model, self.quantization_config.formats, stored, self.where)
            return model

        def _process_model_after_weight_loading(self, model, **kwargs):
            validate_loaded(model, self.quantization_config.formats, self.where)
            return model

        def is_serializable(self) -> bool:
            return True

        @property
        def is_trainable(self) -> bool:
            return False
