"""Fused CPU passes of the depthwise FFT paths, compiled from ``_native.c`` on first use.

The depthwise FFT paths spend about as long on elementwise passes over their channel
blocks as on the transforms themselves. Fused here (see ``_native.c``): packing two real
channels into one complex signal and back (with the bias), the product of a channel pair's
spectrum with its two kernels and its adjoint with the kernel-gradient sums
(:mod:`largekernel.functional._packed`), the Hermitian part of those sums, and, for the real-FFT paths, the kernel gradient
together with the input-gradient product; the contracting products' frequency-major transposes (cache-sized square
tiles). Also NIFF's frequency networks, forward and backward
(:mod:`largekernel.nn._frequency_op`), where torch's cost is the number of its operations.

The C source is compiled once per machine with the system C compiler (``$CC``, else ``cc``;
``-O3 -march=native -fopenmp``) into the cache folder (``$LARGEKERNEL_CACHE``, else
``$XDG_CACHE_HOME/largekernel`` or ``~/.cache/largekernel``) and loaded with :mod:`ctypes`.
Without a compiler, with ``LARGEKERNEL_NATIVE=0`` (or :func:`native_kernels` ``(False)``), off
the CPU, for other dtypes, while tracing (``torch.jit.trace``, ``torch.compile``,
``torch.export``: they cannot see into a foreign call; a compiled graph runs the FFT
product as an opaque operator, which calls them) and under a
dispatch mode (``torch.utils.flop_counter``: it counts torch operations), the callers run
the same passes as torch operations; results agree to rounding. Each kernel's results do
not depend on the thread count.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

__all__ = ["native_kernels", "available", "pack_pairs", "unpack_pairs", "mirror_product", "mirror_grad",
           "hermitian", "spectral_grad", "transpose", "niff_kept_size", "niff_nets_forward", "niff_nets_backward"]

SOURCE = Path(__file__).with_name("_native.c")
# Set to False (or LARGEKERNEL_NATIVE=0 in the environment) to run everything as torch operations.
ENABLED = os.environ.get("LARGEKERNEL_NATIVE", "1") != "0"
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_COMPLEX = {torch.complex64: torch.float32, torch.complex128: torch.float64}
_FLAGS = (["-O3", "-march=native", "-fopenmp"], ["-O3", "-fopenmp"], ["-O3"])  # tried in this order


def _cache_dir() -> Path:
    if os.environ.get("LARGEKERNEL_CACHE"):
        return Path(os.environ["LARGEKERNEL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "largekernel"


def _machine() -> str:
    """What a ``-march=native`` build depends on: the CPU's model and feature flags."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _compile(compiler: str, target: Path) -> None:
    """Build the shared library at ``target`` (written under a temporary name, then renamed: a concurrent
    process never loads a half-written file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for flags in _FLAGS:
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        cmd = [compiler, *flags, "-shared", "-fPIC", str(SOURCE), "-o", tmp, "-lm"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode == 0:
            os.replace(tmp, target)
            return
        os.unlink(tmp)
        errors.append(f"{' '.join(cmd)}: {result.stderr.strip()[-500:]}")
    raise RuntimeError("\n".join(errors))


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    signatures = {
        "pack_pairs": [p, p, p, i64, i64, i64, p, p, p, i64, i64, i64, i64, i32],
        "unpack_pairs": [p, p, p, i64, i64, i64, p, p, p, i64, i64, i64, i64, p, p, i32],
        "mirror_product": [p, p, p, p, i64, i64, i64, i64, p, i32],
        "mirror_grad": [p, p, p, p, p, p, p, i64, i64, i64, i64, p, i32],
        "spectral_grad": [p, p, p, p, i64, i64, i64, i32, i32, i32],
        "transpose": [p, p, i64, i64, i32],
        "niff_nets_forward": [i64, p, i64, p, p, p, p, p, i32],
        "niff_nets_backward": [i64, p, i64, p, p, p, p, p, p, p, i32],
    }
    for suffix, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        for name, argtypes in {**signatures, "hermitian": [p, i64, p, real, i32, i32]}.items():
            fn = getattr(lib, f"lk_{name}_{suffix}")
            fn.argtypes = argtypes
            fn.restype = None
    return lib


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels (built on the first call of a process that finds no cached build), or ``None``
    when there is no C compiler or the build fails (with a warning saying why)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
        key = hashlib.sha256("\0".join([SOURCE.read_text(), version, _machine(), repr(_FLAGS)]).encode())
        target = _cache_dir() / f"lk_native-{key.hexdigest()[:16]}.so"
        if not target.exists():
            try:
                _compile(compiler, target)
            except OSError:  # an unwritable cache folder: build into a private temporary one
                target = Path(tempfile.mkdtemp(prefix="largekernel-")) / target.name
                _compile(compiler, target)
        return _declare(ctypes.CDLL(str(target)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        warnings.warn(f"largekernel: native CPU kernels unavailable, using torch operations ({error})",
                      RuntimeWarning, stacklevel=2)
        return None


def native_kernels(enable: bool | None = None) -> bool:
    """Whether the fused CPU kernels run (building them on the first call); ``enable`` turns them on or off
    for this process first (the environment's ``LARGEKERNEL_NATIVE=0`` starts with them off)."""
    global ENABLED
    if enable is not None:
        ENABLED = bool(enable)
    return ENABLED and library() is not None


def _pointer(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _dispatch_modes() -> bool:
    """Whether a ``TorchDispatchMode`` is active (FLOP counters, fake tensors, debug modes): it must see torch
    operations."""
    return _get_current_dispatch_mode() is not None


def _eager(*tensors: Tensor) -> bool:
    """Whether real CPU tensors are being computed on now (not traced, compiled, faked, observed by a dispatch
    mode, or on a device)."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or _dispatch_modes():
        return False
    return all(type(t) is torch.Tensor and t.is_cpu for t in tensors)


def available(*tensors: Tensor) -> bool:
    """Whether the native kernels run for these tensors: enabled, built, eager CPU, one dtype among
    float32/64 and complex64/128 (real and complex parts of the same precision)."""
    if not ENABLED:
        return False
    real = _COMPLEX.get(tensors[0].dtype, tensors[0].dtype)
    return (real in _SUFFIX and all(_COMPLEX.get(t.dtype, t.dtype) == real for t in tensors[1:])
            and _eager(*tensors) and library() is not None)


def _kernel(name: str, t: Tensor):
    return getattr(library(), f"lk_{name}_{_SUFFIX[_COMPLEX.get(t.dtype, t.dtype)]}")


def _grid3(values, fill: int = 1) -> ctypes.Array:
    """Sizes (or, with ``fill=0``, offsets) of a 1-3-D grid as the kernels' three dims."""
    values = tuple(values)
    return (ctypes.c_int64 * 3)(*((fill,) * (3 - len(values)) + values))


def _planes(t: Tensor, batch: int, channels: int, size: tuple[int, ...]) -> bool:
    """Whether ``t`` is ``(batch, channels, *size)`` with every ``(b, c)`` plane contiguous."""
    if t.shape != (batch, channels, *size):
        return False
    expected = 1
    for n, stride in zip(reversed(size), reversed(t.stride())):
        if n != 1 and stride != expected:
            return False
        expected *= n
    return True


def pack_pairs(first: Tensor, second: Tensor, z: Tensor, start: tuple[int, ...]) -> bool:
    """:func:`largekernel.functional._packed.pack_pairs` into the contiguous complex ``z``, if the native kernel
    can; returns whether it ran (else nothing was written)."""
    nd = z.dim() - 2
    batch, n = z.shape[:2]
    size = tuple(first.shape[2:])
    n2 = second.shape[1]
    if not (1 <= nd <= 3 and z.is_contiguous() and z.numel() and available(first, second, z)
            and _planes(first, batch, n, size) and _planes(second, batch, n2, size) and n2 <= n
            and all(0 <= a and a + k <= g for a, k, g in zip(start, size, z.shape[2:]))):
        return False
    _kernel("pack_pairs", z)(first.data_ptr(), second.data_ptr(), z.data_ptr(), batch, n, n2, _grid3(z.shape[2:]),
                             _grid3(start, 0), _grid3(size), first.stride(0), first.stride(1), second.stride(0), second.stride(1),
                             torch.get_num_threads())
    return True


def transpose(matrix: Tensor) -> Tensor | None:
    """``matrix.T``, contiguous, of a contiguous complex ``(rows, cols)`` matrix, if the native kernel can (not
    where autograd records the call: the result has no history); else None."""
    if not (matrix.dim() == 2 and matrix.is_complex() and matrix.is_contiguous() and matrix.numel()
            and not (matrix.requires_grad and torch.is_grad_enabled()) and available(matrix)):
        return None
    out = matrix.new_empty(matrix.shape[::-1])
    _kernel("transpose", matrix)(matrix.data_ptr(), out.data_ptr(), matrix.shape[0], matrix.shape[1],
                                 torch.get_num_threads())
    return out


def unpack_pairs(z: Tensor, first: Tensor, second: Tensor, start: tuple[int, ...], bias_first: Tensor | None,
                 bias_second: Tensor | None) -> bool:
    """:func:`largekernel.functional._packed.unpack_pairs` of the contiguous complex ``z``, if the native kernel
    can; returns whether it ran (else nothing was written)."""
    nd = z.dim() - 2
    batch, n = z.shape[:2]
    size = tuple(first.shape[2:])
    n2 = second.shape[1]
    biases = [b for b in (bias_first, bias_second) if b is not None]
    if not (1 <= nd <= 3 and z.is_contiguous() and z.numel() and available(z, first, second, *biases)
            and _planes(first, batch, n, size) and _planes(second, batch, n2, size) and n2 <= n
            and all(b.is_contiguous() for b in biases)):
        return False
    if not all(0 <= a and a + k <= g for a, k, g in zip(start, size, z.shape[2:])):
        # The kernel trusts the geometry: never let it read outside z.
        raise ValueError(f"unpack_pairs: region {tuple(start)} + {size} outside the grid {tuple(z.shape[2:])}")
    _kernel("unpack_pairs", first)(z.data_ptr(), first.data_ptr(), second.data_ptr(), batch, n, n2,
                                   _grid3(z.shape[2:]), _grid3(start, 0), _grid3(size), first.stride(0),
                                   first.stride(1), second.stride(0), second.stride(1), _pointer(bias_first),
                                   _pointer(bias_second), torch.get_num_threads())
    return True


def mirror_product(z: Tensor, w1: Tensor, w2: Tensor, y: Tensor) -> bool:
    """``y = w1 X1 + w2 (i X2)`` (:func:`largekernel.functional._packed.mirror_product`) into ``y``, if the native
    kernel can; returns whether it ran."""
    nd = z.dim() - 2
    batch, n = z.shape[:2]
    n2, per = w2.shape[:2]
    grid = tuple(z.shape[2:])
    if not (1 <= nd <= 3 and z.numel() and available(z, w1, w2, y) and z.is_contiguous() and w1.is_contiguous()
            and w2.is_contiguous() and y.is_contiguous() and w1.shape == (n, per, *grid)
            and w2.shape == (n2, per, *grid) and n2 <= n and y.shape == (batch, n, per, *grid)):
        return False
    _kernel("mirror_product", z)(z.data_ptr(), w1.data_ptr(), w2.data_ptr(), y.data_ptr(), batch, n, n2, per,
                                 _grid3(grid), torch.get_num_threads())
    return True


def mirror_grad(z: Tensor | None, g: Tensor, w1: Tensor, w2: Tensor, gx: Tensor | None, s1: Tensor | None,
                s2: Tensor | None) -> bool:
    """The adjoint of :func:`mirror_product` (:func:`largekernel.functional._packed.mirror_grad`) into ``gx``
    and the two members' kernel-gradient sums ``s1``, ``s2``, if the native kernel can; returns whether it ran."""
    batch, n, per = g.shape[:3]
    n2 = w2.shape[0]
    grid = tuple(g.shape[3:])
    nd = len(grid)
    sums = s1 is not None
    tensors = [t for t in (z, g, w1, w2, gx, s1, s2) if t is not None]
    if not (1 <= nd <= 3 and g.numel() and (sums == (s2 is not None) == (z is not None))
            and available(*tensors) and all(t.is_contiguous() for t in tensors)
            and w1.shape == (n, per, *grid) and w2.shape == (n2, per, *grid) and n2 <= n
            and (gx is None or gx.shape == (batch, n, *grid))
            and (not sums or (z.shape == (batch, n, *grid) and s1.shape == s2.shape == (n, per, *grid)))):
        return False
    _kernel("mirror_grad", g)(_pointer(z), g.data_ptr(), w1.data_ptr(), w2.data_ptr(), _pointer(gx), _pointer(s1),
                              _pointer(s2), batch, n, n2, per, _grid3(grid), torch.get_num_threads())
    return True


def hermitian(s: Tensor, nd: int, scale: float = 1.0, conj: bool = False) -> bool:
    """In place over the last ``nd`` dims of the contiguous complex ``s``: ``scale`` times its Hermitian part
    ``(s[k] + conj(s[-k])) / 2``, conjugated with ``conj``, if the native kernel can; returns whether it ran."""
    if not (1 <= nd <= 3 and s.dim() >= nd and s.numel() and s.is_complex() and s.is_contiguous() and available(s)):
        return False
    grid = tuple(s.shape[s.dim() - nd:])
    _kernel("hermitian", s)(s.data_ptr(), s.numel() // math.prod(grid), _grid3(grid), scale, int(conj),
                            torch.get_num_threads())
    return True


def spectral_grad(spec: Tensor | None, q: Tensor, w: Tensor | None, acc: Tensor | None, conj_q: bool = False,
                  conj_w: bool = False) -> bool:
    """Over ``(batch, C, *grid)`` complex ``spec`` and ``q``: ``acc = sum_batch spec * q`` (``conj(q)`` with
    ``conj_q``), then ``q *= w`` (``conj(w)`` with ``conj_w``); ``w``, ``acc``: ``(C, *grid)``, either may be
    ``None``. Runs if the native kernel can; returns whether it ran (else nothing was written)."""
    if acc is None:
        spec = None  # only read for the sum
    elif spec is None:
        return False
    tensors = [t for t in (spec, q, w, acc) if t is not None]
    if not (q.dim() >= 2 and q.numel() and available(*tensors) and all(t.is_complex() for t in tensors)
            and all(t.is_contiguous() for t in tensors) and (spec is None or spec.shape == q.shape)
            and all(t.shape == q.shape[1:] for t in (w, acc) if t is not None)):
        return False
    batch, channels = q.shape[:2]
    _kernel("spectral_grad", q)(_pointer(spec), q.data_ptr(), _pointer(w), _pointer(acc), batch, channels,
                                q[0, 0].numel(), int(conj_q), int(conj_w), torch.get_num_threads())
    return True


def niff_kept_size(widths: list[int], points: int) -> int:
    """Values the NIFF nets' forward keeps for the backward (:func:`niff_nets_forward`'s ``kept``): per hidden layer
    its pre-activations and outputs, both nets; then the symmetrised last features."""
    return 4 * points * sum(widths[1:-1]) + 2 * widths[-2] * points


def _nets_args(widths: list[int], coords: Tensor, mirror: Tensor, params: Tensor, kept: Tensor, filt: Tensor,
               dparams: Tensor | None = None) -> bool:
    """Whether the NIFF net kernels take these: contiguous, one real dtype, ``mirror`` int64 on the CPU, and every
    size what ``widths`` says (the kernels trust them, and then never read or write outside these tensors):
    ``filt`` (the filter or its gradient) ``(filters, 2 * points)``, ``dparams`` as ``params``."""
    if coords.dim() != 2 or len(widths) < 2:
        return False
    points = coords.shape[1]
    n_params = 2 * sum(o * i + o for i, o in zip(widths[:-1], widths[1:]))
    tensors = [t for t in (coords, params, kept, filt, dparams) if t is not None]
    return (available(*tensors) and coords.dtype in _SUFFIX and mirror.dtype == torch.int64 and _eager(mirror)
            and all(t.is_contiguous() for t in (mirror, *tensors)) and coords.shape == (widths[0], points)
            and mirror.shape == (points,) and params.numel() == n_params
            and kept.numel() == niff_kept_size(widths, points)
            and filt.shape == (widths[-1], 2 * points) and (dparams is None or dparams.numel() == n_params))


def niff_nets_forward(widths: list[int], coords: Tensor, mirror: Tensor, params: Tensor, kept: Tensor,
                      out: Tensor) -> bool:
    """NIFF's two nets on ``coords`` ``(ndim, points)`` (:mod:`largekernel.nn._frequency_op`): ``widths`` ``(ndim,
    *hidden, filters)``, ``params`` flat in the layers' order; writes ``kept`` (what the backward reads) and ``out``
    ``(filters, 2 * points)``, if the native kernel can; returns whether it ran."""
    if not _nets_args(widths, coords, mirror, params, kept, out):
        return False
    layers = len(widths) - 2
    _kernel("niff_nets_forward", coords)(layers, (ctypes.c_int64 * len(widths))(*widths), coords.shape[1],
                                         params.data_ptr(), coords.data_ptr(), mirror.data_ptr(), kept.data_ptr(),
                                         out.data_ptr(), torch.get_num_threads())
    return True


def niff_nets_backward(widths: list[int], coords: Tensor, mirror: Tensor, params: Tensor, kept: Tensor,
                       grad: Tensor, dparams: Tensor) -> bool:
    """The parameters' gradient of :func:`niff_nets_forward` for ``grad`` ``(filters, 2 * points)`` into ``dparams``
    (``params``' layout), if the native kernel can; returns whether it ran."""
    if not _nets_args(widths, coords, mirror, params, kept, grad, dparams):
        return False
    work = coords.new_empty(6 * max(widths[:-1]) * coords.shape[1])
    _kernel("niff_nets_backward", coords)(len(widths) - 2, (ctypes.c_int64 * len(widths))(*widths), coords.shape[1],
                                          params.data_ptr(), coords.data_ptr(), mirror.data_ptr(), kept.data_ptr(),
                                          grad.data_ptr(), dparams.data_ptr(), work.data_ptr(),
                                          torch.get_num_threads())
    return True
