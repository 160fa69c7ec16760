"""Drop-in ``torch.nn`` layers, one family per file.

Names resolve lazily so that importing one family does not import the others.
"""

from largekernel._lazy import lazy_namespace

_FAMILIES = {
    "largekernel.nn._base": ["KernelConvNd"],
    "largekernel.nn.marks": ["mark"],
    "largekernel.nn.conv": ["Conv1d", "Conv2d", "Conv3d"],
    "largekernel.nn.dcls": ["DclsConv1d", "DclsConv2d", "DclsConv3d", "Dcls2_1d", "Dcls3_1d", "Dcls3_2d"],
    "largekernel.nn.kernelnets": ["MLPKernel", "SIRENKernel", "GaborKernel", "FourierKernel", "MAGNetKernel"],
    "largekernel.nn.flexconv": ["CKConv1d", "CKConv2d", "CKConv3d", "FlexConv1d", "FlexConv2d", "FlexConv3d"],
    "largekernel.nn.niff": ["NIFFConv1d", "NIFFConv2d", "NIFFConv3d", "SpectralPointwise", "Spectrum"],
    "largekernel.nn.sequence": ["SGConv1d", "SGConv2d", "S4DConv1d", "SGKernel", "S4DKernel"],
    "largekernel.nn.mixing": ["FourierMix"],
    "largekernel.nn.reparam": ["RepLKConv1d", "RepLKConv2d", "RepLKConv3d", "DilatedReparamConv1d",
                               "DilatedReparamConv2d", "DilatedReparamConv3d", "SLaKConv1d", "SLaKConv2d",
                               "SLaKConv3d"],
}

__all__, __getattr__, __dir__ = lazy_namespace("largekernel.nn", _FAMILIES)
