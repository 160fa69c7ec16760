"""The layers and functions under ``torch.fx`` symbolic tracing: one call each, as torch's own.

``torch.fx.symbolic_trace`` (and the tools built on it: torchvision's
``create_feature_extractor``, timm's FX feature extraction, FX graph mode
passes) records a ``torch.nn`` layer as one ``call_module`` node (a leaf) and a
torch function as one ``call_function`` node, and traces any other module's
``forward`` or function with ``Proxy`` objects in place of tensors. The
library's layers and functions read sizes and values to plan their work, which
a ``Proxy`` cannot give, so they record themselves the way torch's are
recorded: the graph calls the layer or function, which computes with real
tensors when the graph runs.
"""

from __future__ import annotations

import functools
import types
from typing import Any, Callable, Iterable, TypeVar

import torch.fx
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

__all__ = ["traced", "leaf_under_fx", "call_under_fx", "own_leaf_forward"]

F = TypeVar("F", bound=Callable[..., Any])


def traced(value: Any) -> bool:
    """Whether ``value`` is a ``torch.fx.Proxy``: a stand-in for a tensor under symbolic tracing, whose sizes and
    values cannot be read (the models skip their input checks on one; the layers check theirs when the traced
    graph runs)."""
    return isinstance(value, torch.fx.Proxy)


def _tracer(values: Iterable[Any]) -> torch.fx.Tracer | None:
    """The tracer of the first ``Proxy`` among ``values`` (looking into tuples: NIFF's ``Spectrum``), if any."""
    for value in values:
        if traced(value):
            return value.tracer
        if isinstance(value, (tuple, list)) and (tracer := _tracer(value)) is not None:
            return tracer
    return None


def _own_code(function: Callable, qualname: str, module: str | None = None) -> Callable:
    """``function`` (a wrapper made here) with a code object of its own, named ``qualname`` (of ``module``).

    Dynamo keeps what it compiled for a function, and counts recompilations against its limit (8), per code object.
    The wrappers below all run one code object, which made every layer class and function of the library one
    function to Dynamo: compiling layers one by one (``torch.compile(layer)``, ``layer.compile()``), the ninth
    configuration of any class or classes failed ("recompile limit exceeded" under ``fullgraph=True``; ran
    uncompiled otherwise). So each wrapper, and each class that inherits one (:func:`own_leaf_forward`), has its
    own, as a class that defines its forward in Python has."""
    code = function.__code__
    fields = {"co_name": qualname.rpartition(".")[2]}
    if hasattr(code, "co_qualname"):  # Python 3.11+
        fields["co_qualname"] = qualname
    own = types.FunctionType(code.replace(**fields), function.__globals__, function.__name__, function.__defaults__,
                             function.__closure__)
    own.__kwdefaults__ = function.__kwdefaults__
    own.__dict__.update(function.__dict__)
    own.__module__, own.__doc__, own.__qualname__ = module or function.__module__, function.__doc__, qualname
    own.__annotations__ = dict(getattr(function, "__annotations__", {}))
    return own


def own_leaf_forward(cls: type) -> None:
    """Give ``cls`` a ``forward`` of its own code object (:func:`_own_code`) where it inherits one made by
    :func:`leaf_under_fx` (call it from ``__init_subclass__``), as each of torch's layer classes has its own."""
    forward = getattr(cls, "forward", None)
    if getattr(forward, "_leaf_of", None) is not None and forward.__qualname__ != f"{cls.__qualname__}.forward":
        cls.forward = _own_code(forward, f"{cls.__qualname__}.forward", cls.__module__)


def leaf_under_fx(forward: F) -> F:
    """Decorate a layer's ``forward``: called with a ``torch.fx.Proxy`` argument (symbolic tracing), it records
    the call as one ``call_module`` node and returns its proxy; otherwise it runs as written.

    Hooks on the layer would be traced into the graph around that node and run again by the layer when the graph
    calls it, so a layer with hooks is refused there (a tracer that lists the layer's class among its leaf modules
    records it without tracing them, as it does torch's layers)."""

    @functools.wraps(forward)
    def traced_as_one_call(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        # (The flag first: a call outside symbolic tracing costs one function call, not a look at every argument.)
        if not is_fx_symbolic_tracing() or (tracer := _tracer((*args, *kwargs.values()))) is None:
            return forward(self, *args, **kwargs)
        path = tracer.path_of_module(self)
        if not path:
            # The root module: a graph cannot call its own root as a submodule (GraphModule would look up an
            # attribute named ''), and the layer's forward reads sizes and values a Proxy does not have.
            raise torch.fx.proxy.TraceError(
                f"torch.fx symbolic tracing of a {type(self).__name__} as the root module: the library's layers "
                f"are recorded as one call of the layer (as torch's layers are inside a model), which needs a "
                f"module that holds the layer; trace that module instead, e.g. "
                f"torch.fx.symbolic_trace(nn.Sequential(layer))")
        if self._forward_hooks or self._forward_pre_hooks:
            raise RuntimeError(f"torch.fx symbolic tracing of {type(self).__name__} {path!r}, which has forward hooks: "
                               f"they would run twice in the traced graph; remove them while tracing, or pass the "
                               f"class to the tracer as a leaf module (e.g. torchvision's create_feature_extractor("
                               f"..., tracer_kwargs={{'leaf_modules': [{type(self).__name__}]}}))")
        return tracer.create_proxy("call_module", path, args, kwargs)

    traced_as_one_call._leaf_of = forward  # type: ignore[attr-defined]
    return _own_code(traced_as_one_call, forward.__qualname__)  # type: ignore[return-value]


def call_under_fx(function: F) -> F:
    """Decorate a public function of tensors: called with a ``torch.fx.Proxy`` argument (a user's module that
    calls it, symbolically traced), it records one ``call_function`` node of itself and returns its proxy, as
    ``torch.nn.functional.conv2d`` is recorded; otherwise it runs as written."""

    @functools.wraps(function)
    def traced_as_one_call(*args: Any, **kwargs: Any) -> Any:
        if not is_fx_symbolic_tracing() or (tracer := _tracer((*args, *kwargs.values()))) is None:
            return function(*args, **kwargs)
        return tracer.create_proxy("call_function", recorded, args, kwargs)

    recorded = _own_code(traced_as_one_call, function.__qualname__)
    return recorded  # type: ignore[return-value]
