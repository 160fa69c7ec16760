"""Fused CPU passes for the depthwise FFT paths, compiled from ``_native.c`` on first use.

The packed paths (:mod:`largekernel.functional._packed`) spend about as long on elementwise
passes over their channel blocks as on the transforms themselves; two of those passes fuse
well: unpacking a complex block into its two real samples (with the bias), and the filter
gradient together with the input-gradient product (see ``_native.c``; the real-FFT paths use
the second too). Fused, NIFF's packed training step (8 x 96 x 56 x 56) takes 12.3-12.5
instead of 13.6-14.0 ms on the reference CPU, a depthwise 1-D FFT convolution (8 x 256 x
2048, kernel 2048) 32.0 instead of 38.2 ms (docs/fft_conv.md).

The C source is compiled once per machine with the system C compiler (``$CC``, else ``cc``;
``-O3 -march=native -fopenmp``) into the cache folder (``$LARGEKERNEL_CACHE``, else
``$XDG_CACHE_HOME/largekernel`` or ``~/.cache/largekernel``) and loaded with :mod:`ctypes`.
Without a compiler, with ``LARGEKERNEL_NATIVE=0``, off the CPU, for other dtypes and while
tracing or compiling (``torch.jit.trace``, ``torch.compile``, ``torch.export``: they cannot
see into a foreign call), the callers run the same passes as torch operations; results agree
to rounding.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["native_kernels", "available", "unpack", "spectral_grad"]

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
        cmd = [compiler, *flags, "-shared", "-fPIC", str(SOURCE), "-o", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode == 0:
            os.replace(tmp, target)
            return
        os.unlink(tmp)
        errors.append(f"{' '.join(cmd)}: {result.stderr.strip()[-500:]}")
    raise RuntimeError("\n".join(errors))


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for suffix, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        unpack_fn = getattr(lib, f"lk_unpack_{suffix}")
        unpack_fn.argtypes = [p, p, i64, i64, i64, p, p, p, i64, i64, p, i32, i32]
        unpack_fn.restype = None
        grad_fn = getattr(lib, f"lk_spectral_grad_{suffix}")
        grad_fn.argtypes = [p, p, p, p, i64, i64, i64, real, i32, i32, i32, i32]
        grad_fn.restype = None
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


def _eager(*tensors: Tensor) -> bool:
    """Whether real CPU tensors are being computed on now (not traced, compiled, faked or on a device)."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    return all(type(t) is torch.Tensor and t.device.type == "cpu" for t in tensors)


def available(*tensors: Tensor) -> bool:
    """Whether the native kernels run for these (complex) tensors: enabled, built, eager CPU, complex64/128."""
    return (ENABLED and all(t.dtype in _COMPLEX for t in tensors) and _eager(*tensors)
            and library() is not None)


def unpack(z: Tensor, batch: int, start: tuple[int, ...], size: tuple[int, ...], bias: Tensor | None, swap: bool,
           out: Tensor) -> bool:
    """:func:`largekernel.functional._packed.unpack` of a contiguous ``z`` into ``out`` whose sample planes are
    contiguous, if the native kernel can; returns whether it ran (else nothing was written)."""
    nd = len(size)
    real = _COMPLEX.get(z.dtype)
    if not (1 <= nd <= 3 and available(z)):
        return False
    half = z.shape[0]
    if not (z.dim() == nd + 2 and half <= batch <= 2 * half and len(start) == nd
            and all(0 <= s and s + n <= g for s, n, g in zip(start, size, z.shape[2:]))):
        # The kernel trusts the geometry: never let it read outside z.
        raise ValueError(f"unpack: {batch} samples from {half} pairs, region {tuple(start)} + {tuple(size)} of "
                         f"the grid {tuple(z.shape[2:])}: inconsistent")
    if not (z.is_contiguous() and out.dtype == real and _eager(out) and tuple(out.shape) == (batch, z.shape[1], *size)
            and out.numel() and out[0, 0].is_contiguous()):
        return False
    if bias is not None and not (bias.dtype == real and bias.is_contiguous() and _eager(bias)):
        return False
    pad = 3 - nd
    grid = (ctypes.c_int64 * 3)(*((1,) * pad + tuple(z.shape[2:])))
    first = (ctypes.c_int64 * 3)(*((0,) * pad + tuple(start)))
    extent = (ctypes.c_int64 * 3)(*((1,) * pad + tuple(size)))
    getattr(library(), f"lk_unpack_{_SUFFIX[real]}")(
        z.data_ptr(), out.data_ptr(), half, batch - half, z.shape[1], grid, first, extent, out.stride(0),
        out.stride(1), _pointer(bias), int(swap), torch.get_num_threads())
    return True


def spectral_grad(spec: Tensor | None, q: Tensor, w: Tensor | None, acc: Tensor | None, scale: float = 1.0,
                  rotate: bool = False, conj_q: bool = False, conj_w: bool = False) -> bool:
    """Over ``(batch, C, *grid)`` complex ``spec`` and ``q``: ``acc = scale * sum_batch spec * q`` (``conj(q)``
    with ``conj_q``; the sum times ``i`` and conjugated with ``rotate``), then ``q *= w`` (``conj(w)`` with
    ``conj_w``); ``w``, ``acc``: ``(C, *grid)``, either may be ``None``. Runs if the native kernel can; returns
    whether it ran (else nothing was written)."""
    if acc is None:
        spec = None  # only read for the sum
    elif spec is None:
        return False
    tensors = [t for t in (spec, q, w, acc) if t is not None]
    if not (q.dim() >= 2 and q.numel() and available(*tensors) and len({t.dtype for t in tensors}) == 1
            and all(t.is_contiguous() for t in tensors) and (spec is None or spec.shape == q.shape)
            and all(t.shape == q.shape[1:] for t in (w, acc) if t is not None)):
        return False
    batch, channels = q.shape[:2]
    getattr(library(), f"lk_spectral_grad_{_SUFFIX[_COMPLEX[q.dtype]]}")(
        _pointer(spec), q.data_ptr(), _pointer(w), _pointer(acc), batch, channels, q[0, 0].numel(), scale,
        int(rotate), int(conj_q), int(conj_w), torch.get_num_threads())
    return True
