"""Whether operations are being recorded (``torch.compile``, ``torch.export``, ``torch.jit.trace``) or run.

Code that reads tensor values into Python (a crop size, a timing) or calls foreign code
(the native kernels) must take another route while a graph is recorded: a tracer
cannot see the Python value (it guards on it, breaks the graph, or freezes it) nor
the foreign call. One definition, used wherever that choice is made.
"""

from __future__ import annotations

import hashlib
import operator
import re
import sys
import types
from functools import lru_cache
from pathlib import Path
from time import perf_counter_ns
from typing import Callable

import torch
import torch.autograd.forward_ad as _forward_ad

__all__ = [
    "tracing", "exporting_onnx", "compiling", "transformed", "batched", "compiled_once", "region_applies", "size_hint",
    "symbolic", "OPAQUE", "op_name", "library_op", "constant_result", "refuse_torchscript_onnx",
    "TorchScriptOnnxError", "NotScriptable", "on_fresh_stack", "define_op",
]

# torch.library.custom_op exists from torch 2.4; before it, torch.compile traces everything.
OPAQUE = hasattr(torch.library, "custom_op")


def constant_result(fn: Callable) -> Callable:
    """``fn`` marked as ``torch.compiler.assume_constant_result`` marks it (Dynamo calls it while tracing and
    records its result as a constant), without importing Dynamo: ``torch.compiler.assume_constant_result`` imports
    ``torch._dynamo`` to set the mark, which took 1.4 s of the library's import (every process, every CLI call)."""
    fn._dynamo_marked_constant = True
    return fn


def tracing() -> bool:
    """Whether a graph is being recorded: ``torch.compile`` (dynamo), ``torch.export`` (strict or not),
    ``torch.onnx.export`` or ``torch.jit.trace`` / ``script``."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting()


def transformed(*tensors: torch.Tensor | None) -> bool:
    """Whether torch.func's transforms (``grad``, ``vmap``, ``jvp``, ``jacrev``, ``hessian``...) run this call, or
    forward-mode AD does (a dual tensor of ``torch.autograd.forward_ad`` among ``tensors``; with no ``tensors``,
    whether a dual level is entered at all, where a result may carry tangents). The library's autograd Functions
    (analytic backwards, native kernels) define neither a batching rule nor a ``jvp``, and torch refuses them
    there; their callers take the Function's reference instead, the differentiable torch operations that its
    double backward differentiates. While a graph is recorded (:func:`tracing`), which takes its own routes: only
    whether ``torch.compile`` records a transform (``torch.compile(vmap(grad(f)))``), where those routes' opaque
    operators would meet the transform's tensors."""
    if torch.jit.is_tracing():
        return True  # the Functions' torch operations are what the tracer can record (it fails on the Functions)
    if tracing():
        return torch.compiler.is_compiling() and _transforms_active()
    if _transforms_active():
        return True
    if getattr(_forward_ad, "_current_level", 0) < 0:  # no dual level entered (-1), so no dual tensor
        return False
    return not tensors or any(t is not None and _forward_ad.unpack_dual(t).tangent is not None for t in tensors)


@constant_result
def _transforms_active() -> bool:
    """Whether torch.func's transforms are active: also while Dynamo traces one (it enters the transforms' levels
    as it traces them), read in Python, a constant of the recorded graph."""
    return torch._C._are_functorch_transforms_active()


def batched(grad: torch.Tensor) -> bool:
    """Whether ``grad`` is a batch of gradients that autograd's own batching runs a backward on at once
    (``torch.autograd.grad(..., is_grads_batched=True)``, behind ``torch.autograd.functional.jacobian(
    vectorize=True)`` and gradcheck's ``check_batched_grad``; its batched tensors do not count as torch.func's).
    Read from the names of ``grad``'s dispatch keys (torch gives no other way): where torch names them otherwise,
    False, and a backward that cannot be batched fails with torch's error, as before."""
    return "Batched" in str(torch._C._dispatch_keys(grad))


