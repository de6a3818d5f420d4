"""Finding the linear layers to compress and swapping them for ``SparseLinear``."""

from collections.abc import Callable, Iterator

from torch import nn

from sparsa.errors import SparsaError
from sparsa.nn.sparse_linear import SparseLinear

FilterFn = Callable[[nn.Module, str], bool]


OUTPUT_HEADS = frozenset({"lm_head", "embed_out", "output"})


def decoder_linears(module: nn.Module, fqn: str) -> bool:
    """Default filter: every ``nn.Linear`` but the output head (often tied to the embeddings)."""
    return isinstance(module, nn.Linear) and fqn.rpartition(".")[2] not in OUTPUT_HEADS


def all_linears(module: nn.Module, fqn: str) -> bool:
    """Every ``nn.Linear``, the output head included (``--head``)."""
    return isinstance(module, nn.Linear)


def output_head(model: nn.Module, filter_fn: FilterFn) -> nn.Linear | None:
    """The model's dense output head (``lm_head``) when ``filter_fn`` selects it, else None."""
    head = getattr(model, "lm_head", None)
    return head if isinstance(head, nn.Linear) and filter_fn(head, "lm_head") else None


def untie_compressed_head(model: nn.Module) -> None:
    """A compressed ``lm_head`` no longer shares the embedding matrix: record that in the config,
    so saving and loading keep the two apart."""
    if isinstance(getattr(model, "lm_head", None), SparseLinear) and hasattr(model, "config"):
        model.config.tie_word_embeddings = False


def target_linears(model: nn.Module, filter_fn: FilterFn = decoder_linears) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(fqn, module)`` for every module the filter selects, in model order; a module
    reachable under several names is yielded under each (so every alias gets replaced)."""
    for fqn, module in model.named_modules(remove_duplicate=False):
        if filter_fn(module, fqn):
            if not fqn:
                raise SparsaError("the model itself is a selected layer and cannot be replaced in place; "
                                  "wrap it in a container module")
            yield fqn, module


def set_submodule(model: nn.Module, fqn: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path ``fqn`` with ``new``."""
    parent_name, _, child = fqn.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def sparse_linears(model: nn.Module) -> Iterator[tuple[str, SparseLinear]]:
    """Yield ``(fqn, module)`` for every ``SparseLinear`` in the model."""
    for fqn, module in model.named_modules():
        if isinstance(module, SparseLinear):
            yield fqn, module


def linear_footprint(model: nn.Module, filter_fn: FilterFn = decoder_linears) -> tuple[int, int]:
    """(params, bytes) of the layers ``bits_per_param`` counts: every ``SparseLinear`` (its format's
    exact stored bytes) and every dense linear the filter selects (its weight's bytes)."""
    params = nbytes = 0
    for fqn, module in model.named_modules():
        if isinstance(module, SparseLinear):
            fmt = module.weight_format
            params, nbytes = params + fmt.numel, nbytes + fmt.nbytes
        elif filter_fn(module, fqn):
            weight = module.weight
            params, nbytes = params + weight.numel(), nbytes + weight.numel() * weight.element_size()
    return params, nbytes
