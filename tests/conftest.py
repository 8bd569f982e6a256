import numpy as np
import pytest

import graphc as gc


@pytest.fixture(autouse=True)
def fresh_default_graph():
    """Each test starts from an empty default graph."""
    gc.reset_default_graph()
    yield


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
