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
def repo() -> Path:
    return REPO
