import pytest

from slidemill.shared.errors import OutputError
from slidemill.shared.files import atomic_write, check_relative_path, prepare_output_file


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as handle:
            handle.write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    with atomic_write(target) as handle:
        handle.write("new")
    assert target.read_text() == "new"


def test_prepare_output_file(tmp_path):
    existing = tmp_path / "a.geojson"
    existing.write_text("{}")
    with pytest.raises(OutputError, match="--overwrite"):
        prepare_output_file(existing, overwrite=False)
    assert prepare_output_file(existing, overwrite=True) == existing
    with pytest.raises(OutputError, match="folder"):
        prepare_output_file(tmp_path, overwrite=True)


@pytest.mark.parametrize("ok", ["a.png", "tiles/0_0.png", "./x/y.png", "a..b.png"])
def test_relative_paths_accepted(ok):
    assert check_relative_path(ok) == ok


@pytest.mark.parametrize("bad", ["", "/etc/passwd", "../x", "a/../../x", "a/..", "C:/x", "a\\b"])
def test_relative_paths_refused(bad):
    with pytest.raises(ValueError):
        check_relative_path(bad)


def test_sha256_of_a_file(tmp_path):
    import hashlib

    from slidemill.shared.files import sha256_of

    data = bytes(range(256)) * 9000  # more than one read chunk
    (tmp_path / "model.onnx").write_bytes(data)
    assert sha256_of(tmp_path / "model.onnx") == hashlib.sha256(data).hexdigest()
