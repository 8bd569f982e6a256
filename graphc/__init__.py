"""graphc: a static-graph compiler for training neural networks.

Declare a graph once, ask for symbolic gradients, compile outputs, gradients and parameter
updates into one execution plan, and run it."""
from . import backends, config, data, distributed, io, nn, optim, testing, train  # noqa: F401
from .autodiff import grad
from .errors import (CompileError, DistributedError, FeedError, GradientError,  # noqa: F401
                     GraphcError, GraphError, NumericsError, ResourceError, ShapeError)
from .data import DataError  # noqa: F401
from .function import Function, compile
from .io import CheckpointError, load, save  # noqa: F401
from .onnx_export import export_onnx  # noqa: F401
from .info import info  # noqa: F401
from .train import fit  # noqa: F401
from .graph import (Graph, Parameter, Placeholder, Tensor, constant,  # noqa: F401
                    get_default_graph, parameter, placeholder, reset_default_graph)
from .ops import (abs, add, binary_cross_entropy_with_logits, broadcast_to, cast,  # noqa: F401
                  concat, div, elu, equal, erf, exp, expand_dims, gelu, greater, greater_equal,
                  hinge_loss, leaky_relu, less, log, log_softmax, logsumexp, matmul, max,
                  maximum, mean, min, minimum, mse_loss, mul, neg, one_hot, pairwise_distance,
                  pow, relu, reshape, sigmoid, sign, softmax, softmax_cross_entropy, softplus,
                  sqrt, square, sub, sum, tanh, transpose, triplet_loss, where, zeros_like)
from .ops import (argmax, avg_pool2d, batch_norm, conv2d, dropout, embedding, layer_norm,  # noqa: F401
                  max_pool2d, random_uniform)
from .ops import arange, gather, nll_loss, take_along_axis  # noqa: F401

__version__ = "0.1.0"

__all__ = [
    "Graph", "Tensor", "Placeholder", "Parameter", "Function", "placeholder", "parameter",
    "constant", "get_default_graph", "reset_default_graph", "grad", "compile", "optim",
    "testing", "GraphcError", "GraphError", "ShapeError", "FeedError", "GradientError",
    "CompileError", "DistributedError", "DataError", "CheckpointError", "NumericsError", "ResourceError", "data", "io", "save", "load", "nn", "train", "fit", "distributed",
]
