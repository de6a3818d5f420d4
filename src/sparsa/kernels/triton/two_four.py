"""2:4 on CUDA: torch's semi-structured path where it wins, the Triton N:M kernel otherwise.

torch's ``to_sparse_semi_structured`` (CUTLASS / cuSPARSELt) is faster than dense only on some
shapes and token counts, and slower on others. So the choice is measured, not guessed: on
the first call for a (weight, dtype, token bucket), both paths run on the real activations
and the faster one is kept for that bucket; the weight's semi-structured copy is made once
per dtype. Where torch's path cannot take the weight (shape, GPU, dtype), ours runs. The
checkpoint keeps its ``NM`` format either way.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
import triton

from sparsa.formats.nm import NM
from sparsa.kernels.layouts import cached_layout

Run = Callable[[], torch.Tensor]


def new_routes(weight: NM) -> dict:
    """A weight's routing record, kept as its cached layout (so it is dropped, semi-structured
    copy included, when the weight's tensors change): ("semi", dtype) -> torch's copy or None,
    (dtype, token bucket) -> "ours" or "torch"."""
    return {}


def cuda_ms(run: Run, repeats: int = 5) -> float:
    """ms per call of ``run`` on the current CUDA stream (one untimed warm-up call)."""
    run()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        run()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def pick_faster(candidates: dict[str, Run], timer: Callable[[Run], float] = cuda_ms) -> str:
    """The name of the fastest candidate; one that raises is out of the race ("ours" never is)."""
    times = {}
    for name, run in candidates.items():
        try:
            times[name] = timer(run)
        except Exception:  # noqa: BLE001 - torch's path refusing a shape or GPU is an answer, not an error
            if name == "ours":
                raise
    return min(times, key=times.get)


def semi_structured(weight: NM, dtype: torch.dtype, routes: dict):
    """torch's semi-structured copy of the weight in ``dtype`` (made once), or None if it refuses."""
    key = ("semi", dtype)
    if key not in routes:
        try:
            from torch.sparse import to_sparse_semi_structured

            routes[key] = to_sparse_semi_structured(weight.to_dense(dtype))
        except Exception:  # noqa: BLE001 - unsupported GPU, shape or dtype: ours runs
            routes[key] = None
    return routes[key]


def routed_linear(x2: torch.Tensor, weight: NM, bias: torch.Tensor | None, ours: Callable[[], torch.Tensor],
                  timer: Callable[[Run], float] = cuda_ms) -> torch.Tensor:
    """``x2 [N, in] -> [N, out]`` for a 2:4 weight on CUDA by the path measured faster for this
    (dtype, token bucket); ``ours()`` runs the Triton kernel."""
    routes = cached_layout(weight, new_routes)
    semi = semi_structured(weight, x2.dtype, routes)
    if semi is None:
        return ours()
    key = (x2.dtype, triton.next_power_of_2(x2.shape[0]))
    if key not in routes:
        routes[key] = pick_faster({"ours": ours, "torch": lambda: F.linear(x2, semi, bias)}, timer)
    if routes[key] == "torch":
        try:
            return F.linear(x2, semi, bias)
        except Exception:  # noqa: BLE001 - a token count in the bucket torch's path refuses: ours from now on
            routes[key] = "ours"
    return ours()
