"""Fixtures shared by several test modules (their builders and paths are in ``helpers.py``)."""
import pytest

from mmfree.models.weight_image import WeightImage

from helpers import KJV_IMAGE, TINY_IMAGE


@pytest.fixture(scope="session")
def tiny() -> WeightImage:
    """``models/tiny-random``: the random-weight test model (V 320, D 64, 2 layers)."""
    return WeightImage.load(TINY_IMAGE)


@pytest.fixture(scope="session")
def kjv() -> WeightImage:
    """``models/kjv``: the bundled trained model, the CLI's default."""
    return WeightImage.load(KJV_IMAGE)
