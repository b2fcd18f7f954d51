"""The evidence grid (issue 21): what the device sends instead of a blended heatmap PNG, how
the hub draws the heat from it, and that a device's older PNG results still travel as PNG."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from sqlalchemy import select

from edge.config import load_settings
from edge.hub import db, presenters, render
from edge.hub.render import Renditions
from edge.imaging import evidence
from edge.imaging.explain import evidence_map, to_image_frame
from edge.imaging.preprocess import PreprocessSpec
from edge.operations.housekeeping import sweep_orphans
from edge.pipeline import Pipeline
from edge.store import Store
from edge.store.reads import evidence_beside
from edge.sync.runner import exchange
from tests.conftest import DEFAULT_MODEL, MODELS
from tests.hubfixtures import Hub, reset


def _cam(height: int = 7, width: int = 7, seed: int = 0) -> np.ndarray:
    cam = np.random.default_rng(seed).standard_normal((2, height, width)).astype(np.float32)
    cam[1, 1, 5] += 4.0  # the strongest evidence for class 1: top right
    return cam


@pytest.mark.parametrize("policy", ["stretch", "letterbox", "center_crop"])
def test_the_grid_places_the_heat_where_the_devices_overlay_did(policy: str) -> None:
    spec = PreprocessSpec(224, 224, resize=policy)  # type: ignore[arg-type]
    cam = _cam(14, 14)
    data = evidence.encode(cam, 1, spec, 600, 900)
    assert len(data) == 26 + 14 * 14  # the 14x14 grid of the larger models: 222 bytes
    grid = evidence.decode(data)
    assert (grid.image_height, grid.image_width, grid.resize) == (600, 900, policy)
    # The hub draws on a smaller frame (the thumbnail's): the same heat as the device's, scaled.
    device = cv2.resize(to_image_frame(evidence_map(cam, 1), 600, 900, spec), (300, 200))
    hub = grid.heat(200, 300)
    assert hub.shape == (200, 300)
    assert float(np.abs(hub - device).max()) < 0.03  # uint8 quantisation and resampling only


def test_no_evidence_is_no_heat_and_a_7x7_grid_is_75_bytes() -> None:
    data = evidence.encode(np.zeros((2, 7, 7), np.float32), 1, PreprocessSpec(224, 224), 224, 224)
    assert len(data) == 75
    assert not evidence.decode(data).heat(64, 64).any()


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: b"PNG!" + d[4:],  # not a grid
        lambda d: d[:-1],  # truncated
        lambda d: d[:6] + (200).to_bytes(2, "little") + d[8:],  # a 200-row "grid"
        lambda d: d[:4] + bytes([9]) + d[5:],  # no such resize policy
        lambda d: d[:14] + (0).to_bytes(2, "little") + d[16:],  # an image of height 0
    ],
)
def test_a_damaged_grid_is_refused(damage: object) -> None:
    data = evidence.encode(_cam(), 1, PreprocessSpec(224, 224), 224, 224)
    with pytest.raises(ValueError, match="evidence grid"):
        evidence.decode(damage(data))  # type: ignore[operator]


def _upload(folder: Path, name: str, data: bytes, media_type: str) -> SimpleNamespace:
    path = folder / name
    path.write_bytes(data)
    return SimpleNamespace(path=str(path), sha256=hashlib.sha256(data).hexdigest(), media_type=media_type)


def test_the_hub_draws_the_heat_layer_from_the_grid_over_a_jpeg_thumbnail(tmp_path: Path) -> None:
    image = cv2.GaussianBlur(
        np.random.default_rng(1).integers(0, 256, (600, 900)).astype(np.uint8), (0, 0), 3
    )
    thumb = cv2.resize(image, (256, 171), interpolation=cv2.INTER_AREA)
    thumbnail = _upload(tmp_path, "t.jpg", cv2.imencode(".jpg", thumb)[1].tobytes(), "image/jpeg")
    grid = evidence.encode(_cam(), 1, PreprocessSpec(224, 224), 600, 900)
    heatmap = _upload(tmp_path, "h.evidence", grid, evidence.MEDIA_TYPE)
    renditions = Renditions(tmp_path / "cache")
    uploads = {"thumbnail": thumbnail, "heatmap": heatmap}
    shown = presenters.picture(renditions, uploads)
    assert (shown.source, shown.width, shown.height, shown.layer) == ("thumbnail", 256, 171, "heat")
    assert presenters.image(renditions, uploads, 512) is not None
    layer = renditions.layer(uploads)
    assert layer is not None
    data, media_type, kind = layer
    assert (media_type, kind) == ("image/png", "heat")
    heat = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert heat.shape == (171, render.HEAT_SIDE)  # the image's aspect, the layer's width
    hot_y, hot_x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    assert hot_y < 171 / 2
    assert hot_x > 256 / 2
    assert renditions.layer(uploads) == layer  # cached


def test_a_grid_that_is_not_one_shows_the_picture_without_a_layer(tmp_path: Path) -> None:
    thumb = np.full((100, 100), 128, np.uint8)
    thumbnail = _upload(tmp_path, "t.jpg", cv2.imencode(".jpg", thumb)[1].tobytes(), "image/jpeg")
    bogus = _upload(tmp_path, "h.evidence", b"EVG1" + b"\xff" * 40, evidence.MEDIA_TYPE)
    renditions = Renditions(tmp_path / "cache")
    assert renditions.layer({"thumbnail": thumbnail, "heatmap": bogus}) is None  # refused in the child
    assert renditions.describe({"thumbnail": thumbnail, "heatmap": bogus}).source == "thumbnail"


def test_new_results_send_the_grid_and_a_jpeg_older_ones_their_png(tmp_path: Path) -> None:
    hub = Hub(load_settings(data_dir=tmp_path / "hub-host"), f"sqlite:///{tmp_path / 'hub.db'}")
    reset(hub.engine)
    device = load_settings(
        data_dir=tmp_path / "device", models={"dir": MODELS}, sync={"images": "thumbnails"}
    )
    samples = sorted((MODELS / DEFAULT_MODEL / "samples").glob("*.png"))[:2]
    with Store(device.data_dir) as store:
        pipeline = Pipeline(device, store)
        results = [a.result.id for path in samples for a in pipeline.analyse_file(path) if a.ok and a.result]
        pipeline.close()
        assert len(results) == 2
        heatmaps = [store.result(r).heatmap_path for r in results]  # type: ignore[union-attr]
        grids = [device.data_dir / evidence_beside(h) for h in heatmaps if h]
        assert all(g.exists() and len(g.read_bytes()) <= 26 + 14 * 14 for g in grids)
        assert sweep_orphans(store, min_age_s=0) == 0  # the grid is the result's, not an orphan
        grids[1].unlink()  # as a result stored before grids were kept: only its PNG
        counts = exchange(hub.sync_client(device, store, hub.enroll(device)))
        assert counts["files"] == 4
    with hub.engine.connect() as conn:
        rows = conn.execute(
            select(db.uploads.c.result_uuid, db.uploads.c.kind, db.uploads.c.media_type, db.uploads.c.size)
        ).all()
    hub.client.close()
    sent = {(row.result_uuid, row.kind): (row.media_type, row.size) for row in rows}
    assert sent[(results[0], "heatmap")][0] == evidence.MEDIA_TYPE
    assert sent[(results[0], "heatmap")][1] <= 222
    assert sent[(results[1], "heatmap")][0] == "image/png"  # the old way still works
    assert {sent[(r, "thumbnail")][0] for r in results} == {"image/jpeg"}
    assert max(sent[(r, "thumbnail")][1] for r in results) < 10_000
    print(json.dumps({f"{k[0][-4:]}:{k[1]}": v for k, v in sent.items()}))


def test_deleting_a_study_removes_its_grids(tmp_path: Path) -> None:
    device = load_settings(data_dir=tmp_path / "device", models={"dir": MODELS})
    sample = sorted((MODELS / DEFAULT_MODEL / "samples").glob("*.png"))[0]
    with Store(device.data_dir) as store:
        pipeline = Pipeline(device, store)
        analysis = next(a for a in pipeline.analyse_file(sample) if a.ok)
        pipeline.close()
        assert analysis.result is not None
        assert analysis.result.heatmap_path
        grid = device.data_dir / evidence_beside(analysis.result.heatmap_path)
        assert grid.exists()
        assert analysis.study_id is not None
        store.technician.delete_study(analysis.study_id, "technician")
        assert not grid.exists()
