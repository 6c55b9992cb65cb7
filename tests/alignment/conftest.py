"""Real faces for the alignment tests: a few LFW images (CI has ../shared/data/lfw)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

LFW = Path(os.environ.get("FACETRIP_LFW",
                          Path(__file__).resolve().parents[3] / "shared/data/lfw"))
#: identity folders with a few clear images each
PEOPLE = ("AJ_Cook", "Aaron_Peirsol", "Abdullah_Gul")


@pytest.fixture(scope="session")
def lfw() -> Path:
    """The LFW folder (skips where it is absent; CI has it)."""
    if not (LFW / "AJ_Cook").is_dir():
        pytest.skip(f"LFW not found at {LFW} (set FACETRIP_LFW)")
    return LFW


@pytest.fixture
def photos(lfw: Path, tmp_path: Path) -> Path:
    """An identity-folder tree of 5 LFW photos (links, not copies): 1 + 2 + 2 images."""
    root = tmp_path / "photos"
    for person, n in zip(PEOPLE, (1, 2, 2)):
        (root / person).mkdir(parents=True)
        for path in sorted((lfw / person).glob("*.jpg"))[:n]:
            (root / person / path.name).symlink_to(path)
    return root


@pytest.fixture(scope="session")
def detector():
    """One MTCNN for the session (loading it takes a moment)."""
    from facetrip.alignment.detect import Detector

    return Detector()
