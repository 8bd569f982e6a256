"""Layers (graphc.nn): modules that own parameters and build graph nodes when called."""
from .module import Module, seed  # noqa: F401
from .layers import (GELU, Activation, AvgPool2D, Conv2D, Dense, Dropout,  # noqa: F401
                     Flatten, LogSoftmax, MaxPool2D, ReLU, Reshape, Sequential, Sigmoid,
                     Softmax, Tanh)
from .norm import BatchNorm, Embedding, LayerNorm  # noqa: F401
from .recurrent import GRU, LSTM, RNN  # noqa: F401
