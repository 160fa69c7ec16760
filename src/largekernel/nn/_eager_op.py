"""A layer run eagerly, as one opaque operator, inside a ``torch.compile`` graph.

FlexConv's dynamic cropping sizes the kernel it applies from its mask's parameters: a value
that a recorded graph cannot hold as a size. Traced, the layer therefore applies its whole
grid, zero outside the crop (``_FlexConvNd._crop``), and costs what the whole grid costs:
4x eager on ``bench flexconv``'s 1-D case, where both the kernel net and the convolution
shrink with the crop. Under ``torch.compile`` (not ``torch.export``, whose programs must
hold torch operations only) such a layer is called instead as the operator
``largekernel::eager_layer``, which runs the layer's own eager forward, cropping included.

The backward does not recompute that forward. The operator records the eager autograd graph
of its call (with autograd switched back on inside it: an operator runs below autograd) and
keeps it under a ticket, a 0-dim tensor it returns, which the compiled graph saves for its
backward. ``largekernel::eager_layer_backward`` takes the graph by its ticket and runs it. The
graph lives as long as its ticket: a forward whose backward never runs frees it with the
ticket. A ticket whose graph was already used (a second backward through
``retain_graph=True``) has the forward recomputed. The result is eager's, bit for bit: the
same operations run. The recorded graph keeps its own copy of the input, and the operator
returns a copy of the output: the compiled graph may reuse either's memory once the
operator has run, which would change what the recorded graph saved.

The layer decides where the operator pays (FlexConv: where its kernel net's output on the
whole grid is large, ``flexconv._EAGER_MIN_VOLUME``); it costs about 0.25 ms a call.

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

from largekernel.functional._spectral import _memory_format
from largekernel.functional._tracing import OPAQUE, compiling

__all__ = ["EagerInCompile", "applies", "run"]

_LAYERS: "weakref.WeakValueDictionary[int, nn.Module]" = weakref.WeakValueDictionary()
_KEYS = itertools.count(1)
# ticket -> (the input's copy, (the eager output, the leaves its gradients are taken for)), the pair None once a
# backward has used it: what each recorded forward keeps for its backward
_GRAPHS: dict[int, tuple[Tensor, list[Tensor]]] = {}
_TICKETS = itertools.count(1)
_LAYOUTS = (torch.contiguous_format, torch.channels_last, torch.channels_last_3d)


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
    return (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
            and a.dtype == b.dtype and a.device == b.device)


def _call(layer: nn.Module, input: Tensor, tensors: Sequence[Tensor], needs: Sequence[bool]):
    """The layer's eager forward on ``tensors`` (its parameters and buffers as the graph passes them); with
    ``needs`` (input, then each tensor) recorded for autograd. Returns the output and the leaves to
    differentiate."""
    names, own = _tensors(layer)
    x = input.detach().requires_grad_(needs[0])
    if all(_same(a, b) and n == b.requires_grad for a, b, n in zip(tensors, own, needs[1:])):
        # The layer's own tensors (what a compiled model passes): called as it is, differentiated for them
        return layer(x), [t for t, n in zip((x, *own), needs) if n]
    leaves = [t.detach().requires_grad_(n) for t, n in zip(tensors, needs[1:])]
    out = torch.func.functional_call(layer, dict(zip(names, leaves)), (x,), strict=True, tie_weights=False)
    return out, [t for t, n in zip((x, *leaves), needs) if n]


def _autograd_on():
    """Autograd back on inside an operator's implementation (which runs below it)."""
    include, exclude = torch._C._dispatch_tls_local_include_set(), torch._C._dispatch_tls_local_exclude_set()
    return torch._C._ForceDispatchKeyGuard(include, exclude.remove(torch._C.DispatchKey.AutogradFunctionality))


def _recorded(layer: nn.Module, input: Tensor, tensors: Sequence[Tensor], needs: Sequence[bool]):
    with _autograd_on(), torch.enable_grad():
        return _call(layer, input, tensors, needs)


def _layer(key: int) -> nn.Module:
    layer = _LAYERS.get(key)
    if layer is None:
        raise RuntimeError(f"the layer of a compiled graph's largekernel::eager_layer call (key {key}) no longer "
                           f"exists; compile the model again")
    return layer


