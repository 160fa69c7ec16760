"""How large are the kernels a network actually learns?

Effective kernel size from the dense spatial kernel of any layer family, after
NIFF (Grabinski et al., "As large as it gets: Studying Infinitely Large
Convolutions via Neural Implicit Frequency Filters", TMLR 2024): the *kernel
mass ratio* is the share of a kernel's absolute mass ``sum |k|`` that lies inside
a centred ``s x s`` window, and the effective size at fraction ``f`` is the
smallest such window holding at least ``f`` of the mass. NIFF's shape ablation
(fitting a Gaussian to each kernel) and its PCA of spatial kernels live here too.

Conventions. A kernel batch has layout ``(N, *k)``: ``N`` kernels with ``ndim``
spatial dimensions. The centre ("zero offset") of a length-``K`` axis is index
``(K - 1) // 2``, the tap that lines up with the output under ``padding="same"``
in ``torch.nn.functional.conv*d``. Windows have odd sizes ``1, 3, 5, ...`` so
that they are symmetric about the centre; an even-length axis additionally gets
the full size ``K`` so the last window always holds all the mass.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from largekernel.nn._base import KernelConvNd

__all__ = [
    "spatial_kernels",
    "kernel_layers",
    "layer_input_sizes",
    "window_sizes",
    "kernel_mass_ratio",
    "effective_kernel_size",
    "kernel_size_report",
    "stage_summary",
    "gaussian_fit",
    "kernel_pca",
    "DEFAULT_FRACTIONS",
]

DEFAULT_FRACTIONS = (0.5, 0.9, 0.99)
_STAGE_RE = re.compile(r"(?:^|\.)(stage|layer|block)s?\.?(\d+)")


def _check_ndim(kernel: Tensor, ndim: int | None) -> int:
    if not isinstance(kernel, Tensor):
        raise TypeError(f"kernel must be a torch.Tensor, got {type(kernel).__name__}")
    if ndim is None:
        ndim = max(kernel.dim() - 1, 1)
    if not isinstance(ndim, int) or not 1 <= ndim <= kernel.dim():
        raise ValueError(f"ndim must be an int in [1, kernel.dim()={kernel.dim()}], got {ndim!r}")
    return ndim


def _centred_windows(shape: Sequence[int], size: int) -> tuple[slice, ...]:
    """Slices of the centred window of odd ``size`` (clipped to the kernel) over the last dims."""
    slices = []
    for length in shape:
        centre = (length - 1) // 2
        half = (size - 1) // 2
        slices.append(slice(max(centre - half, 0), min(centre + half + 1, length)))
    return (Ellipsis, *slices)


def window_sizes(shape: Sequence[int]) -> list[int]:
    """Window sizes used for a kernel of spatial ``shape``: odd sizes up to its largest side.

    Windows larger than one side are clipped to it, so for a ``5 x 9`` kernel the
    ``7`` window is ``5 x 7``. An even largest side adds itself as the last size.
    """
    largest = max(int(s) for s in shape)
    if largest < 1:
        raise ValueError(f"kernel shape must be positive, got {tuple(shape)}")
    sizes = list(range(1, largest + 1, 2))
    if largest % 2 == 0:
        sizes.append(largest)
    return sizes


def kernel_mass_ratio(kernel: Tensor, ndim: int | None = None,
                      sizes: Sequence[int] | None = None) -> tuple[Tensor, list[int]]:
    """Share of ``|kernel|`` mass inside centred windows (NIFF's kernel mass ratio).

    Args:
        kernel: ``(..., *k)``; the last ``ndim`` dimensions are spatial.
        ndim: number of spatial dimensions; default ``kernel.dim() - 1`` (layout ``(N, *k)``).
        sizes: window side lengths; default :func:`window_sizes` of the kernel.
            An even size has no centred window and counts as the next odd one
            (clipped to the kernel), so an even axis's full length covers it all.

    Returns:
        ``(ratios, sizes)``: ``ratios`` has shape ``(..., len(sizes))``, each entry
        in ``[0, 1]`` and non-decreasing along the last axis. A kernel that is all
        zeros has ratio 1 everywhere (there is no mass outside any window).
    """
    ndim = _check_ndim(kernel, ndim)
    shape = kernel.shape[-ndim:]
    sizes = window_sizes(shape) if sizes is None else [int(s) for s in sizes]
    if any(s < 1 for s in sizes):
        raise ValueError(f"sizes must be positive window side lengths, got {list(sizes)}")
    mass = kernel.detach().abs().to(torch.float64)
    spatial = tuple(range(-ndim, 0))
    total = mass.sum(dim=spatial)  # (...)
    ratios = []
    for size in sizes:
        # an even size inside an odd axis has no centred window; round it up to the odd one
        inner = mass[_centred_windows(shape, size + 1 - size % 2)].sum(dim=spatial)
        ratios.append(torch.where(total > 0, inner / total.clamp_min(1e-300), torch.ones_like(total)))
    return torch.stack(ratios, dim=-1).clamp(0, 1), sizes  # (..., S)


def effective_kernel_size(kernel: Tensor, ndim: int | None = None,
                          fractions: Sequence[float] = DEFAULT_FRACTIONS) -> Tensor:
    """Smallest centred window side holding at least each fraction of ``|kernel|`` mass.

    A delta has size 1 for every fraction; a centred ``k x k`` box has size ``k``
    for any fraction above ``((k - 2) / k) ** ndim``.

    Returns:
        ``(..., len(fractions))`` integer tensor of window side lengths.
    """
    for f in fractions:
        if not 0 < float(f) <= 1:
            raise ValueError(f"fractions must lie in (0, 1], got {list(fractions)}")
    ratios, sizes = kernel_mass_ratio(kernel, ndim)
    return _size_at(ratios, sizes, fractions)


def _size_at(ratios: Tensor, sizes: Sequence[int], fractions: Sequence[float]) -> Tensor:
    sizes_t = torch.tensor(sizes, dtype=torch.long)
    # tolerance so that a window holding exactly f of the mass counts despite rounding
    thresholds = torch.tensor([float(f) for f in fractions], dtype=ratios.dtype) - 1e-9
    reached = ratios.unsqueeze(-2) >= thresholds.unsqueeze(-1)  # (..., F, S)
    first = reached.to(torch.int8).argmax(dim=-1)  # (..., F) first window reaching f
    return sizes_t[first]


# ------------------------------------------------------------------ layers


def _dense_from_conv(conv: nn.modules.conv._ConvNd) -> Tensor:
    """A plain conv's kernel with its dilation written out as zeros between taps."""
    weight = conv.weight.detach()  # (out, in/g, *k)
    dilation = tuple(conv.dilation)
    if all(d == 1 for d in dilation):
        return weight
    k = weight.shape[2:]
    dense = weight.new_zeros(*weight.shape[:2], *[d * (s - 1) + 1 for d, s in zip(dilation, k)])
    dense[(slice(None), slice(None), *[slice(None, None, d) for d in dilation])] = weight
    return dense  # (out, in/g, *dilated k)


def spatial_kernels(module: nn.Module, input_size: Sequence[int] | None = None) -> Tensor:
    """The dense spatial kernels a layer applies, as ``(N, *k)`` (``N = out * in/groups``).

    Every learnable-kernel family through its ``construct_kernel(input_size)`` (the kernel protocol,
    :class:`largekernel.nn._base.KernelConvNd`), and plain ``torch.nn.ConvNd`` (dilation written out as zeros).

    Args:
        module: the layer.
        input_size: spatial size of the layer's input, needed by layers whose kernel depends on it
            (NIFF, SGConv, S4D).
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    with torch.no_grad():
        if isinstance(module, KernelConvNd):
            if module.input_dependent and input_size is None:
                raise ValueError(f"{type(module).__name__} needs the input size; pass input_size=(spatial sizes), "
                                 f"got None")
            kernel = module.construct_kernel(None if input_size is None else tuple(int(s) for s in input_size))
        elif isinstance(module, nn.modules.conv._ConvNd):
            kernel = _dense_from_conv(module)
        else:
            raise TypeError(f"module must be a convolution layer (torch ConvNd or a largekernel kernel layer), got "
                            f"{type(module).__name__}")
    return kernel.detach().reshape(-1, *kernel.shape[2:])  # (out * in/g, *k)


def _has_spatial_kernel(module: nn.Module) -> bool:
    if isinstance(module, KernelConvNd):
        return True
    if isinstance(module, nn.modules.conv._ConvNd):
        return any(k > 1 for k in module.kernel_size)  # 1x1 convs mix channels, no spatial extent
    return False


def kernel_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every layer with a spatial kernel, outermost only.

    A kernel layer's own submodules (a FlexConv kernel network, say) are not listed.
    """
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix, _ in found if prefix):
            continue
        if _has_spatial_kernel(module):
            found.append((name, module))
    return found