def size_hint(size) -> int:
    """``size`` (a tensor's size) as a Python int for a choice that changes speed, never results (a cost model's
    path, a block size). A symbolic size of a recorded graph (``torch.compile`` with dynamic shapes,
    ``torch.export`` with a ``Dim``) gives the value of the example it was recorded with, without the guard that
    ``int()`` adds: the graph then stays general in that size instead of being specialised to the example (which
    ``torch.export`` refuses and ``torch.compile`` pays with a recompilation per size)."""
    # (Dynamo shows a symbolic size to the code it traces as an int, and answers optimization_hint itself.)
    if torch.compiler.is_compiling() or isinstance(size, torch.SymInt):
        try:
            from torch.fx.experimental.symbolic_shapes import optimization_hint  # 0.5 s to import: only here
        except ImportError:  # an older torch: the size, guarded
            return operator.index(size)
        return optimization_hint(size)
    return operator.index(size)


def symbolic(sizes) -> bool:
    """Whether some of ``sizes`` are symbols of a recorded graph (``torch.export``, fake tensors), on which a
    comparison adds a guard: a shortcut taken where sizes match would fix them. (Code that Dynamo traces sees
    its symbols as ints.)"""
    return any(isinstance(n, torch.SymInt) for n in sizes)


def exporting_onnx() -> bool:
    """Whether ``torch.onnx.export`` is recording the graph (ONNX lacks operators of some torch paths)."""
    return torch.onnx.is_in_onnx_export()


class TorchScriptOnnxError(getattr(getattr(torch.onnx, "errors", None), "UnsupportedOperatorError", RuntimeError)):
    """ONNX's TorchScript-based exporter met a transform it cannot export: of the class the exporter raises for an
    operator it lacks (``torch.onnx.errors.UnsupportedOperatorError``, a ``RuntimeError``), so that code catching
    its errors catches this one; the message says what exports instead."""

    def __init__(self, message: str) -> None:
        RuntimeError.__init__(self, message)  # (the base class composes its message from an operator's name)


def refuse_torchscript_onnx(what: str) -> None:
    """Raise :class:`TorchScriptOnnxError` where ONNX's TorchScript-based exporter (``torch.onnx.export(...,
    dynamo=False)``) records ``what``, a path that computes with torch's FFTs: that exporter has no ONNX function
    for them and stopped at the first one ("Exporting the operator 'aten::fft_rfftn' to ONNX opset version 20 is
    not supported"), which named neither the layer nor the exporter that takes it."""
    if exporting_onnx() and torch.jit.is_tracing():
        raise TorchScriptOnnxError(
            f"{what} computes with FFTs, for which ONNX's TorchScript-based exporter (torch.onnx.export(..., "
            f"dynamo=False)) has no operator; export with torch.onnx.export(..., dynamo=True) (the default), which "
            f"records them as ONNX's DFT, or for a convolution first largekernel.bake(model, input_size, "
            f"native=True), which gives torch's own convolutions (docs/deploy.md)")


class NotScriptable:
    """Mixin of the library's modules: ``torch.jit.script`` refuses them with the ways that work. TorchScript
    compiles a subset of Python that the layers do not keep to; it stopped at the first construct it lacked,
    somewhere inside the library ("Unknown type constructor Sequence", "undefined value ..."), naming neither the
    layer nor a way out."""

    def __prepare_scriptable__(self):  # called by torch.jit.script on each module before it compiles any
        raise RuntimeError(
            f"torch.jit.script cannot compile {type(self).__name__}: TorchScript takes a subset of Python that the "
            f"library's layers do not keep to. Trace it (torch.jit.trace: every family, training and inference), "
            f"export it (torch.export, ONNX) or compile it (torch.compile); or script the model after "
            f"largekernel.bake(model, native=True), which gives torch's own convolutions for the layers whose kernel "
            f"does not depend on the input size (docs/deploy.md)")