if OPAQUE:
    @torch.library.custom_op("largekernel::eager_layer", mutates_args=())
    def _forward(input: Tensor, tensors: list[Tensor], key: int, needs: list[bool],
                 shape: list[int]) -> tuple[Tensor, Tensor]:
        layer = _layer(key)
        layout = _memory_format(input)
        if not any(needs):
            with torch.no_grad():
                out, _ = _call(layer, input, tensors, needs)
            return out.contiguous(memory_format=layout), torch.zeros((), dtype=torch.int64)
        # The recorded graph keeps its own copy of the input: the compiled graph may reuse the input's memory
        # once the operator has run (it recomputes cheap inputs for its backward instead of saving them)
        input = input.detach().clone()
        out, leaves = _recorded(layer, input, tensors, needs)
        ticket = next(_TICKETS)
        _GRAPHS[ticket] = (input, (out, leaves))
        held = torch.full((), ticket, dtype=torch.int64)
        weakref.finalize(held, _GRAPHS.pop, ticket, None)  # the graph goes with its ticket
        # A copy: the compiled graph may reuse the output's memory too, which the recorded graph may have saved
        return out.detach().clone(memory_format=layout), held

    @_forward.register_fake
    def _(input, tensors, key, needs, shape):
        out = input.new_empty(shape).contiguous(memory_format=_memory_format(input))
        return out, input.new_empty((), dtype=torch.int64, device="cpu")

    @torch.library.custom_op("largekernel::eager_layer_backward", mutates_args=())
    def _backward(grad: Tensor, ticket: Tensor, tensors: list[Tensor], key: int, needs: list[bool],
                  shape: list[int], layout: int) -> list[Tensor]:
        input, recorded = _GRAPHS[int(ticket)]
        if recorded is None:  # used already (a second backward, retain_graph=True): the forward again
            recorded = _recorded(_layer(key), input, tensors, needs)
        else:
            _GRAPHS[int(ticket)] = (input, None)
        out, leaves = recorded
        with _autograd_on():
            grads = torch.autograd.grad(out, leaves, grad, allow_unused=True, materialize_grads=True)
        # An operator returns fresh tensors, laid out as its fake: none aliasing an input or another output
        taken = {t.untyped_storage().data_ptr() for t in (grad, *tensors)}
        fresh = []
        for g, t in zip(grads, (t for t, n in zip((None, *tensors), needs) if n)):
            if t is None:  # the input's gradient
                g = g.contiguous(memory_format=_LAYOUTS[layout])
            elif g.stride() != t.stride():
                g = torch.empty_like(t).copy_(g)
            storage = g.untyped_storage().data_ptr()
            fresh.append(g.clone(memory_format=torch.preserve_format) if storage in taken else g)
            taken.add(storage)
        return fresh

    @_backward.register_fake
    def _(grad, ticket, tensors, key, needs, shape, layout):
        input = grad.new_empty(shape).contiguous(memory_format=_LAYOUTS[layout])
        return [torch.empty_like(t) for t, n in zip((input, *tensors), needs) if n]

    def _setup_context(ctx, inputs, output):
        input, tensors, key, needs, _ = inputs
        ctx.key, ctx.needs = key, needs
        ctx.save_for_backward(output[1], *tensors)
        ctx.shape, ctx.layout = list(input.shape), _LAYOUTS.index(_memory_format(input))
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)

    def _backward_formula(ctx, grad, _):
        if grad is None or not any(ctx.needs):
            return None, [None] * (len(ctx.needs) - 1), None, None, None
        ticket, *tensors = ctx.saved_tensors
        grads = iter(torch.ops.largekernel.eager_layer_backward(grad, ticket, tensors, ctx.key, ctx.needs, ctx.shape,
                                                                ctx.layout))
        input_grad = next(grads) if ctx.needs[0] else None
        return input_grad, [next(grads) if n else None for n in ctx.needs[1:]], None, None, None

    _forward.register_autograd(_backward_formula, setup_context=_setup_context)


def run(layer: nn.Module, input: Tensor, shape: Sequence[int]) -> Tensor:
    """``layer(input)`` as the operator ``largekernel::eager_layer`` (call it where :func:`applies`), its
    output of ``shape``: given, since the layer's state may still be set by the graph being recorded (a lazy
    layer's first call), after the operator's shape is asked for."""
    _, tensors = _tensors(layer)
    grad = torch.is_grad_enabled()
    needs = [grad and input.requires_grad] + [grad and t.requires_grad for t in tensors]
    return torch.ops.largekernel.eager_layer(input, tensors, layer._eager_key, needs, list(shape))[0]
