"""Atomic counters for threads that stay in one parallel region (numba has none): LLVM IR intrinsics.

The compiled decode step (:mod:`sparsa.kernels.cpu.llama_step`) runs a whole token in one
parallel region; its threads take work from a phase with :func:`take` and wait for the phase's
last task with :func:`wait_for`. Both act on one slot of an int64 array:

* :func:`take` is ``fetch_add(slot, 1)`` with sequential consistency: it returns the value before
  the add (a task number), and no load or store of the caller moves across it, so the writes of a
  task that ends with it (:func:`take` on a "done" slot) are visible to whoever reads that count;
* :func:`wait_for` spins, with the CPU's pause hint on x86, until the slot holds at least ``count``
  (acquire loads: what was written before the counts were added is visible after it returns).

Intrinsics do no bounds checks: callers keep ``slot`` inside the array.
"""

import platform

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_I64 = ir.IntType(64)
PAUSE = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")  # ``pause`` is an x86 instruction


def _slot(context, builder, array_type, array, slot):
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [slot])


@intrinsic
def take(typingctx, counts, slot):
    """``counts[slot] += 1`` atomically; the value before the add (int64)."""
    if not (isinstance(counts, types.Array) and counts.dtype == types.int64 and counts.ndim == 1):
        return None

    def codegen(context, builder, sig, args):
        ptr = _slot(context, builder, sig.args[0], args[0], args[1])
        return builder.atomic_rmw("add", ptr, ir.Constant(_I64, 1), "seq_cst")

    return types.int64(counts, slot), codegen


@intrinsic
def wait_for(typingctx, counts, slot, count):
    """Spin until ``counts[slot] >= count`` (acquire loads, ``pause`` between them on x86)."""
    if not (isinstance(counts, types.Array) and counts.dtype == types.int64 and counts.ndim == 1):
        return None

    def codegen(context, builder, sig, args):
        ptr = _slot(context, builder, sig.args[0], args[0], args[1])
        target = context.cast(builder, args[2], sig.args[2], types.int64)
        check = builder.append_basic_block("wait.check")
        spin = builder.append_basic_block("wait.spin")
        done = builder.append_basic_block("wait.done")
        builder.branch(check)
        builder.position_at_end(check)
        value = builder.load_atomic(ptr, "acquire", 8)
        builder.cbranch(builder.icmp_signed(">=", value, target), done, spin)
        builder.position_at_end(spin)
        if PAUSE:
            pause = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                   "llvm.x86.sse2.pause")
            builder.call(pause, [])
        builder.branch(check)
        builder.position_at_end(done)
        return context.get_dummy_value()

    return types.void(counts, slot, count), codegen
