"""The review page's pictures, on arrays: undoing the device's heatmap blend, sizing renditions,
choosing the best source; and what of a payload the page shows."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from edge.hub import presenters, render
from edge.hub.render import Renditions, snap_width, split_overlay
from edge.hub.study import Study
from edge.imaging.explain import overlay


def grey_image(height: int = 600, width: int = 500, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.integers(0, 256, (height, width)).astype(np.uint8), (0, 0), 3)
    return cv2.normalize(noise, None, 0, 255, cv2.NORM_MINMAX)


def blob(height: int = 600, width: int = 500) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return np.exp(-(((yy - 250) / 120.0) ** 2 + ((xx - 300) / 90.0) ** 2)).astype(np.float32)


def test_the_blend_is_undone_into_heat_and_image() -> None:
    image, heat = grey_image(), blob()
    blended = overlay(image, heat)  # what the device stores (longest side 512)
    split = split_overlay(blended)
    size = (blended.shape[1], blended.shape[0])
    expected_heat = cv2.resize(heat, size, interpolation=cv2.INTER_LINEAR)
    expected_image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    assert split.fits
    error = np.abs(split.heat / 255.0 - expected_heat)
    assert error.mean() < 0.005
    assert error.max() < 0.02
    assert np.abs(split.base.astype(int) - expected_image).max() <= 2


def test_no_heat_gives_the_image_back_and_zero_heat() -> None:
    image = grey_image(200, 300)
    split = split_overlay(overlay(image, np.zeros(image.shape, np.float32)))
    assert split.fits
    assert split.heat.max() == 0
    assert np.array_equal(split.base, image)


def test_a_colour_image_does_not_fit_the_grey_blend() -> None:
    image = grey_image()
    colour = np.stack([image, np.roll(image, 40, axis=1), 255 - image], axis=2)
    assert not split_overlay(overlay(colour, blob())).fits


def test_split_refuses_what_is_not_rgb() -> None:
    with pytest.raises(ValueError, match="RGB"):
        split_overlay(np.zeros((4, 4), np.uint8))


@pytest.mark.parametrize(
    ("requested", "available", "expected"),
    [
        (300, 4000, 384),
        (1024, 4000, 1024),
        (1025, 4000, 1536),
        (9000, 4000, 2048),
        (800, 600, 600),
        (10, 224, 224),
    ],
)
def test_widths_snap_to_a_few_sizes_and_never_enlarge(requested: int, available: int, expected: int) -> None:
    assert snap_width(requested, available) == expected


def _upload(tmp_path: Path, name: str, data: bytes) -> SimpleNamespace:
    path = tmp_path / name
    path.write_bytes(data)
    import hashlib

    return SimpleNamespace(path=str(path), sha256=hashlib.sha256(data).hexdigest())


def _png(pixels: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", pixels if pixels.ndim == 2 else pixels[:, :, ::-1])
    assert ok
    return encoded.tobytes()


def test_the_best_source_is_chosen_and_renditions_are_cached(tmp_path: Path) -> None:
    image, heat = grey_image(1200, 1000), blob(1200, 1000)
    full = _upload(tmp_path, "full.png", _png(image))
    heatmap = _upload(tmp_path, "heat.png", _png(overlay(image, heat)))
    thumbnail = _upload(
        tmp_path, "thumb.png", _png(cv2.resize(image, (213, 256), interpolation=cv2.INTER_AREA))
    )
    renditions = Renditions(tmp_path / "cache")

    only_thumbnail = renditions.describe({"thumbnail": thumbnail})
    assert (only_thumbnail.source, only_thumbnail.width, only_thumbnail.layer) == ("thumbnail", 213, None)
    # Thumbnails mode sends a 256-px thumbnail and a 512-px overlay: the overlay's grey is sharper.
    recovered = renditions.describe({"thumbnail": thumbnail, "heatmap": heatmap})
    assert (recovered.source, recovered.height, recovered.layer) == ("heatmap", 512, "heat")
    best = renditions.describe({"image": full, "thumbnail": thumbnail, "heatmap": heatmap})
    assert (best.source, best.width, best.height, best.layer) == ("image", 1000, 1200, "heat")
    assert renditions.describe({}).source is None

    jpeg = renditions.image({"image": full, "heatmap": heatmap}, 700)
    assert jpeg is not None
    assert b"\xff\xc2" in jpeg[:2000]
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.ndim == 2
    assert decoded.shape[1] == 768
    cached = list((tmp_path / "cache").rglob(f"{full.sha256}-image-768.jpg"))
    assert len(cached) == 1
    assert renditions.image({"image": full}, 700) == jpeg  # from the cache
    layer = renditions.layer({"heatmap": heatmap})
    assert layer is not None
    data, media_type, kind = layer
    assert (media_type, kind) == ("image/png", "heat")
    grey_heat = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert grey_heat.ndim == 2
    assert grey_heat.shape[1] == render.HEAT_SIDE
    assert len(data) < 40_000  # a few kB: the heat is smooth


def test_a_colour_overlay_is_shown_as_it_is(tmp_path: Path) -> None:
    image = grey_image(300, 300)
    colour = np.stack([image, np.roll(image, 40, axis=1), 255 - image], axis=2)
    heatmap = _upload(tmp_path, "heat.png", _png(overlay(colour, blob(300, 300))))
    renditions = Renditions(tmp_path / "cache")
    picture = renditions.describe({"heatmap": heatmap})
    assert (picture.source, picture.layer) == ("overlay", None)
    thumbnail = _upload(tmp_path, "thumb.png", _png(cv2.resize(colour, (256, 256))))
    with_thumbnail = renditions.describe({"heatmap": heatmap, "thumbnail": thumbnail})
    assert (with_thumbnail.source, with_thumbnail.layer) == ("thumbnail", "overlay")
    layer = renditions.layer({"heatmap": heatmap})
    assert layer is not None
    assert layer[1:] == ("image/jpeg", "overlay")


def _study(payload: dict) -> Study:
    return Study(1, "u", "d", "xray-1", "site-a", "default", "2026-11-29T09:25:26.972Z", payload)


@pytest.mark.security
def test_the_page_shows_named_fields_only() -> None:
    payload = {
        "result": {
            "finding": "pneumonia",
            "positive_label": "pneumonia",
            "probability": 0.91,
            "threshold": 0.19,
            "probabilities": {"normal": 0.09, "pneumonia": 0.91},
            "quality": {"sharpness": 120.5, "black_fraction": 0.1, "secret_metric": 7},
            "model": "cxr-pneumonia",
            "version": "1.0.0",
        },
        "study": {
            "patient": "P-abc",
            "age_years": 4.0,
            "sex": "F",
            "urgent": True,
            "PatientName": "Zxqwerty",
        },
        "surprise": {"InstitutionName": "Saint Qwerty"},
    }
    view = presenters.study_view(_study(payload))
    text = repr(view)
    assert "Zxqwerty" not in text
    assert "Qwerty" not in text
    assert "secret_metric" not in text
    assert view["positive"]
    assert view["urgent"]
    assert view["window_level"]
    assert ("age", "4 y") in view["patient_rows"]
    assert presenters.age(0.5) == "6 mo"
    assert presenters.age(None) is None  # never a literal "age ?" on the page
    assert presenters.patient(4.0, "F") == "1-4 y · female"  # an age band on the worklist
    assert presenters.patient(None, None) == "age and sex not recorded"
    assert presenters.patient(None, "M") == "male"
    assert ("sharpness", "120") in view["quality_rows"]
    assert presenters.study_view(_study({"study": {"modality": "US"}}))["window_level"] is False
    clip = presenters.study_view(_study({"study": {"modality": "US"}, "clip": {"frames_analysed": 9}}))
    assert clip["clip"]  # the page says "cine not available: one key frame"
    assert not view["clip"]
    broken = presenters.study_view(_study({"result": "not a dict", "study": ["nor this"]}))  # a bad payload
    assert broken["finding"] == "-"


def test_the_finding_follows_the_verdict_when_left_empty() -> None:
    labels = ["normal", "pneumonia"]
    assert presenters.default_finding("agree", "pneumonia", labels) == "pneumonia"
    assert presenters.default_finding("disagree", "pneumonia", labels) == "normal"
    assert presenters.default_finding("disagree", "benign", ["benign", "malignant", "normal"]) is None
    assert presenters.default_finding("uncertain", "pneumonia", labels) is None


def test_a_clip_is_drawn_as_a_sparkline() -> None:
    line = presenters.sparkline([[0.0, 0.1], [0.5, 0.9], [1.0, 0.4]], 0.5, width=100, height=50)
    assert line is not None
    assert line["points"].split()[0] == "1.0,43.4"  # 50 - 2 - 0.1 * 46
    assert line["threshold_y"] == 25.0
    assert presenters.sparkline([[0.0, 0.1]], 0.5) is None
    assert presenters.sparkline("nonsense", 0.5) is None


def test_a_full_size_radiograph_travels_in_a_second_at_1_mbit(tmp_path: Path) -> None:
    """A 2000-px chest X-ray (a shipped sample enlarged, with detector-like noise) at the widths
    a laptop screen asks for: a 1 Mbit/s link carries about 125 kB a second."""
    sample = cv2.imread(str(Path(__file__).parent.parent / "models/cxr-pneumonia/samples/sample-01.png"), 0)
    large = cv2.resize(sample, (2000, 2000), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    noisy = np.clip(large + np.random.default_rng(0).normal(0, 2, large.shape), 0, 255).astype(np.uint8)
    full = _upload(tmp_path, "large.png", _png(noisy))
    renditions = Renditions(tmp_path / "cache")
    sizes = {width: len(renditions.image({"image": full}, width) or b"") for width in (768, 1024)}
    assert sizes[768] < 60_000
    assert sizes[1024] < 100_000


def test_a_missing_or_damaged_file_leaves_what_else_there_is(tmp_path: Path) -> None:
    image = grey_image(300, 300)
    thumbnail = _upload(tmp_path, "thumb.png", _png(cv2.resize(image, (256, 256))))
    gone = SimpleNamespace(path=str(tmp_path / "gone.png"), sha256="0" * 64)
    damaged = _upload(tmp_path, "bad.png", b"\x89PNG not really")
    renditions = Renditions(tmp_path / "cache")
    for heatmap in (gone, damaged):
        picture = renditions.describe({"thumbnail": thumbnail, "heatmap": heatmap})
        assert (picture.source, picture.layer) == ("thumbnail", None)
        assert renditions.layer({"heatmap": heatmap}) is None
    assert renditions.describe({"heatmap": gone}).source is None
    assert renditions.image({"image": damaged, "thumbnail": thumbnail}, 512) is not None  # the thumbnail


def test_the_page_never_recovers_the_picture_from_the_heatmap_when_a_real_one_exists(tmp_path: Path) -> None:
    """The trial read a 224-px picture undone from the heatmap blend while the thumbnail was on
    the hub; the page now shows the thumbnail (a preview) and keeps the heat as its own layer."""
    image, heat = grey_image(1200, 1000), blob(1200, 1000)
    heatmap = _upload(tmp_path, "heat.png", _png(overlay(image, heat)))
    thumbnail = _upload(
        tmp_path, "thumb.png", _png(cv2.resize(image, (213, 256), interpolation=cv2.INTER_AREA))
    )
    renditions = Renditions(tmp_path / "cache")
    shown = presenters.picture(renditions, {"thumbnail": thumbnail, "heatmap": heatmap})
    assert (shown.source, shown.width, shown.layer) == ("thumbnail", 213, "heat")
    jpeg = presenters.image(renditions, {"thumbnail": thumbnail, "heatmap": heatmap}, 1024)
    assert jpeg is not None
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED).shape[1] == 213
    # Only a heatmap (a DICOM with burned-in text sends no thumbnail): the recovered grey is all.
    alone = presenters.picture(renditions, {"heatmap": heatmap})
    assert (alone.source, alone.layer) == ("heatmap", "heat")
    small = presenters.thumbnail_jpeg({"thumbnail": thumbnail})
    assert small is not None
    assert (
        cv2.imdecode(np.frombuffer(small, np.uint8), cv2.IMREAD_UNCHANGED).shape[1] == presenters.THUMB_WIDTH
    )
    assert len(small) < 4000


def test_worklist_columns_say_where_they_come_from() -> None:
    from edge.hub.worklist import WorklistRow

    base = dict.fromkeys(WorklistRow.__dataclass_fields__)
    row = WorklistRow(
        **{
            **base,
            "record_id": 1,
            "device_id": "d",
            "result_uuid": "u",
            "urgent": False,
            "received_at": "2026-12-01T08:00:00Z",
            "device_name": "x",
            "site": "s",
            "reviews": 0,
            "thumbnail": False,
        }
    )
    assert presenters.acquired(row)[0] == "received 2026-12-01 08:00 UTC"  # the fallback, said so
    dated = row.__class__(**{**row.__dict__, "study_date": "20261130"})
    assert presenters.acquired(dated)[0] == "2026-11-30"
    analysed = row.__class__(**{**row.__dict__, "analysed": "2026-11-30T07:15:02Z"})
    assert presenters.acquired(analysed)[0] == "2026-11-30 07:15 UTC"
    manifest = SimpleNamespace(accepts=SimpleNamespace(modalities=["CR", "DX"], body_parts=["CHEST"]))
    kinds = presenters.Kinds(lambda model, version: manifest if model == "cxr" else None)
    png = row.__class__(**{**row.__dict__, "model": "cxr", "model_version": "1.0.0"})
    assert kinds(png) == ("X-ray · chest", True)
    assert kinds(row) == ("not sent", False)
    dicom = row.__class__(**{**row.__dict__, "modality": "US", "body_part": "LUNG"})
    assert kinds(dicom) == ("ultrasound (US) · lung", False)
    assert presenters.age_band(0.4) == "under 1 y"
    assert presenters.age_band(70) == "65 y and over"
    assert presenters.short_key("S-0123456789abcdef0123") == "S-01234567"
