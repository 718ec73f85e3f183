"""The listening tests' shared world: checkpoints of different runs with an output for every item of an
eval set (reference audio included), built by tests.factories.listening_world."""

import pytest

from tests.factories import listening_world


@pytest.fixture
def world():
    """Two runs' checkpoints with outputs for 4 items."""
    return listening_world()
