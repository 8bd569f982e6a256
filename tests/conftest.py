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


def _real_data_present() -> bool:
    import os
    path = os.environ.get("GRAPHC_DATA")
    return bool(path) and os.path.isdir(path)


needs_data = pytest.mark.skipif(not _real_data_present(),
                                reason="real data sets not found (set GRAPHC_DATA to them)")
