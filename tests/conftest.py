from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HANDOUT = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def handout() -> Path:
    """The read-only test data beside the repository (real slides and annotation exports)."""
    if not HANDOUT.is_dir():
        pytest.skip(f"handout data not found at {HANDOUT}")
    return HANDOUT


@pytest.fixture(scope="session")
def cases(handout) -> Path:
    """One small real-world input per kind slidemill once got wrong (../shared/data/cases, see its README)."""
    folder = handout / "cases"
    if not folder.is_dir():
        pytest.skip("no cases folder in the handout")
    return folder


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO
