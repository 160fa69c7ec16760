"""Pure functions: the convolution engine (seed 003), its planner, spectral filters, DCLS kernel construction.

Entry points: :func:`convolve` (the engine every layer uses), :func:`fft_conv` (the FFT path
alone), :func:`plan_conv` / :func:`execute` (inspect or change a call's plan),
:func:`spectral_filter` (filters given on the frequency grid, NIFF).
"""

from largekernel.functional._args import ConvArgumentError
from largekernel.functional._native import native_kernels
from largekernel.functional.engine import (auto_cache, calibration, choose_backend, clear_auto_cache, convolve,
                                           execute, set_calibration)
from largekernel.functional.fft_conv import fft_conv
from largekernel.functional.planner import ConvPlan, FFTGeometry, fast_fft_length, plan_conv, planner_options
from largekernel.functional.spectral import fourier_mix, spectral_filter

__all__ = ["convolve", "fft_conv", "fast_fft_length", "plan_conv", "execute", "ConvPlan", "FFTGeometry",
           "planner_options", "spectral_filter", "fourier_mix", "choose_backend", "auto_cache",
           "clear_auto_cache", "set_calibration", "calibration", "native_kernels", "ConvArgumentError"]
