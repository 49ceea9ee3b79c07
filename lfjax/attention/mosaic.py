"""impl="mosaic": the chunked path's layout (dilation classes, global rows)
around lfjax's Mosaic (Pallas TPU) band kernel, which takes the global keys,
dropout and the relative-position term itself (one softmax over band and
global keys). What splash attention (impl="splash") cannot do.

band_with_global_keys has the contract of
lfjax.attention.pallas.band_with_global_keys (its adapter, with the TPU
kernel): compiled Mosaic kernels when lowered for TPU, interpret mode on
CPU."""

import functools

from lfjax.attention import pallas
from lfjax.kernels import tpu_band_attention as kernel

band_with_global_keys = functools.partial(pallas.with_kernel,
                                          kernel.band_attention)
