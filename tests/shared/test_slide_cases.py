"""What a pixel and a micron mean, per kind of real slide (../shared/data/cases) and built inputs:
alpha, more than 8 bits, channels and planes, resolution sources, DICOM series, unsupported formats."""

import zipfile

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from slidemill.shared.contracts import PixelMeaning, SlideRef
from slidemill.shared.errors import SlideError
from slidemill.shared.slide import WINDOW_PERCENTILES, _stored_levels, open_slide
from slidemill.shared.tissue import detect_tissue, tissue_mode


def _window(raw: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip(np.rint((raw.astype(np.float64) - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


# --- alpha ------------------------------------------------------------------------------------


def test_transparent_pixels_are_white_background(cases):
    path = cases / "alpha" / "roi-transparent.png"
    rgba = np.array(Image.open(path))
    slide = open_slide(path, mpp=0.499)
    assert slide.pixels.alpha and slide.pixels.bands == 4
    img = slide.read_level(0, 0, 0, slide.width, slide.height)
    clear, opaque = rgba[:, :, 3] == 0, rgba[:, :, 3] == 255
    assert clear.any() and opaque.any() and (clear | opaque).all()
    assert (img[clear] == 255).all()  # composited onto white, never black
    assert (img[opaque] == rgba[:, :, :3][opaque]).all()
    # and so never tissue: the detector finds none where the file is transparent
    thumb, scale = slide.thumbnail(256)
    mask = detect_tissue(thumb, slide.mpp * scale)
    small_clear = np.array(Image.fromarray(clear).resize(mask.shape[::-1], Image.NEAREST))
    far = cv2.erode(small_clear.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)  # 4 px from the edge
    assert mask[~small_clear].mean() > 0.9 and not mask[far].any()


# --- more than 8 bits ---------------------------------------------------------------------------


def test_uint16_one_window_for_the_whole_slide(cases):
    path = cases / "uint16" / "gray16.tif"
    raw = tifffile.imread(path)
    slide = open_slide(path)
    pick = slide.pixels.channels[0]
    assert slide.pixels.dtype == "uint16" and slide.pixels.window_source == "slide-percentiles"
    lo, hi = (float(v) for v in np.percentile(raw, WINDOW_PERCENTILES))
    assert pick.window == pytest.approx((lo, hi)) and pick.window == pytest.approx((100.0, 2000.0))
    both = slide.read_level(0, 576, 0, 128, 128)  # background and the bright region
    background = slide.read_level(0, 0, 0, 128, 128)  # background only
    for img, (x, y) in ((both, (576, 0)), (background, (0, 0))):
        expected = _window(raw[y:y + 128, x:x + 128], lo, hi)
        assert (img == expected[:, :, None]).all()
    assert (both[raw[0:128, 576:704] == 100] == 0).all() and (background[raw[0:128, 0:128] == 100] == 0).all()
    assert (both[raw[0:128, 576:704] == 2000] == 255).all()
    # every run: a second opening decides the same meaning
    assert open_slide(path).pixels == slide.pixels
    assert slide.ref().pixels == slide.pixels


def test_declared_sample_range_is_the_window(tmp_path):
    path = tmp_path / "declared.tif"
    data = np.full((64, 64), 3000, np.uint16)
    data[:, :32] = 100
    data[0, 0] = 2000
    tifffile.imwrite(path, data, resolution=(40000, 40000), resolutionunit="CENTIMETER",
                     extratags=[(340, "H", 1, 0, False), (341, "H", 1, 4000, False)])  # SMin/SMaxSampleValue
    slide = open_slide(path)
    assert slide.pixels.window_source == "sample-value-tags" and slide.pixels.channels[0].window == (0.0, 4000.0)
    img = slide.read_level(0, 0, 0, 64, 64)[:, :, 0]
    assert img[0, 0] == round(2000 * 255 / 4000) and img[0, 1] == round(100 * 255 / 4000)
    assert (img[:, 32:] == round(3000 * 255 / 4000)).all()


# --- channels and planes ------------------------------------------------------------------------


def test_multichannel_ome_needs_a_channel_choice(cases):
    path = cases / "multichannel" / "multi-channel.ome.tif"
    with pytest.raises(SlideError, match=r"3 channel\(s\).*--channel"):
        open_slide(path, mpp=1.0)
    raw = tifffile.imread(path)  # (C, Y, X) int8
    grey = open_slide(path, mpp=1.0, channels=["1"])
    pick = grey.pixels.channels[0]
    assert (pick.frame, pick.band) == (1, 0)
    lo, hi = (float(v) for v in np.percentile(raw[1], WINDOW_PERCENTILES))
    assert pick.window == pytest.approx((lo, hi))
    img = grey.read_level(0, 0, 0, grey.width, grey.height)
    assert (img == _window(raw[1], lo, hi)[:, :, None]).all()
    rgb = open_slide(path, mpp=1.0, channels=["2", "1", "0"])
    img = rgb.read_level(0, 0, 0, rgb.width, rgb.height)
    for out_band, c in enumerate((2, 1, 0)):
        lo, hi = rgb.pixels.channels[out_band].window
        assert (img[:, :, out_band] == _window(raw[c], lo, hi)).all()
    with pytest.raises(SlideError, match="no channel '7'"):
        open_slide(path, mpp=1.0, channels=["7"])
    with pytest.raises(SlideError, match="once .* or three times"):
        open_slide(path, mpp=1.0, channels=["0", "1"])


def test_ome_channels_by_name_and_z_planes(tmp_path):
    path = tmp_path / "stack.ome.tif"
    data = np.zeros((2, 2, 40, 50), np.uint8)  # Z, C, Y, X
    for zi in range(2):
        for ci in range(2):
            data[zi, ci] = 10 * (1 + zi) + 100 * ci
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "ZCYX", "Channel": {"Name": ["DAPI", "CD8"]},
                                                     "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    with pytest.raises(SlideError, match="2 Z planes.*--z"):
        open_slide(path, channels=["CD8"])
    slide = open_slide(path, channels=["CD8"], z=1)
    assert slide.pixels.z == 1 and slide.pixels.channels[0].name == "CD8"
    assert (slide.read_level(0, 0, 0, 50, 40) == 120).all()  # Z 1, channel CD8, uint8 as stored
    assert (open_slide(path, channels=["dapi"], z=0).read_level(0, 0, 0, 50, 40) == 10).all()
    with pytest.raises(SlideError, match="--z 5 is out of range"):
        open_slide(path, channels=["CD8"], z=5)


def test_recorded_pixel_meaning_is_applied_as_recorded(cases):
    path = cases / "uint16" / "gray16.tif"
    first = open_slide(path)
    pixels = first.pixels.model_copy(update={"channels": [first.pixels.channels[0].model_copy(
        update={"window": (0.0, 4000.0)})]})
    again = open_slide(path, pixels=pixels)
    assert again.pixels == pixels
    assert again.read_level(0, 700, 0, 1, 1)[0, 0, 0] == round(2000 * 255 / 4000)
    other = PixelMeaning.model_validate({**pixels.model_dump(), "dtype": "uint8", "bands": 3})
    with pytest.raises(SlideError, match="recorded pixel meaning"):
        open_slide(path, pixels=other)


def test_old_slide_refs_still_read():
    ref = SlideRef.model_validate({"name": "a.svs", "width": 10, "height": 10, "mpp": 0.5, "mpp_source": "file"})
    assert ref.pixels is None and ref.mpp_source == "file"


# --- dark-field tissue --------------------------------------------------------------------------


def test_fluorescence_tissue_is_found(cases):
    slide = open_slide(cases / "fluorescence" / "DAPI-387.ndpi")
    assert slide.mpp_source == "vendor" and slide.mpp == pytest.approx(0.2282, abs=1e-4)
    thumb, scale = slide.thumbnail(1024)
    assert tissue_mode(thumb) == "darkfield"
    mask = detect_tissue(thumb, slide.mpp * scale, mode="auto")
    assert mask.mean() > 0.5
    nuclei = thumb.max(axis=2) > 100  # bright DAPI nuclei are tissue wherever they are
    assert mask[nuclei].mean() > 0.99
    assert not mask[thumb.max(axis=2) <= 2].all()  # and the dark background is not


def test_darkfield_mode_on_a_drawn_slide():
    img = np.zeros((200, 200, 3), np.uint8)
    yy, xx = np.mgrid[:200, :200]
    blob = (yy - 100) ** 2 + (xx - 100) ** 2 < 60**2  # pixel centres inside a disc of radius 60
    img[blob] = (0, 0, 90)
    assert tissue_mode(img) == "darkfield"
    mask = detect_tissue(img, 4.0, mode="darkfield")
    r2 = (yy - 100) ** 2 + (xx - 100) ** 2
    assert mask[r2 < 58**2].all() and not mask[r2 > 62**2].any()  # the disc, up to the blur at its edge
    assert tissue_mode(255 - img) == "brightfield"


# --- resolution ---------------------------------------------------------------------------------


def test_a_dpi_tag_is_no_resolution(cases):
    slide = open_slide(cases / "dpi-resolution" / "crop-300dpi.tif")
    assert slide.mpp is None
    with pytest.raises(SlideError, match=r"300 dpi.*--slide-mpp"):
        slide.require_mpp()
    assert open_slide(cases / "dpi-resolution" / "crop-300dpi.tif", mpp=0.5).mpp_source == "user"


@pytest.mark.parametrize(("resolution", "unit", "mpp"), [
    (40000, "CENTIMETER", 0.25), (101600, "INCH", 0.25), (300, "INCH", None), (72, "INCH", None),
    (118.11, "CENTIMETER", None), (40000, "NONE", None)])
def test_tiff_resolution_tags(tmp_path, resolution, unit, mpp):
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, np.full((32, 32, 3), 200, np.uint8), photometric="rgb",
                     resolution=(resolution, resolution), resolutionunit=unit)
    slide = open_slide(path)
    assert slide.mpp == (pytest.approx(mpp) if mpp else None)
    assert slide.mpp_source == ("tiff-resolution" if mpp else None)


@pytest.mark.parametrize(("size", "unit", "mpp"), [(0.25, "µm", 0.25), (250, "nm", 0.25), (None, None, None)])
def test_ome_physical_size(tmp_path, size, unit, mpp):
    path = tmp_path / "rgb.ome.tif"
    meta = {"axes": "YXS"} if size is None else {"axes": "YXS", "PhysicalSizeX": size, "PhysicalSizeXUnit": unit,
                                                  "PhysicalSizeY": size, "PhysicalSizeYUnit": unit}
    tifffile.imwrite(path, np.full((32, 48, 3), 200, np.uint8), photometric="rgb", ome=True, metadata=meta)
    slide = open_slide(path)
    assert slide.mpp == (pytest.approx(mpp) if mpp else None)
    assert slide.mpp_source == ("ome" if mpp else None)
    assert slide.ref().mpp_source == slide.mpp_source


def test_upsampling_more_than_twice_needs_an_option(cases):
    slide = open_slide(cases / "uint16" / "gray16.tif")  # 0.5 um/px
    assert slide.scale_for(0.25) == pytest.approx(0.5)
    with pytest.raises(SlideError, match=r"--mpp 0.2 um/px is 2.5x finer.*--allow-upsampling"):
        slide.scale_for(0.2)
    assert slide.scale_for(0.2, allow_upsampling=True) == pytest.approx(0.4)


# --- levels a reader synthesises ----------------------------------------------------------------


def test_single_level_tiff_has_only_level_0_stored(tmp_path):
    path = tmp_path / "flat.tif"
    tifffile.imwrite(path, np.full((1024, 2048, 3), 180, np.uint8), photometric="rgb", tile=(256, 256))
    slide = open_slide(path, mpp=1.0)
    assert len(slide.levels) > 1  # large-image offers coarser levels ...
    assert [lv.stored for lv in slide.levels] == [True] + [False] * (len(slide.levels) - 1)  # ... it makes them
    assert slide.best_level(4.0) == 0


def test_dicom_levels_are_the_series_pyramid():
    class Size:
        def __init__(self, w):
            self.width = w

    class Level:
        def __init__(self, w):
            self.size = Size(w)

    class Pyramid:
        levels = [Level(4000)]  # one stored level

    class Dicom:
        pyramids = [Pyramid()]

    class Source:
        _dicom = Dicom()

    assert _stored_levels(Source(), 4000, 5, 0) == [True, False, False, False, False]
    Pyramid.levels = [Level(4000), Level(1000)]
    assert _stored_levels(Source(), 4000, 5, 0) == [True, False, True, False, False]


# --- which slide --------------------------------------------------------------------------------


def test_a_folder_of_two_dicom_series(cases):
    folder = cases / "two-dicom-series"
    import pydicom

    uids = sorted(str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID) for f in folder.glob("*.dcm"))
    assert len(set(uids)) == 2
    with pytest.raises(SlideError, match="2 DICOM series") as err:
        open_slide(folder)
    assert all(uid in str(err.value) for uid in uids) and "--dicom-series" in str(err.value)
    for uid in uids:
        slide = open_slide(folder, dicom_series=uid)
        assert slide.series == uid and slide.ref().series == uid and slide.mpp_source == "vendor"
    with pytest.raises(SlideError, match="no DICOM series 1.2.3"):
        open_slide(folder, dicom_series="1.2.3")


def test_an_unsupported_format_names_itself_and_the_supported_ones(tmp_path):
    path = tmp_path / "slide.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("a.txt", "x")
    with pytest.raises(SlideError) as err:
        open_slide(path)
    text = str(err.value)
    assert "ZIP archive" in text and ".zip" in text and ".svs" in text and "No available tilesource" not in text
