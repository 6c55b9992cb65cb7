"""Fixtures of the deploy tests: the short trained run (built once per session)."""

import pytest

from tests.deploy.models import TrainedRun, trained_run


@pytest.fixture(scope="session")
def run(tmp_path_factory) -> TrainedRun:
    """ResNet-18 trained briefly on 40 synthetic identities, evaluated on 10 held-out ones."""
    return trained_run(tmp_path_factory.getbasetemp() / "deploy-trained")
