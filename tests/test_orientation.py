"""Pictures the models were not made for that were answered (an outside check): chest films
upside down (63% of turned normal films read "pneumonia"), and a chest film whose header says
ultrasound (read "covid" by the lung model). Both are refused now, with their codes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.config import Settings
from edge.errors import Code
from edge.imaging.decode import decode_bytes
from edge.inference import orientation
from edge.pipeline import Pipeline
from edge.store import Store
from tools import dicomgen
from tools.dicomgen import US_STORAGE


@pytest.fixture
def pipeline(settings: Settings, store: Store) -> Iterator[Pipeline]:
    pipe = Pipeline(settings, store)
    yield pipe
    pipe.close()


def _films(samples: list[tuple[Path, str]]) -> list[tuple[Path, np.ndarray]]:
    return [(p, decode_bytes(p.read_bytes(), p.name).pixels) for p, _ in samples if p.suffix == ".png"]


def test_the_rule_is_a_clear_margin() -> None:
    assert orientation.judged_upside_down(1.0, [0.8, 1.4])
    assert not orientation.judged_upside_down(1.0, [0.86, 1.4])  # nearer, but not clearly
    assert not orientation.judged_upside_down(1.0, [])


def test_a_chest_film_upside_down_is_refused_and_the_right_way_up_is_read(
    pipeline: Pipeline, samples: list[tuple[Path, str]], tmp_path: Path
) -> None:
    refused, read = 0, 0
    films = _films(samples)[:6]
    for path, pixels in films:
        for name, picture in (("up", pixels), ("down", pixels[::-1, ::-1])):
            target = tmp_path / f"{name}-{path.name}"
            cv2.imwrite(str(target), np.ascontiguousarray(picture))
            [analysis] = pipeline.analyse_file(target, model="cxr-pneumonia")
            if name == "up":
                read += analysis.ok
            else:  # refused: upside down, or (further still) out of scope
                refused += analysis.code in (Code.IMAGE_UPSIDE_DOWN.value, Code.OUT_OF_SCOPE.value)
    assert read == len(films)  # each the right way up is read
    assert refused == len(films)
    rows = pipeline.store.db.execute("SELECT error_code FROM jobs WHERE state = 'refused'").fetchall()
    assert Code.IMAGE_UPSIDE_DOWN.value in {row[0] for row in rows}


def test_an_upside_down_film_refused_by_the_film_check_is_not_read_by_another_kind(
    pipeline: Pipeline, samples: list[tuple[Path, str]]
) -> None:
    """Routing a PNG: where the chest check refuses a turned film and a weaker check would take
    it, the chest check reads it turned the right way up and it is refused as upside down. (Only
    then: a film the chest check takes as given is the chest model's, and read by it.)"""
    served = pipeline.pool.get("cxr-pneumonia")
    (_, pixels), *_ = _films(samples)
    decoded = decode_bytes(
        cv2.imencode(".png", np.ascontiguousarray(pixels[::-1, ::-1]))[1].tobytes(), "x.png"
    )
    refused = orientation.taken_turned(served, decoded.pixels)
    assert refused is not None
    assert refused.code is Code.IMAGE_UPSIDE_DOWN
    breast = np.full((256, 256), 40, np.uint8)
    assert orientation.taken_turned(served, breast) is None


def test_a_chest_film_whose_header_says_ultrasound_is_not_read_by_the_ultrasound_model(
    pipeline: Pipeline, samples: list[tuple[Path, str]], tmp_path: Path
) -> None:
    (_, pixels), *_ = _films(samples)
    for body_part in ("CHEST", None):
        ds = dicomgen.grey_dicom(
            pixels, bits_stored=8, sop_class=US_STORAGE, modality="US", body_part=body_part
        )
        path = tmp_path / f"chest-as-us-{body_part}.dcm"
        path.write_bytes(dicomgen.to_bytes(ds))
        [analysis] = pipeline.analyse_file(path)
        assert analysis.code == Code.MODALITY_CONTRADICTED.value, analysis.message
        assert "cxr-pneumonia's check" in (analysis.message or "")
    # Named, the model reads it: the technician's decision, as for any forced model.
    [forced] = pipeline.analyse_file(path, model="us-lung")
    assert forced.code != Code.MODALITY_CONTRADICTED.value


def test_a_film_refused_as_unlike_a_chest_film_says_what_it_looks_like_altered(
    pipeline: Pipeline, samples: list[tuple[Path, str]], tmp_path: Path
) -> None:
    """Inverted (a wrong MONOCHROME1/2) or turned a quarter turn, a chest film is refused
    OUT_OF_SCOPE ("does not look like a chest film"), which tells the technician nothing to
    mend: the refusal now says what the check takes it for when altered."""
    said = {"inverted": 0, "quarter turn": 0}
    films = _films(samples)[:4]
    for path, pixels in films:
        for how, picture in (("inverted", 255 - pixels), ("quarter turn", np.rot90(pixels))):
            target = tmp_path / f"{how}-{path.name}"
            cv2.imwrite(str(target), np.ascontiguousarray(picture))
            [analysis] = pipeline.analyse_file(target, model="cxr-pneumonia")
            assert not analysis.ok
            if analysis.code == Code.OUT_OF_SCOPE.value:
                said[how] += how in (analysis.message or "")
    assert said["inverted"] >= len(films) - 1
    assert said["quarter turn"] >= len(films) - 1