def _stage_of(name: str) -> str:
    """``stages.2.blocks.1.conv`` -> ``stage2``, ``blocks.3.conv`` -> ``block3``; other names keep their
    first part (``stem``)."""
    match = _STAGE_RE.search(name)
    if match:
        return f"{match.group(1)}{match.group(2)}"
    return name.split(".")[0] or "model"


def layer_input_sizes(model: nn.Module, example: Tensor,
                      layers: list[tuple[str, nn.Module]] | None = None) -> dict[str, tuple[int, ...]]:
    """Spatial input size of each kernel layer (default :func:`kernel_layers`) in one forward pass of ``example``."""
    layers = kernel_layers(model) if layers is None else layers
    sizes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            sizes.setdefault(name, tuple(args[0].shape[2:]))
        return hook

    hooks = [module.register_forward_pre_hook(record(name)) for name, module in layers]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    return sizes


def kernel_size_report(model: nn.Module, example: Tensor | None = None,
                       fractions: Sequence[float] = DEFAULT_FRACTIONS) -> list[dict]:
    """Effective kernel size of every kernel layer in ``model``.

    Args:
        model: any model; layers are found with :func:`kernel_layers`.
        example: an input batch ``(B, C, *spatial)``; one forward pass records each
            layer's input size (needed by input-sized kernels like NIFF's).
        fractions: mass fractions for the effective sizes.

    Returns:
        One dict per layer: ``name``, ``stage`` (``stageN`` / ``layerN`` / ``blockN`` from the first
        such numbered part of the name, else the name's first part),
        ``family`` (class name), ``kernel_shape``, ``num_kernels``, ``sizes`` and
        ``mass_ratio`` (the mean over the layer's kernels of their mass-ratio
        curves), ``effective_size`` (fraction -> window side of the mean curve) and
        ``median_size`` (fraction -> median over kernels of each kernel's size).
    """
    layers = kernel_layers(model)
    input_sizes = layer_input_sizes(model, example, layers) if example is not None else {}
    report = []
    for name, module in layers:
        kernels = spatial_kernels(module, input_sizes.get(name))  # (N, *k)
        ratios, sizes = kernel_mass_ratio(kernels)
        mean_curve = ratios.mean(dim=0)  # (S,)
        per_kernel = _size_at(ratios, sizes, fractions).to(torch.float64)  # (N, F)
        report.append({
            "name": name,
            "stage": _stage_of(name),
            "family": type(module).__name__,
            "kernel_shape": list(kernels.shape[1:]),
            "num_kernels": int(kernels.shape[0]),
            "sizes": sizes,
            "mass_ratio": mean_curve.tolist(),
            "effective_size": {str(f): int(s) for f, s in zip(fractions, _size_at(mean_curve, sizes, fractions))},
            "median_size": {str(f): float(s) for f, s in zip(fractions, per_kernel.median(dim=0).values)},
        })
    return report


