"""A layer run eagerly, as one opaque operator, inside a ``torch.compile`` graph.

FlexConv's dynamic cropping sizes the kernel it applies from its mask's parameters: a value
that a recorded graph cannot hold as a size. Traced, the layer therefore applies its whole
grid, zero outside the crop (``_FlexConvNd._crop``), and costs what the whole grid costs:
4x eager on ``bench flexconv``'s 1-D case, where both the kernel net and the convolution
shrink with the crop. Under ``torch.compile`` (not ``torch.export``, whose programs must
hold torch operations only) such a layer is called instead as the operator
``largekernel::eager_layer`` (its name tagged with the library's source,
:func:`~largekernel.functional._tracing.op_name`), which runs the layer's own eager
forward, cropping included. The operator can run another method of the layer instead, on
tensors of the graph (:func:`run_method`): a FlexConv traced with its whole grid applies its
kernel through ``_convolve_cropped``, which crops the traced kernel and convolves eagerly.

The backward does not recompute that forward. The operator records the eager autograd graph
of its call (with autograd switched back on inside it: an operator runs below autograd) and
keeps it under a ticket, a 0-dim tensor it returns, which the compiled graph saves for its
backward. ``largekernel::eager_layer_backward`` takes the graph by its ticket and runs it. The
graph lives as long as its ticket: a forward whose backward never runs frees it with the
ticket. A ticket whose graph was already used (a second backward through
``retain_graph=True``), or freed (the caller's saved-tensor hooks saved a copy of the ticket,
and the ticket itself died), has the forward recomputed. The backward operator takes the forward's
input too, which the compiled graph keeps for it (or recomputes). The result is eager's, bit
for bit: the same operations run.

The compiled graph may reuse the memory of the operator's input and output once the operator
has run, which would change what the recorded graph saved. So the recorded graph does not
hold the input (``saved_tensors_hooks``): where it saves the input, the backward operator's
input is given back in its place, and a view of the input's memory it saves is a copy. Where
it saved any of its output's memory, the operator returns a copy. FlexConv's graphs make no
copy: they save the input itself or nothing of it, and none of their output. What the
recorded graph saves goes through the caller's own saved-tensor hooks too, if any are set
(``torch.autograd.graph.save_on_cpu``, say), as in eager. Where the caller has disabled
saved-tensor hooks, the graph is recorded on a copy of the input and the output is copied.

The layer decides where the operator pays (FlexConv: where its kernel net's output on the
whole grid is large, ``flexconv._EAGER_MIN_VOLUME``): a compiled call costs more than an eager
one (docs/deploy.md measures it), and the layer's eager code is not fused with its neighbours.

Only ``torch.compile`` sees these operators (:func:`applies`); eager mode calls the layer as
it is. The layer reaches the operator through a key, an int attribute of the layer, which
Dynamo guards like any module attribute: code compiled for one layer is not reused for
another.
"""

from __future__ import annotations

import itertools
import weakref
from typing import Sequence

import torch
from torch import Tensor, nn

from largekernel.functional._args import conv_memory_format
from largekernel.functional._tracing import OPAQUE, compiling, define_op, library_op

__all__ = ["EagerInCompile", "applies", "run"]

_LAYERS: "weakref.WeakValueDictionary[int, nn.Module]" = weakref.WeakValueDictionary()
_KEYS = itertools.count(1)
# ticket -> (the eager output, the leaves its gradients are taken for, what stands for the input in the saved
# tensors), None once a backward has used it: what each recorded forward keeps for its backward
_GRAPHS: dict[int, "tuple[Tensor, list[Tensor], _Input] | None"] = {}
_TICKETS = itertools.count(1)


class EagerInCompile:
    """Mixin of a layer that :func:`run` may call as one operator: gives each instance its own key, a new one
    for a copy (``copy.deepcopy``, unpickling), so that the key names one layer only."""

    def _register_eager_key(self) -> None:
        key = next(_KEYS)
        self.__dict__["_eager_key"] = key
        _LAYERS[key] = self

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._register_eager_key()


def applies(input: Tensor) -> bool:
    """Whether a layer is called through the operator: while ``torch.compile`` records (:func:`compiling`), on
    a torch with ``torch.library.custom_op``, outside ``torch.autocast`` (whose casts the eager call inside an
    operator would not see)."""
    return OPAQUE and compiling() and not torch.is_autocast_enabled(input.device.type)


def _tensors(layer: nn.Module) -> tuple[list[str], list[Tensor]]:
    named = [*layer.named_parameters(), *layer.named_buffers()]
    return [n for n, _ in named], [t for _, t in named]


def _same(a: Tensor, b: Tensor) -> bool:
    return a is b or (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
                      and a.dtype == b.dtype and a.device == b.device)


