from pathlib import Path

import pytest
from to_qupath_helpers import make_slide_files


@pytest.fixture
def slide_files(tmp_path) -> dict[str, Path]:
    """Empty stand-ins for slide files (to-qupath never opens a slide, it only points QuPath at it)."""
    return make_slide_files(tmp_path)