def op_name(name: str) -> str:
    """The qualified name under which the library registers its operator ``name``
    (``torch.library.custom_op``): ``largekernel::<name>_<tag>``, the tag a hash of the library's source.

    torch's caches of compiled graphs (AOTAutograd's and inductor's, kept on disk across runs) key a graph on its
    operators' names and schemas, not on the Python that defines an operator's autograd formula and output
    shapes. Under a name of its own the operator would let a warm cache written by another version of the library
    hand this one a backward graph built for other code (which fails, or computes the other version's gradients);
    named by the source, a changed library makes new cache entries and the same library finds its own."""
    return f"largekernel::{name}_{_source_tag()}"


def library_op(name: str):
    """The operator registered under :func:`op_name` ``(name)``, to call: ``torch.ops.largekernel.<name>_<tag>``."""
    return getattr(torch.ops.largekernel, f"{name}_{_source_tag()}")


@lru_cache(maxsize=None)
def _source_tag() -> str:
    """Eight hex digits of a hash of every Python file of the installed library (about 10 ms, once); its version
    where the files cannot be read (a zipped install)."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.blake2b(digest_size=4)
    try:
        for path in sorted(root.rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    except OSError:
        from largekernel import __version__
        return "v" + re.sub(r"\W", "_", __version__)
    return digest.hexdigest()


# Stack slots (8 bytes each) that on_fresh_stack's frame reserves: more than a chunk of CPython's frame stack has
# left after any frame short of a 3000-slot one (a chunk is 16 KB, doubled until it holds the frame that opens it
# plus 8 KB), so that the frame opens a new chunk, whose room (32 KB or more) holds the call's own frames.
_FRESH_STACK_SLOTS = 4096
# What the operators' Python needs at most, measured with sys.setprofile (the spectral product 250 slots, NIFF's
# nets 390, DCLS's construction 120; FlexConv's eager layer 985, which passes its own): a frame of this size that
# fits where the call is made says the call fits too.
_PROBE_SLOTS = 512
# A frame that fits is pushed in about 0.1 us; one that opens a chunk takes an mmap and an munmap, 5-25 us here.
_CHUNK_NS = 3000


def on_fresh_stack(fn: Callable, *args, need: int = _PROBE_SLOTS):
    """``fn(*args)``, on a chunk of CPython's frame stack of its own where it would otherwise run at a chunk's edge
    (CPython 3.11 and later); ``need``: the stack slots (8 bytes) that ``fn``'s Python frames take at most.

    CPython keeps a thread's frames in chunks, allocating a chunk (``mmap``) when a call does not fit in the
    current one and freeing it (``munmap``) when that call returns; a loop of calls at that depth allocates and
    frees a chunk at each call (CPython issue 142183; CPython 3.11, our CI's, has no cache of freed chunks). A
    compiled graph calls the library's operators from inductor's generated function, whose frame holds every
    buffer of the graph, and where that left the operators' Python (a few hundred calls each) at a chunk's edge
    it ran at that cost: in the compiled forward of a ConvNeXt-atto converted to NIFF, a pure-Python function
    called inside the spectral product's operator ran 100 times slower than in eager mode, and the model's
    compiled step was 1.18x eager's (docs/deploy.md). A frame of ``need`` slots pushed first tells whether the
    call fits (pushed in nanoseconds; a new chunk takes microseconds); where it does not, the call is made through
    a frame that reserves ``_FRESH_STACK_SLOTS`` slots (its stack, which CPython does not initialise): it starts a
    chunk of its own once (5-25 us, the same as one crossing) and its calls stay inside it. Always calling through
    that frame cost 23 us a call with torch's threads running, 2-7 % of a converted ConvNeXt-atto's (DCLS) step."""
    probe = _probe(need)
    start = perf_counter_ns()
    probe()
    if perf_counter_ns() - start < _CHUNK_NS:
        return fn(*args)
    return _call_on_fresh_stack(fn, args)


def _call(fn: Callable, args: tuple):
    return fn(*args)


def _nothing():
    return None


_CHUNKED = sys.implementation.name == "cpython" and sys.version_info >= (3, 11)  # (before: frames on the heap)
_call_on_fresh_stack = (types.FunctionType(_call.__code__.replace(co_stacksize=_FRESH_STACK_SLOTS), globals(),
                                           "_call_on_fresh_stack") if _CHUNKED else _call)


@lru_cache(maxsize=None)
def _probe(slots: int) -> Callable[[], None]:
    """A function that does nothing in a frame of ``slots`` stack slots."""
    return types.FunctionType(_nothing.__code__.replace(co_stacksize=slots), globals(), "_probe") if _CHUNKED \
        else _nothing


def define_op(name: str, fn: Callable, *, need: int = _PROBE_SLOTS):
    """``fn`` registered as the library's operator :func:`op_name` ``(name)`` with ``torch.library.custom_op``
    (mutating none of its arguments), its schema inferred from ``fn``'s annotations as ``custom_op`` infers it;
    returns the operator (``register_fake``, ``register_autograd``). The registered kernel calls ``fn`` through
    :func:`on_fresh_stack` (``need``: the stack slots that ``fn``'s Python takes at most): inductor's generated
    code calls every operator of the library, and could leave its Python at the edge of CPython's frame-stack
    chunk, 100 times slower (an interpreter without such chunks calls ``fn`` itself). ``fn`` takes positional
    arguments only, as the library's operators do; given as the fake implementation too, it runs directly (fake
    tensors are traced, not timed)."""
    schema = torch.library.infer_schema(fn, mutates_args=())

    def kernel(*args):
        return on_fresh_stack(fn, *args, need=need)

    return torch.library.custom_op(op_name(name), kernel if _CHUNKED else fn, mutates_args=(), schema=schema)


def compiling() -> bool:
    """Whether ``torch.compile`` records the graph (not an export): then the library's opaque operators
    (``torch.library.custom_op``) stand for code that inductor would compile slowly or not at all. Not where it
    records torch.func's transforms (:func:`transformed`): the operators define no batching rule, and the
    transforms' routes are torch operations that the compiled graph records as they are."""
    return (OPAQUE and torch.compiler.is_compiling() and not torch.compiler.is_exporting()
            and not exporting_onnx() and not _transforms_active())


# torch's hierarchical compilation (torch.compiler.nested_compile_region), and the torch version that decides where
# it may be used (region_applies).
_REGIONS = hasattr(torch.compiler, "nested_compile_region")
_TORCH = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])