def stage_summary(report: list[dict]) -> dict[str, dict[str, float]]:
    """Per stage, the mean over its layers of each fraction's effective size."""
    stages: dict[str, list[dict]] = {}
    for row in report:
        stages.setdefault(row["stage"], []).append(row)
    return {stage: {f: sum(r["effective_size"][f] for r in rows) / len(rows) for f in rows[0]["effective_size"]}
            for stage, rows in stages.items()}


# ------------------------------------------------------------------ shape


def gaussian_fit(kernel: Tensor, ndim: int | None = None) -> dict[str, Tensor]:
    """Fit an axis-free Gaussian to ``|kernel|`` by its moments (NIFF's shape ablation).

    ``|kernel|``, normalised to sum 1, is read as a density over tap offsets from
    the centre; its mean and covariance are the maximum-likelihood Gaussian. The
    amplitude is then chosen by least squares and ``r2`` reports how much of
    ``|kernel|``'s variance the fitted Gaussian explains.

    Returns:
        dict with ``mean`` ``(..., ndim)`` (taps from the centre), ``cov``
        ``(..., ndim, ndim)``, ``sigma`` ``(..., ndim)`` (principal standard
        deviations, descending), ``aspect`` ``(...)`` (largest / smallest sigma;
        1 is round or square), ``angle`` ``(...)`` (radians of the major axis from
        the last spatial axis, 2-D only, else zeros), ``r2`` ``(...)``.
    """
    ndim = _check_ndim(kernel, ndim)
    shape = kernel.shape[-ndim:]
    mass = kernel.detach().abs().to(torch.float64)
    lead = mass.shape[:-ndim]
    flat = mass.reshape(*lead, -1)  # (..., P)
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float64) - (s - 1) // 2 for s in shape], indexing="ij")
    coords = torch.stack([g.reshape(-1) for g in grids], dim=-1)  # (P, ndim)
    weights = flat / flat.sum(-1, keepdim=True).clamp_min(1e-300)  # (..., P)
    mean = weights @ coords  # (..., ndim)
    centred = coords - mean.unsqueeze(-2)  # (..., P, ndim)
    cov = torch.einsum("...p,...pi,...pj->...ij", weights, centred, centred)  # (..., ndim, ndim)
    eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
    sigma = eigvals.clamp_min(0).sqrt().flip(-1)  # (..., ndim) descending
    aspect = sigma[..., 0] / sigma[..., -1].clamp_min(1e-12)
    if ndim == 2:
        major = eigvecs[..., :, -1]  # (..., 2) rows: (axis0, axis1)
        angle = torch.atan2(major[..., 0], major[..., 1])
        angle = torch.remainder(angle, math.pi)  # an axis, not a direction
    else:
        angle = torch.zeros(lead, dtype=torch.float64)
    # unnormalised Gaussian shape at every tap; amplitude by least squares
    precision = torch.linalg.pinv(cov)
    quad = torch.einsum("...pi,...ij,...pj->...p", centred, precision, centred)
    shape_fn = torch.exp(-0.5 * quad)  # (..., P)
    amp = (shape_fn * flat).sum(-1) / (shape_fn * shape_fn).sum(-1).clamp_min(1e-300)
    resid = flat - amp.unsqueeze(-1) * shape_fn
    total = (flat - flat.mean(-1, keepdim=True)).pow(2).sum(-1)
    r2 = 1 - resid.pow(2).sum(-1) / total.clamp_min(1e-300)
    return {"mean": mean, "cov": cov, "sigma": sigma, "aspect": aspect, "angle": angle, "r2": r2}


