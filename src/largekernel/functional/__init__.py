"""Pure functions: FFT convolution (seed 003), the convolution engine, kernel construction."""

from largekernel.functional.engine import auto_cache, choose_backend, clear_auto_cache, convolve, set_calibration
from largekernel.functional._native import native_kernels
from largekernel.functional.fft_conv import fast_fft_length, fft_conv

__all__ = ["convolve", "fft_conv", "fast_fft_length", "choose_backend", "auto_cache", "clear_auto_cache",
           "set_calibration", "native_kernels"]
