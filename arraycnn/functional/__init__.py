"""Pure, stateless forward/backward pairs: ``*_forward(x, ...) -> (out, cache)``, ``*_backward(dout, cache)``.

Every function finds its array namespace from its inputs, so the same call runs on NumPy, CuPy or any
Array API library. Layout is channels-last: ``x (N, H, W, C)``, filters ``w (K, KH, KW, C)``.
"""

from .activation import log_softmax, relu_backward, relu_forward, softmax
from .conv import conv2d_backward, conv2d_forward, toeplitz_matrix
from .dense import dense_backward, dense_forward
from .loss import cross_entropy, softmax_cross_entropy_backward, softmax_cross_entropy_forward
from .pool import avgpool2d_backward, avgpool2d_forward, maxpool2d_backward, maxpool2d_forward
from .windows import Window, col2im, im2col

__all__ = [
    "Window",
    "avgpool2d_backward",
    "avgpool2d_forward",
    "col2im",
    "conv2d_backward",
    "conv2d_forward",
    "cross_entropy",
    "dense_backward",
    "dense_forward",
    "im2col",
    "log_softmax",
    "maxpool2d_backward",
    "maxpool2d_forward",
    "relu_backward",
    "relu_forward",
    "softmax",
    "softmax_cross_entropy_backward",
    "softmax_cross_entropy_forward",
    "toeplitz_matrix",
]
