"""Pure, stateless forward/backward pairs: ``*_forward(x, ...) -> (out, cache)``, ``*_backward(dout, cache)``.

Every function finds its array namespace from its inputs, so the same call runs on NumPy, CuPy or any
Array API library. Layout is channels-last: ``x (N, H, W, C)``, filters ``w (K, KH, KW, C)``.
"""

from .activation import (
    dropout_backward,
    dropout_forward,
    log_softmax,
    relu_backward,
    relu_forward,
    sigmoid_backward,
    sigmoid_forward,
    softmax,
)
from .conv import (
    conv2d_backward,
    conv2d_forward,
    conv2d_im2col_backward,
    conv2d_im2col_forward,
    conv2d_toeplitz_backward,
    conv2d_toeplitz_forward,
    toeplitz_matrix,
)
from .conv_transpose import conv2d_transpose_backward, conv2d_transpose_forward
from .dense import dense_backward, dense_forward
from .loss import (
    cross_entropy,
    mean_squared_error_backward,
    mean_squared_error_forward,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from .norm import batch_norm_backward, batch_norm_forward, batch_norm_inference
from .pool import avgpool2d_backward, avgpool2d_forward, maxpool2d_backward, maxpool2d_forward
from .windows import Window, col2im, im2col

__all__ = [
    "Window",
    "avgpool2d_backward",
    "avgpool2d_forward",
    "batch_norm_backward",
    "batch_norm_forward",
    "batch_norm_inference",
    "col2im",
    "conv2d_backward",
    "conv2d_forward",
    "conv2d_im2col_backward",
    "conv2d_im2col_forward",
    "conv2d_toeplitz_backward",
    "conv2d_toeplitz_forward",
    "conv2d_transpose_backward",
    "conv2d_transpose_forward",
    "cross_entropy",
    "dense_backward",
    "dense_forward",
    "dropout_backward",
    "dropout_forward",
    "im2col",
    "log_softmax",
    "maxpool2d_backward",
    "maxpool2d_forward",
    "mean_squared_error_backward",
    "mean_squared_error_forward",
    "relu_backward",
    "relu_forward",
    "sigmoid_backward",
    "sigmoid_forward",
    "softmax",
    "softmax_cross_entropy_backward",
    "softmax_cross_entropy_forward",
    "toeplitz_matrix",
]