def compiled_once(fn: Callable) -> Callable | None:
    """``fn`` as a ``torch.compiler.nested_compile_region`` (torch's hierarchical compilation), or None where
    torch lacks it. Call it only where :func:`region_applies`: torch.compile then traces and compiles ``fn`` once
    per distinct set of guards (its arguments' shapes, the attributes it reads) and reuses that code at every call
    that matches, instead of inlining each call into the graph, where inductor generates every copy anew (and
    fuses independent copies together, so that no two come out the same).

    The limit on distinct sets is torch's safeguard against guards that fail at every call; a model's variety of
    layers must not reach it."""
    return torch.compiler.nested_compile_region(fn, max_reuse_entries=100_000) if _REGIONS else None


def region_applies() -> bool:
    """Whether a :func:`compiled_once` region may be called here (never where torch lacks regions): while
    :func:`compiling`, on torch >= 2.14; on torch 2.13 only under the backends that compile the backward ahead
    of time, inductor and aot_eager. There, a reused region fails in its backward under
    ``torch.compile(backend="eager")`` and eager-like backends ("fake_mode should be enabled for HOPs"); torch
    2.14 fixed it. Not before 2.13 (not checked)."""
    return _REGIONS and compiling() and (_TORCH >= (2, 14) or (_TORCH == (2, 13) and _backward_compiled_ahead()))


@constant_result
def _backward_compiled_ahead() -> bool:
    """Whether the backend of the graph Dynamo is recording is inductor or aot_eager (torch 2.13's names for it;
    False if they are not there). Called while Dynamo traces: it runs in Python, its result a constant of the
    graph."""
    try:
        from torch._dynamo.symbolic_convert import InstructionTranslator

        backend = InstructionTranslator.current_tx().output.compiler_fn
        name = getattr(backend, "compiler_name", None) or getattr(backend, "__name__", None)
    except Exception:  # another torch's internals: no region, as before 2.14
        return False
    return name in ("inductor", "aot_eager")
