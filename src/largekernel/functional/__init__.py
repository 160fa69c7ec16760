"""Pure functions: FFT convolution, the convolution engine, kernel construction."""

from largekernel.functional.engine import convolve
from largekernel.functional.fft_conv import fft_conv

__all__ = ["convolve", "fft_conv"]
