"""Decoding inputs to display pixels: formats, completeness, and the DICOM pixel pipeline."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

from edge.errors import Code, EdgeError
from edge.imaging.decode import decode_bytes, jpeg_size, read_input, sniff
from edge.imaging.decoded import UndecodableDicom
from edge.imaging.dicom import parse_age
from tests.conftest import gradient, jpeg_bytes, png_bytes
from tools import dicomgen

IMAGE = gradient()
STORED_12 = dicomgen.twelve_bit(IMAGE)


def dicom(**kwargs: object) -> bytes:
    return dicomgen.to_bytes(dicomgen.grey_dicom(**kwargs))  # type: ignore[arg-type]


def refusal(data: bytes) -> Code:
    with pytest.raises(EdgeError) as caught:
        decode_bytes(data, "input")
    assert "\n" not in caught.value.one_line()
    return caught.value.code


# ---------------------------------------------------------------- rasters


def test_png_grey_roundtrip() -> None:
    decoded = decode_bytes(png_bytes(IMAGE))
    assert decoded.format == "png"
    assert np.array_equal(decoded.pixels, IMAGE)


def test_png_with_three_equal_channels_is_grey() -> None:
    decoded = decode_bytes(png_bytes(np.dstack([IMAGE] * 3)))
    assert decoded.pixels.ndim == 2
    assert np.array_equal(decoded.pixels, IMAGE)


def test_png_colour_stays_rgb_in_rgb_order() -> None:
    rgb = np.dstack([IMAGE, 255 - IMAGE, np.zeros_like(IMAGE)])
    decoded = decode_bytes(png_bytes(rgb))
    assert np.array_equal(decoded.pixels, rgb)


def test_png_with_alpha_is_read_as_shown_over_black() -> None:
    """Hidden colour under transparent pixels is not what the model reads; opaque alpha is dropped."""
    hidden = np.full_like(IMAGE, 200)
    alpha = np.zeros_like(IMAGE)
    alpha[:, : IMAGE.shape[1] // 2] = 255  # the left half shown, the right half transparent
    ok, encoded = cv2.imencode(".png", np.dstack([hidden, hidden, hidden, alpha]))
    assert ok
    pixels = decode_bytes(encoded.tobytes()).pixels
    assert pixels.ndim == 2
    assert (pixels[:, : IMAGE.shape[1] // 2] == 200).all()
    assert (pixels[:, IMAGE.shape[1] // 2 :] == 0).all()
    ok, opaque = cv2.imencode(".png", np.dstack([IMAGE, IMAGE, IMAGE, np.full_like(IMAGE, 255)]))
    assert np.array_equal(decode_bytes(opaque.tobytes()).pixels, IMAGE)
    half = np.dstack([IMAGE.astype(np.uint16) * 257] * 3 + [np.full(IMAGE.shape, 32768, np.uint16)])
    ok, sixteen = cv2.imencode(".png", half)
    assert np.abs(decode_bytes(sixteen.tobytes()).pixels.astype(int) - IMAGE // 2).max() <= 1


def test_png_16_bit_scales_to_8() -> None:
    wide = IMAGE.astype(np.uint16) * 257
    ok, encoded = cv2.imencode(".png", wide)
    assert ok
    assert np.array_equal(decode_bytes(encoded.tobytes()).pixels, IMAGE)


def test_jpeg_decodes() -> None:
    decoded = decode_bytes(jpeg_bytes(IMAGE))
    assert decoded.format == "jpeg"
    assert np.abs(decoded.pixels.astype(int) - IMAGE).mean() < 3


@pytest.mark.parametrize("cut", [40, 200, -30])
def test_truncated_png_is_refused(cut: int) -> None:
    data = png_bytes(IMAGE)
    assert refusal(data[:cut]) is Code.IMAGE_TRUNCATED


def test_truncated_jpeg_is_refused_not_grey_filled() -> None:
    data = jpeg_bytes(IMAGE)
    assert refusal(data[: len(data) // 2]) is Code.IMAGE_TRUNCATED


def test_png_claiming_a_huge_size_is_refused_before_decoding() -> None:
    data = bytearray(png_bytes(IMAGE))
    data[16:24] = struct.pack(">II", 100_000, 100_000)
    assert refusal(bytes(data)) is Code.IMAGE_DECODE_FAILED


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("size", [(65500, 65500), (0, 64), (64, 0)])
def test_jpeg_whose_frame_header_claims_a_huge_size_is_refused_before_decoding(
    size: tuple[int, int], progressive: bool
) -> None:
    """Issue 18: a SOF claiming 65500x65500 reached OpenCV, whose limit raised a traceback."""
    ok, encoded = cv2.imencode(".jpg", IMAGE, [cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)])
    assert ok
    data = bytearray(encoded.tobytes())
    sof = data.find(b"\xff\xc2" if progressive else b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", size[1], size[0])
    with pytest.raises(EdgeError) as caught:
        decode_bytes(bytes(data), "input")
    assert caught.value.code is Code.IMAGE_DECODE_FAILED
    assert f"{size[0]}x{size[1]}" in caught.value.message


def test_jpeg_size_comes_from_its_frame_header() -> None:
    assert jpeg_size(jpeg_bytes(gradient(64, 48))) == (48, 64)
    assert jpeg_size(b"\xff\xd8\xff\xda\x00\x02") is None  # a scan with no frame header
    assert refusal(b"\xff\xd8\xff\xda\x00\x02\xff\xd9") is Code.IMAGE_DECODE_FAILED


def test_png_without_ihdr_first_is_refused() -> None:
    data = bytearray(png_bytes(IMAGE))
    data[12:16] = b"IDAT"
    assert refusal(bytes(data)) is Code.IMAGE_DECODE_FAILED


@pytest.mark.parametrize("data", [b"hello, not an image", b"%PDF-1.7\n...", bytes(300)])
def test_not_an_image(data: bytes) -> None:
    assert refusal(data) is Code.INPUT_NOT_IMAGE


def test_read_input_refusals(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(EdgeError) as caught:
        read_input(tmp_path / "missing.png", 1000)
    assert caught.value.code is Code.INPUT_NOT_FOUND
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(EdgeError) as caught:
        read_input(tmp_path / "empty.png", 1000)
    assert caught.value.code is Code.INPUT_EMPTY
    (tmp_path / "big.png").write_bytes(b"x" * 2000)
    with pytest.raises(EdgeError) as caught:
        read_input(tmp_path / "big.png", 1000)
    assert caught.value.code is Code.INPUT_TOO_LARGE
    with pytest.raises(EdgeError) as caught:
        read_input(tmp_path, 1000)
    assert caught.value.code is Code.INPUT_UNREADABLE


# ---------------------------------------------------------------- DICOM golden tests


def test_monochrome2_12_bit_full_window_is_exact() -> None:
    decoded = decode_bytes(dicom(stored=STORED_12, bits_stored=12, window=(2048, 4096)))
    assert decoded.format == "dicom"
    assert np.array_equal(decoded.pixels, IMAGE)


def test_monochrome1_is_inverted_for_display() -> None:
    stored = (4095 - STORED_12).astype(np.uint16)
    data = dicom(stored=stored, bits_stored=12, photometric="MONOCHROME1", window=(2048, 4096))
    assert np.array_equal(decode_bytes(data).pixels, IMAGE)


def test_monochrome1_without_window_is_inverted_too() -> None:
    stored = (4095 - STORED_12).astype(np.uint16)
    pixels = decode_bytes(dicom(stored=stored, bits_stored=12, photometric="MONOCHROME1")).pixels
    assert pixels[0, 0] < pixels[0, -1]  # high stored values display dark in MONOCHROME1
    assert np.corrcoef(pixels.ravel(), IMAGE.ravel())[0, 1] > 0.999


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_presentation_lut_shape_inverse_inverts_once(photometric: str) -> None:
    """INVERSE was ignored: a MONOCHROME2 image so marked was shown as its negative (DCMTK shows
    it inverted) and refused as "looks inverted". On MONOCHROME1 it is the one inversion."""
    stored = (4095 - STORED_12).astype(np.uint16)
    ds = dicomgen.grey_dicom(stored=stored, bits_stored=12, photometric=photometric, window=(2048, 4096))
    ds.PresentationLUTShape = "INVERSE"
    assert np.array_equal(decode_bytes(dicomgen.to_bytes(ds)).pixels, IMAGE)


def test_signed_with_rescale_intercept() -> None:
    stored = (STORED_12.astype(np.int32) - 1024).astype(np.int16)
    data = dicom(stored=stored, bits_stored=16, rescale=(1.0, 1024.0), window=(2048, 4096))
    assert np.array_equal(decode_bytes(data).pixels, IMAGE)


def test_rescale_slope_applies_before_the_window() -> None:
    # Stored values are half the real ones; the window is in real (rescaled) units.
    stored = (STORED_12 // 2).astype(np.uint16)
    data = dicom(stored=stored, bits_stored=12, rescale=(2.0, 0.0), window=(2048, 4096))
    pixels = decode_bytes(data).pixels
    # The window spans real values 0..4095, so real value r displays as r * 255 / 4095.
    expected = np.clip(np.rint((stored.astype(float) * 2) * 255 / 4095), 0, 255)
    assert np.abs(pixels.astype(int) - expected).max() <= 1


def test_narrow_linear_window_clips_and_stretches() -> None:
    values = np.linspace(0, 4095, 64 * 48).reshape(64, 48).astype(np.uint16)
    centre, width = 1000.0, 201.0
    pixels = decode_bytes(dicom(stored=values, bits_stored=12, window=(centre, width))).pixels
    # PS3.3 C.11.2.1.2.1, output scaled to 0..255
    x = values.astype(float)
    expected = ((x - (centre - 0.5)) / (width - 1) + 0.5) * 255
    expected = np.clip(expected, 0, 255)
    expected[x <= centre - 0.5 - (width - 1) / 2] = 0
    expected[x > centre - 0.5 + (width - 1) / 2] = 255
    assert np.abs(pixels.astype(int) - np.rint(expected)).max() <= 1
    assert pixels.min() == 0
    assert pixels.max() == 255


def test_sigmoid_voi_lut_function() -> None:
    values = np.linspace(0, 4095, 64 * 48).reshape(64, 48).astype(np.uint16)
    data = dicom(stored=values, bits_stored=12, window=(2000, 800), voi_function="SIGMOID")
    pixels = decode_bytes(data).pixels
    expected = 255 / (1 + np.exp(-4 * (values.astype(float) - 2000) / 800))
    assert np.abs(pixels.astype(int) - np.rint(expected)).max() <= 1


def test_voi_lut_sequence_wins_over_window() -> None:
    lut = (np.arange(4096) // 16).astype(np.uint16)
    data = dicom(stored=STORED_12, bits_stored=12, voi_lut=([4096, 0, 8], lut), window=(10, 2))
    assert np.array_equal(decode_bytes(data).pixels, IMAGE)


def test_modality_lut_sequence() -> None:
    stored = (IMAGE // 2).astype(np.uint16)  # 0..127 stored, LUT doubles it
    lut = np.clip(np.arange(256) * 2 + 1, 0, 255).astype(np.uint16)
    data = dicom(stored=stored, bits_stored=8, modality_lut=([256, 0, 8], lut), window=(128, 256))
    pixels = decode_bytes(data).pixels
    assert np.abs(pixels.astype(int) - (stored.astype(int) * 2 + 1)).max() <= 1


def test_8_bit_without_window_keeps_its_values() -> None:
    dark = (IMAGE // 4).astype(np.uint8)  # a dark image must not be stretched
    assert np.array_equal(decode_bytes(dicom(stored=dark, bits_stored=8)).pixels, dark)


def test_16_bit_without_window_uses_its_range() -> None:
    stored = (IMAGE.astype(np.uint16) * 100 + 5000).astype(np.uint16)
    pixels = decode_bytes(dicom(stored=stored, bits_stored=16)).pixels
    assert (pixels.min(), pixels.max()) == (0, 255)
    assert np.corrcoef(pixels.ravel(), IMAGE.ravel())[0, 1] > 0.999


def test_rle_compressed_monochrome1() -> None:
    stored = (4095 - STORED_12).astype(np.uint16)
    data = dicom(
        stored=stored,
        bits_stored=12,
        photometric="MONOCHROME1",
        window=(2048, 4096),
        transfer_syntax=RLELossless,
    )
    decoded = decode_bytes(data)
    assert decoded.meta["transfer_syntax"] == RLELossless
    assert np.array_equal(decoded.pixels, IMAGE)


def test_rgb_and_ybr_full() -> None:
    rgb = np.dstack([IMAGE, 255 - IMAGE, (IMAGE // 2).astype(np.uint8)])
    assert np.array_equal(decode_bytes(dicomgen.to_bytes(dicomgen.colour_dicom(rgb))).pixels, rgb)
    ybr = decode_bytes(dicomgen.to_bytes(dicomgen.colour_dicom(rgb, photometric="YBR_FULL"))).pixels
    assert np.abs(ybr.astype(int) - rgb).max() <= 2  # colour conversion rounding only


def test_palette_colour() -> None:
    ds = dicomgen.grey_dicom(stored=(IMAGE // 64).astype(np.uint8), bits_stored=8)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    red, green, blue = [0, 255, 0, 0], [0, 0, 255, 0], [0, 0, 0, 255]
    for colour, values in (("Red", red), ("Green", green), ("Blue", blue)):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [4, 0, 8])
        setattr(ds, f"{colour}PaletteColorLookupTableData", bytes(values))
    pixels = decode_bytes(dicomgen.to_bytes(ds)).pixels
    index = IMAGE // 64
    expected = np.stack([np.take(red, index), np.take(green, index), np.take(blue, index)], axis=-1)
    assert np.array_equal(pixels, expected)


@pytest.mark.parametrize(("scale", "top"), [(257, 65535), (1, 255)])
def test_a_dark_palette_image_is_shown_on_its_palettes_scale(scale: int, top: int) -> None:
    """A grey-ramp palette of 16-bit entries over a scan whose brightest value is half-scale: it
    was stretched to that brightest (shown twice as bright as the scanner and DCMTK show it).
    Some writers put 8-bit values in 16-bit entries: a table under 256 is on that scale."""
    dark = (IMAGE // 2).astype(np.uint8)
    ds = dicomgen.grey_dicom(stored=dark, bits_stored=8)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    for colour in ("Red", "Green", "Blue"):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", (np.arange(256, dtype="<u2") * scale).tobytes())
    pixels = decode_bytes(dicomgen.to_bytes(ds)).pixels
    expected = np.rint(dark.astype(float) * scale * 255 / top).astype(np.uint8)
    assert np.array_equal(pixels[..., 0], expected)
    assert pixels.max() == dark.max()


def test_metadata_and_study() -> None:
    data = dicom(
        stored=STORED_12,
        bits_stored=12,
        window=(2048, 4096),
        patient_age="018M",
        extra={"ViewPosition": "PA", "Manufacturer": "ACME"},
    )
    decoded = decode_bytes(data)
    assert decoded.study.modality == "CR"
    assert decoded.study.body_part == "CHEST"
    assert decoded.study.patient_age_years == 1.5
    assert decoded.study.phi_patient_id == "SYNTH-0001"
    assert decoded.sop_instance_uid
    assert decoded.meta["view_position"] == "PA"
    assert decoded.meta["bits_stored"] == 12
    assert "SYNTH-0001" not in str(decoded.meta)  # technical metadata carries no identity


@pytest.mark.parametrize(
    ("text", "years"),
    [("005Y", 5.0), ("006M", 0.5), ("052W", 0.997), ("", None), ("abc", None), (None, None)],
)
def test_parse_age(text: str | None, years: float | None) -> None:
    assert parse_age(text) == years


def test_dicom_without_pixels_is_refused() -> None:
    ds = dicomgen.base_dataset(dicomgen.BASIC_TEXT_SR, modality="SR")
    assert refusal(dicomgen.to_bytes(ds)) is Code.DICOM_NO_PIXELS


def test_a_multiframe_decodes_to_its_middle_frame_for_the_gate() -> None:
    """A cine decodes to its middle frame (metadata, gate); the whole file goes to the video path
    (tests/test_video.py: test_a_dicom_cine_goes_to_the_video_path)."""
    frames = np.stack([np.zeros_like(IMAGE), IMAGE, np.full_like(IMAGE, 255)])
    ds = dicomgen.base_dataset(dicomgen.US_STORAGE, modality="US")
    ds.set_pixel_data(frames, "MONOCHROME2", 8)
    decoded = decode_bytes(dicomgen.to_bytes(ds))
    assert decoded.frames == 3
    assert np.array_equal(decoded.pixels, IMAGE)


def test_garbage_after_the_dicom_preamble() -> None:
    data = bytes(128) + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + bytes(40)
    assert sniff(data) == "dicom"
    assert refusal(data) in (Code.DICOM_INVALID, Code.DICOM_NO_PIXELS)


def test_truncated_dicom_pixel_data() -> None:
    data = dicom(stored=STORED_12, bits_stored=12, window=(2048, 4096))
    assert refusal(data[: len(data) - 1000]) is Code.DICOM_TRUNCATED


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.2, 0.5, 0.9, 0.99, 0.999])
@pytest.mark.parametrize("syntax", [None, RLELossless], ids=["native", "rle"])
def test_a_dicom_cut_anywhere_is_truncated_not_unsupported(fraction: float, syntax: str | None) -> None:
    """Issue 18: cut transfers were DICOM_UNSUPPORTED ("send uncompressed") or DICOM_NO_PIXELS
    ("not scored"), so a broken transfer looked like a choice; it is DICOM_TRUNCATED: resend."""
    stored = (np.arange(200 * 160, dtype=np.uint32).reshape(200, 160) % 4096).astype(np.uint16)
    data = dicom(stored=stored, bits_stored=12, window=(2048, 4096), transfer_syntax=syntax)
    assert refusal(data[: int(len(data) * fraction)]) is Code.DICOM_TRUNCATED


@pytest.mark.parametrize(
    "change",
    [
        {"Rows": 0},
        {"Columns": 0},
        {"BitsAllocated": 12},
        {"BitsStored": 20},
        {"SamplesPerPixel": 2},
        {"Rows": 64},  # more rows than the pixel data hold
        {"Rows": 1},  # pixel data for 32 times the rows the header says (was DICOM_UNSUPPORTED)
        {"Rows": 16},  # one whole frame more than the header describes
        {"Rows": 65535, "Columns": 65535},
    ],
    ids=lambda change: ",".join(f"{k}={v}" for k, v in change.items()),
)
def test_impossible_header_is_invalid_not_unsupported(change: dict[str, int]) -> None:
    ds = dicomgen.grey_dicom(dicomgen.twelve_bit(np.zeros((32, 32), np.uint8)), bits_stored=12)
    for keyword, value in change.items():
        setattr(ds, keyword, value)
    assert refusal(dicomgen.to_bytes(ds)) is Code.DICOM_INVALID


def test_frames_beyond_number_of_frames_are_an_invalid_header() -> None:
    """A single-frame header over twelve frames' bytes: not a picture to cut the first frame from."""
    frames = np.stack([IMAGE] * 12)
    ds = dicomgen.base_dataset(dicomgen.US_STORAGE, modality="US")
    ds.set_pixel_data(frames, "MONOCHROME2", 8)
    ds.NumberOfFrames = 1
    assert refusal(dicomgen.to_bytes(ds)) is Code.DICOM_INVALID


