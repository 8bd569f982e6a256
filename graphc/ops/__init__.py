"""Every op graphc knows, and the public functions that build them."""
from .registry import OpDef, all_ops, apply, get_op, register  # noqa: F401
from .elementwise import (abs, add, cast, div, elu, equal, erf, exp, gelu, greater,  # noqa: F401
                          greater_equal, leaky_relu, less, log, maximum, minimum, mul, neg, pow,
                          relu, sigmoid, sign, softplus, sqrt, square, sub, tanh, where)
from .shape_ops import (broadcast_like, broadcast_to, concat, expand_dims, getitem,  # noqa: F401
                        reshape, reshape_like, sum_to_like, transpose, zeros_like)
from .reductions import argmax, logsumexp, max, mean, min, sum  # noqa: F401
from .linalg import matmul  # noqa: F401
from .nn import (binary_cross_entropy_with_logits, hinge_loss, log_softmax,  # noqa: F401
                 mse_loss, one_hot, pairwise_distance, softmax, softmax_cross_entropy,
                 triplet_loss)
from .random import dropout, random_uniform, sample_categorical  # noqa: F401
from .conv import avg_pool2d, conv2d, max_pool2d  # noqa: F401
from .embedding import embedding  # noqa: F401
from .norm import batch_norm, layer_norm  # noqa: F401
from .indexing import arange, gather, nll_loss, take_along_axis  # noqa: F401