def kernel_pca(kernels: Tensor, num_components: int = 8, ndim: int | None = None) -> dict[str, Tensor]:
    """Principal components of a set of spatial kernels (NIFF's PCA of learned filters).

    Args:
        kernels: ``(N, *k)`` or ``(..., *k)`` with ``ndim`` spatial dims; all leading
            dims are kernels.
        num_components: how many components to return (at most ``min(N, prod(k))``).

    Returns:
        dict with ``components`` ``(C, *k)`` (unit norm, sign fixed so the largest
        entry is positive), ``explained_variance_ratio`` ``(C,)``, ``mean`` ``(*k)``.
    """
    ndim = _check_ndim(kernels, ndim)
    if not isinstance(num_components, int) or num_components < 1:
        raise ValueError(f"num_components must be a positive int, got {num_components!r}")
    shape = kernels.shape[-ndim:]
    data = kernels.detach().reshape(-1, math.prod(shape)).to(torch.float64)  # (N, P)
    if data.shape[0] < 2:
        raise ValueError(f"kernel_pca needs at least 2 kernels, got {data.shape[0]}")
    mean = data.mean(dim=0)
    _, singular, vh = torch.linalg.svd(data - mean, full_matrices=False)  # vh: (min(N,P), P)
    variance = singular.pow(2)
    ratio = variance / variance.sum().clamp_min(1e-300)
    count = min(num_components, vh.shape[0])
    components = vh[:count]
    signs = torch.sign(components.gather(1, components.abs().argmax(dim=1, keepdim=True)))
    components = components * signs
    return {"components": components.reshape(count, *shape), "explained_variance_ratio": ratio[:count],
            "mean": mean.reshape(shape)}