def _call(layer: nn.Module, method: str, input: Tensor, tensors: Sequence[Tensor], needs: Sequence[bool]):
    """The layer's eager forward on ``tensors`` (its parameters and buffers as the graph passes them), or its
    ``method`` called as ``method(input, *tensors)`` (tensors of the graph); with ``needs`` (input, then each
    tensor) recorded for autograd. Returns the output and the leaves to differentiate."""
    x = input.detach().requires_grad_(needs[0])
    if method != "forward":
        leaves = [t.detach().requires_grad_(n) for t, n in zip(tensors, needs[1:])]
        return getattr(layer, method)(x, *leaves), [t for t, n in zip((x, *leaves), needs) if n]
    names, own = _tensors(layer)
    recorded = any(needs)
    if all(_same(a, b) and (n == b.requires_grad or not recorded) for a, b, n in zip(tensors, own, needs[1:])):
        # The layer's own tensors (what a compiled model passes): called as it is, differentiated for them (where
        # nothing is differentiated, whatever their requires_grad: the call runs under no_grad)
        return layer(x), [t for t, n in zip((x, *own), needs) if n]
    leaves = [t.detach().requires_grad_(n) for t, n in zip(tensors, needs[1:])]
    out = torch.func.functional_call(layer, dict(zip(names, leaves)), (x,), strict=True, tie_weights=False)
    return out, [t for t, n in zip((x, *leaves), needs) if n]


def _autograd_on():
    """Autograd back on inside an operator's implementation (which runs below it)."""
    include, exclude = torch._C._dispatch_tls_local_include_set(), torch._C._dispatch_tls_local_exclude_set()
    return torch._C._ForceDispatchKeyGuard(include, exclude.remove(torch._C.DispatchKey.AutogradFunctionality))


def _recorded(layer: nn.Module, method: str, input: Tensor, tensors: Sequence[Tensor], needs: Sequence[bool]):
    with _autograd_on(), torch.enable_grad():
        return _call(layer, method, input, tensors, needs)


class _Input:
    """Saved by a recorded graph in place of the operator's input: its backward is given the input again (the
    compiled graph keeps it for the backward, or recomputes it), which stands in for it."""

    __slots__ = ("shape", "stride", "tensor")

    def __init__(self, input: Tensor):
        self.shape, self.stride, self.tensor = input.shape, input.stride(), None

    def give(self, input: Tensor) -> None:
        """The backward's input, laid out as the forward's."""
        if input.stride() != self.stride:
            input = torch.empty_strided(self.shape, self.stride, dtype=input.dtype, device=input.device).copy_(input)
        self.tensor = input


def _outer_hooks():
    """The innermost pair of saved-tensor hooks set around this call (``torch.autograd.graph.saved_tensors_hooks``),
    or None (none set, or a torch that does not say)."""
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    return None if top is None else top(False)


def _hooks_enabled() -> bool:
    """Whether saved-tensor hooks may be set here (True where torch does not say)."""
    enabled = getattr(torch._C._autograd, "_saved_tensors_hooks_is_enabled", None)
    return True if enabled is None else enabled()


def _recorded_apart(layer: nn.Module, method: str, input: Tensor, tensors: Sequence[Tensor],
                    needs: Sequence[bool]):
    """:func:`_recorded`, with the recorded graph kept apart from the memory the compiled graph owns, which it
    may reuse once the operator has run: where the recorded graph saves the input, it saves an :class:`_Input`
    in its place; what it saves of the input's memory otherwise (a view of it) is a copy. Also returns that
    :class:`_Input` and whether the graph saved any of its output's memory (the caller then returns a copy).

    Where the caller has disabled saved-tensor hooks (``torch.autograd.graph.disable_saved_tensors_hooks``, as
    ``torch.func.vmap`` does), none can be set: the graph is recorded on a copy of the input instead, and the
    output is copied, the :class:`_Input` then None."""
    if not _hooks_enabled():
        out, leaves = _recorded(layer, method, input.detach().clone(), tensors, needs)
        return out, leaves, None, True
    ours, given = input.untyped_storage().data_ptr(), _Input(input)
    saved: set[int] = set()
    # The caller's saved-tensor hooks (torch.autograd.graph.save_on_cpu, say), which the compiled graph's own
    # saved tensors go through: the recorded graph's go through them too, as they would in eager.
    outer_pack, outer_unpack = _outer_hooks() or (None, None)

    def pack(t: Tensor):
        storage = t.untyped_storage().data_ptr()
        if storage == ours:
            if t.shape == input.shape and t.stride() == input.stride() and t.storage_offset() == input.storage_offset():
                return given
            t = t.detach().clone()
        else:
            saved.add(storage)
            t = t.detach()  # (t itself, where it is its node's output, would hold the node in a reference cycle)
        return t if outer_pack is None else outer_pack(t)

    def unpack(t) -> Tensor:
        if t is given:
            return given.tensor
        return t if outer_unpack is None else outer_unpack(t)

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        out, leaves = _recorded(layer, method, input, tensors, needs)
    return out, leaves, given, out.untyped_storage().data_ptr() in saved


def _layer(key: int) -> nn.Module:
    layer = _LAYERS.get(key)
    if layer is None:
        raise RuntimeError(f"the layer of a compiled graph's largekernel::eager_layer call (key {key}) no longer "
                           f"exists; compile the model again")
    return layer


# CPython stack slots the eager layer's Python takes (985 measured in FlexConv's forward; on_fresh_stack)
_STACK_NEED = 1536