@pytest.mark.parametrize("side", [1, 3])
def test_a_padding_byte_after_the_pixels_is_not_a_wrong_header(side: int) -> None:
    ds = dicomgen.grey_dicom(np.arange(side * side, dtype=np.uint8).reshape(side, side), bits_stored=8)
    ds.PixelData = ds.PixelData[: side * side] + b"\x00" * (1 if side == 1 else 3)  # under a frame
    assert decode_bytes(dicomgen.to_bytes(ds)).pixels.shape == (side, side)


def test_native_ybr_full_422_shares_chroma_and_is_not_short() -> None:
    """4:2:2 keeps two bytes a pixel, not three (Part 5, 8.2.1); its valid files were refused as
    short pixel data. Decoded, it is the RGB pydicom makes of it."""
    path = Path(pydicom.__file__).parent / "data" / "test_files" / "SC_ybr_full_422_uncompressed.dcm"
    decoded = decode_bytes(path.read_bytes(), path.name)
    assert np.array_equal(decoded.pixels, pydicom.dcmread(path).pixel_array)


@pytest.mark.parametrize("decoder", [True, False], ids=["damaged", "unsupported"])
def test_undecodable_pixels_carry_the_header_for_a_receiver_that_keeps_them(
    decoder: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream in an encoding this build reads is damaged (send it again); one no decoder here
    reads is unsupported (send it in another syntax). Both were DICOM_UNSUPPORTED, which sent a
    technician to reconfigure a modality that works for one film damaged in transfer."""
    from edge.imaging import dicom as dicom_module

    if not decoder:
        monkeypatch.setattr(dicom_module, "get_decoder", lambda syntax: pydicom.pixels.get_decoder("1.2.3"))
    ds = dicomgen.undecodable_dicom()
    data = dicomgen.to_bytes(ds)
    with pytest.raises(UndecodableDicom) as caught:
        decode_bytes(data)
    assert caught.value.code is (Code.DICOM_PIXELS_DAMAGED if decoder else Code.DICOM_UNSUPPORTED)
    assert "\n" not in caught.value.one_line()
    kept = caught.value.header
    assert (kept.width, kept.height, kept.sop_instance_uid) == (64, 48, str(ds.SOPInstanceUID))
    assert kept.study.modality == "CR"
    assert pickle.loads(pickle.dumps(caught.value)).header == kept  # crosses the guard's pipe


def pydicom_bundled_files() -> list[Path]:
    """The DICOM files shipped inside the pydicom package (no download: the device is offline)."""
    root = Path(pydicom.__file__).parent / "data"
    skip = {".py", ".pyc", ".json", ".txt", ".md", ".dump", ".gz", ".icc"}
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix not in skip)


def test_every_pydicom_bundled_file_is_decoded_or_refused_with_a_code() -> None:
    outcomes: dict[str, int] = {}
    for path in pydicom_bundled_files():
        try:
            decode_bytes(path.read_bytes(), path.name)
            outcomes["decoded"] = outcomes.get("decoded", 0) + 1
        except EdgeError as error:
            outcomes[error.code.value] = outcomes.get(error.code.value, 0) + 1
    print("pydicom bundled files:", sum(outcomes.values()), outcomes)
    assert sum(outcomes.values()) > 150
    assert outcomes.get("decoded", 0) > 20


@pytest.mark.parametrize("dtype", ["<u2", ">u2", "<i2", ">i2", "u1", "i1", "<u4", "<f4"], ids=str)
def test_a_function_per_value_is_the_function_of_every_pixel(dtype: str) -> None:
    """`per_value` works a function out once per distinct stored value: for every dtype a film
    comes in (big-endian syntaxes too) it must equal the function applied to every pixel, also
    where the function takes a range from the image itself (the extremes, the ranks of levels)."""
    from edge.imaging.per_value import per_value

    rng = np.random.default_rng(7)
    kind = np.dtype(dtype)
    wide = rng.integers(-3000, 3000, (97, 61)) if kind.kind in "if" else rng.integers(0, 4000, (97, 61))
    if kind.itemsize == 1:
        wide = wide // 40
    stored = wide.astype(kind)

    def stretched(values: np.ndarray) -> np.ndarray:
        low, high = float(values.min()), float(values.max())
        return np.rint((values.astype(np.float64) - low) * (255.0 / (high - low))).astype(np.uint8)

    def ranked(values: np.ndarray) -> np.ndarray:
        distinct, rank = np.unique(values, return_inverse=True)
        return (rank.reshape(values.shape) * 255 // max(1, len(distinct) - 1)).astype(np.uint8)

    def coloured(values: np.ndarray) -> np.ndarray:
        return np.stack([stretched(values), 255 - stretched(values), ranked(values)], axis=-1)

    for function in (stretched, ranked, coloured):
        expected = function(stored)
        shown = per_value(stored, function)
        assert shown.dtype == np.uint8
        assert shown.shape == expected.shape
        assert np.array_equal(shown, expected), function.__name__


def test_a_large_film_is_shown_without_copies_of_it_in_floats() -> None:
    """A 12-bit film of 4 MP with a rescale and a sigmoid window: its display is 4 MB, and each
    float64 copy of the film 32 MB (the old path held several at once: 516 MB at the peak for
    15 MP). Memory counted by tracemalloc, not timed."""
    import tracemalloc

    stored = np.tile(np.arange(4096, dtype=np.uint16), (1024, 1))[:, ::-1].copy()
    data = dicom(
        stored=stored, bits_stored=12, rescale=(0.5, -100.0), window=(900.0, 1500.0), voi_function="SIGMOID"
    )
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        shown = decode_bytes(data, "film").pixels
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert shown.shape == stored.shape
    assert peak < 4 * stored.nbytes, (
        f"{peak / 2**20:.0f} MB at the peak for a {stored.nbytes / 2**20:.0f} MB film"
    )


@pytest.mark.parametrize(
    ("timing", "expected"),
    [
        ({"FrameTimeVector": [0, 100, 50, 200], "FrameTime": 40.0}, [0.0, 0.1, 0.15, 0.35]),
        ({"FrameTimeVector": [0, 100], "FrameTime": 40.0}, [0.0, 0.04, 0.08, 0.12]),  # not one a frame
        ({"FrameTimeVector": [0, 0, 0, 0], "FrameTime": 40.0}, [0.0, 0.04, 0.08, 0.12]),  # no intervals
        ({"FrameTimeVector": [0, 100, 1e300, 5], "FrameTime": 40.0}, [0.0, 0.04, 0.08, 0.12]),
        ({"CineRate": 20}, [0.0, 0.05, 0.1, 0.15]),
        ({}, [0.0, 1 / 30, 2 / 30, 3 / 30]),
    ],
    ids=["vector", "vector-of-another-length", "zeros", "absurd", "cine-rate", "nothing"],
)
def test_a_cines_frame_times_come_from_its_header(timing: dict[str, object], expected: list[float]) -> None:
    """A machine whose frame rate varies states each frame's increment (Frame Time Vector); it
    was read as 30 frames a second."""
    from edge.imaging.dicom import display_frames

    stack = np.stack([np.roll(gradient(64, 48), 5 * i, axis=1) for i in range(4)])
    ds = dicomgen.base_dataset(dicomgen.US_STORAGE, modality="US", body_part=None, patient_age=None)
    ds.set_pixel_data(stack, "MONOCHROME2", 8, generate_instance_uid=False)
    for keyword, value in timing.items():
        setattr(ds, keyword, value)
    times = [t for t, _ in display_frames(dicomgen.to_bytes(ds))]
    assert times == pytest.approx(expected)


@pytest.mark.parametrize(("tag", "turn"), [(3, 2), (6, -1), (8, 1)])
def test_a_jpeg_is_shown_as_its_exif_orientation_says(tag: int, turn: int) -> None:
    """A phone's photograph of a film is stored sideways with an orientation tag: read as
    stored, it was refused as unlike a chest film. The tag is applied (as a viewer shows it)."""
    import io

    from PIL import Image

    upright = np.zeros((40, 80), np.uint8)
    upright[:10, :20] = 255  # a bright block, top left
    stored = np.ascontiguousarray(np.rot90(upright, -turn))  # as the camera stored it
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = tag
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif.tobytes(), quality=95)
    shown = decode_bytes(buffer.getvalue(), "photo.jpg").pixels
    assert shown.shape == upright.shape
    assert np.abs(shown.astype(int) - upright.astype(int)).mean() < 4


def _png16(values: np.ndarray, sbit: int | None = None) -> bytes:
    ok, encoded = cv2.imencode(".png", values)
    assert ok
    data = encoded.tobytes()
    if sbit is None:
        return data
    import zlib

    chunk = b"sBIT" + bytes([sbit])
    return data[:33] + struct.pack(">I", 1) + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:]


def test_a_16_bit_png_is_scaled_from_the_bits_it_uses() -> None:
    """A detector's 12-bit values in a 16-bit PNG (at most 4095) were scaled as 16 bits: 16
    times too dark, and every such film refused. The bits come from sBIT, else the values."""
    film = gradient(64, 64)
    twelve = (film.astype(np.uint32) * 4095 // 255).astype(np.uint16)
    for data in (_png16(twelve), _png16(twelve, sbit=12)):
        assert np.abs(decode_bytes(data, "12bit.png").pixels.astype(int) - film.astype(int)).max() <= 1
    full = film.astype(np.uint16) * 257  # the whole 16-bit range: as before
    assert np.array_equal(decode_bytes(_png16(full), "16bit.png").pixels, film)
    # sBIT says 16 significant bits are not more than the values show: the values decide
    dark = (film.astype(np.uint16) * 4).astype(np.uint16)  # at most 1020: 10 bits
    assert decode_bytes(_png16(dark), "dark.png").pixels.max() >= 250
