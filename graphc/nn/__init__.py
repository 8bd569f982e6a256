"""Layers (graphc.nn): modules that own parameters and build graph nodes when called."""
from .module import Module, seed  # noqa: F401
from .layers import (GELU, Activation, Dense, Dropout, Flatten, ReLU, Sequential,  # noqa: F401
                     Sigmoid, Tanh)
