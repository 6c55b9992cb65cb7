"""The alignment tests share one detector (LFW fixtures: tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def detector():
    """One MTCNN for the session (loading it takes a moment)."""
    from facetrip.alignment.detect import Detector

    return Detector()
