"""What was learned: effective kernel size, receptive fields, positions, masks, counts, figures.

Names resolve lazily (matplotlib is only imported by the plotting functions).
"""

from largekernel._lazy import lazy_namespace

# module -> public names it defines; each analysis file adds its names here.
_MODULES: dict[str, list[str]] = {
    "largekernel.analysis.flops": ["count"],
    "largekernel.analysis.kernels": ["spatial_kernels", "kernel_layers", "layer_input_sizes", "window_sizes",
                                     "kernel_mass_ratio", "effective_kernel_size", "kernel_size_report", "stage_summary",
                                     "gaussian_fit", "kernel_pca"],
    "largekernel.analysis.erf": ["effective_receptive_field", "erf_area_ratios"],
    "largekernel.analysis.learned": ["dcls_positions", "position_histograms", "position_evolution",
                                     "flexconv_mask_extents"],
    "largekernel.analysis.plots": ["plot_kernel_gallery", "plot_mass_ratio", "plot_erf", "plot_position_histograms",
                                   "plot_mask_extents", "plot_gaussian_fit", "plot_pca", "plot_effective_sizes",
                                   "plot_accuracy_vs_resolution", "plot_cost_tradeoff", "plot_transfer"],
    "largekernel.analysis.report": ["analyze_model", "plot_position_evolution"],
}

__all__, __getattr__, __dir__ = lazy_namespace("largekernel.analysis", _MODULES)