if OPAQUE:
    def _forward_impl(input: Tensor, tensors: list[Tensor], key: int, method: str, needs: list[bool],
                      shape: list[int]) -> tuple[Tensor, Tensor]:
        # (shape: the output's, for the fake implementation)
        layer = _layer(key)
        layout = conv_memory_format(input)
        if not any(needs):
            with torch.no_grad():
                out, _ = _call(layer, method, input, tensors, needs)
            return out.contiguous(memory_format=layout), torch.zeros((), dtype=torch.int64)
        out, leaves, given, saves_out = _recorded_apart(layer, method, input, tensors, needs)
        ticket = next(_TICKETS)
        _GRAPHS[ticket] = (out, leaves, given)
        held = torch.full((), ticket, dtype=torch.int64)
        weakref.finalize(held, _GRAPHS.pop, ticket, None)  # the graph goes with its ticket
        out = out.detach()
        return (out.clone(memory_format=layout) if saves_out else out.contiguous(memory_format=layout)), held

    _forward = define_op("eager_layer", _forward_impl, need=_STACK_NEED)

    @_forward.register_fake
    def _(input, tensors, key, method, needs, shape):
        out = input.new_empty(shape).contiguous(memory_format=conv_memory_format(input))
        return out, input.new_empty((), dtype=torch.int64, device="cpu")

    def _backward_impl(grad: Tensor, input: Tensor, ticket: Tensor, tensors: list[Tensor], key: int, method: str,
                       needs: list[bool]) -> list[Tensor]:
        recorded = _GRAPHS.get(int(ticket))
        if recorded is None:
            # Used already (a second backward, retain_graph=True), or freed with the forward's ticket where the
            # caller's saved-tensor hooks saved a copy of it: the forward again
            out, leaves = _recorded(_layer(key), method, input, tensors, needs)
        else:
            _GRAPHS[int(ticket)] = None
            out, leaves, given = recorded
            if given is not None:
                given.give(input)
        with _autograd_on():
            grads = torch.autograd.grad(out, leaves, grad, allow_unused=True, materialize_grads=True)
        # An operator returns fresh tensors, laid out as its fake: none aliasing an input or another output
        taken = {t.untyped_storage().data_ptr() for t in (grad, input, *tensors)}
        fresh = []
        for g, t in zip(grads, (t for t, n in zip((None, *tensors), needs) if n)):
            if t is None:  # the input's gradient: dense, in the input's memory format
                g = g.contiguous(memory_format=conv_memory_format(input))
            elif g.stride() != t.stride():
                g = torch.empty_like(t).copy_(g)
            storage = g.untyped_storage().data_ptr()
            fresh.append(g.clone(memory_format=torch.preserve_format) if storage in taken else g)
            taken.add(storage)
        return fresh

    _backward = define_op("eager_layer_backward", _backward_impl, need=_STACK_NEED)

    @_backward.register_fake
    def _(grad, input, ticket, tensors, key, method, needs):
        dense = input.new_empty(input.shape).contiguous(memory_format=conv_memory_format(input))
        return [torch.empty_like(t) for t, n in zip((dense, *tensors), needs) if n]

    def _setup_context(ctx, inputs, output):
        input, tensors, key, method, needs, _ = inputs
        ctx.key, ctx.method, ctx.needs = key, method, needs
        ctx.save_for_backward(input, output[1], *tensors)
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)

    def _backward_formula(ctx, grad, _):
        if grad is None or not any(ctx.needs):
            return None, [None] * (len(ctx.needs) - 1), None, None, None, None
        input, ticket, *tensors = ctx.saved_tensors
        grads = iter(_BACKWARD_OP(grad, input, ticket, tensors, ctx.key, ctx.method, ctx.needs))
        input_grad = next(grads) if ctx.needs[0] else None
        return input_grad, [next(grads) if n else None for n in ctx.needs[1:]], None, None, None, None

    _forward.register_autograd(_backward_formula, setup_context=_setup_context)
    _FORWARD_OP, _BACKWARD_OP = library_op("eager_layer"), library_op("eager_layer_backward")


def run(layer: nn.Module, input: Tensor, shape: Sequence[int]) -> Tensor:
    """``layer(input)`` as the operator ``largekernel::eager_layer`` (call it where :func:`applies`), its
    output of ``shape``: given, since the layer's state may still be set by the graph being recorded (a lazy
    layer's first call), after the operator's shape is asked for."""
    _, tensors = _tensors(layer)
    return run_method(layer, "forward", input, tensors, shape)


def run_method(layer: nn.Module, method: str, input: Tensor, tensors: Sequence[Tensor],
               shape: Sequence[int]) -> Tensor:
    """``layer.<method>(input, *tensors)`` (``"forward"``: ``layer(input)``, ``tensors`` its own) as the operator
    ``largekernel::eager_layer``, its output of ``shape``."""
    grad = torch.is_grad_enabled()
    needs = [grad and input.requires_grad] + [grad and t.requires_grad for t in tensors]
    return _FORWARD_OP(input, list(tensors), layer._eager_key, method, needs, list(shape))[0]
