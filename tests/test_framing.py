"""A part of a chest film is refused IMAGE_CROPPED (an outside-style check: normal films cut to
their central 60-70% were answered, most of them "pneumonia"); whole films are read."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.config import Settings
from edge.errors import Code
from edge.imaging.decode import decode_bytes
from edge.imaging.framing import JPEG_BLOCK, border_darkness, frame_filled, without_frame
from edge.imaging.framing import frame_box as framing_box
from edge.inference import framing, orientation
from edge.inference.scope import plain_words
from edge.pipeline import Pipeline
from edge.store import Store


@pytest.fixture
def pipeline(settings: Settings, store: Store) -> Iterator[Pipeline]:
    pipe = Pipeline(settings, store)
    yield pipe
    pipe.close()


def test_border_darkness_is_high_where_the_dark_lies_at_the_edges() -> None:
    framed = np.full((300, 200), 180, np.uint8)
    framed[:20], framed[-20:], framed[:, :15], framed[:, -15:] = 10, 10, 10, 10
    assert border_darkness(framed) > 3
    assert border_darkness(np.dstack([framed] * 3)) == pytest.approx(border_darkness(framed))
    centred = np.full((300, 200), 180, np.uint8)
    centred[75:225, 30:170] = 10  # a third of the picture, none of it at the edges
    assert border_darkness(centred) == 0.0
    assert framing.judged_cropped(border_darkness(centred), nearness=0.9)
    assert not framing.judged_cropped(border_darkness(framed), nearness=0.9)
    # A film its check finds very typical is read as it is, whatever its edges.
    assert not framing.judged_cropped(border_darkness(centred), nearness=0.4)


def test_a_part_of_a_chest_film_is_refused_and_the_whole_film_is_read(
    pipeline: Pipeline, samples: list[tuple[Path, str]], tmp_path: Path
) -> None:
    films = [(p, decode_bytes(p.read_bytes(), p.name).pixels) for p, _ in samples if p.suffix == ".png"][:6]
    codes = []
    for path, pixels in films:
        height, width = pixels.shape[:2]
        part = pixels[round(height * 0.2) : round(height * 0.8), round(width * 0.2) : round(width * 0.8)]
        for name, picture in (("whole", pixels), ("part", part)):
            target = tmp_path / f"{name}-{path.name}"
            cv2.imwrite(str(target), np.ascontiguousarray(picture))
            [analysis] = pipeline.analyse_file(target, model="cxr-pneumonia")
            if name == "whole":
                assert analysis.ok, analysis.code
            else:
                codes.append(analysis.code)
    # Refused: as a part, or (further from the films still) as unlike a chest film.
    assert set(codes) <= {Code.IMAGE_CROPPED.value, Code.OUT_OF_SCOPE.value}
    assert Code.IMAGE_CROPPED.value in codes
    query = "SELECT error_code, error_message FROM jobs WHERE state = 'refused'"
    rows = pipeline.store.db.execute(query).fetchall()
    said = [error for code, error in rows if code == Code.IMAGE_CROPPED.value]
    assert said
    assert all("not the whole film" in error for error in said)


def test_ultrasound_is_not_judged_by_the_film_rule(pipeline: Pipeline) -> None:
    """A sector image's dark is around the sector, not at the picture's edges everywhere: the
    rule is for film models only."""
    served = pipeline.pool.get("us-lung")
    sector = np.zeros((300, 300), np.uint8)
    sector[100:200, 100:200] = 120
    [found] = served.predict([sector])
    films = orientation.reads_films(served)
    assert not films
    assert framing.cropped(served, sector, found.scope, enforce=True, films=films) is None


def test_without_frame_takes_off_flat_lines_along_the_edges_only() -> None:
    picture = np.random.default_rng(0).integers(0, 255, (120, 90), dtype=np.uint8)
    framed = cv2.copyMakeBorder(picture, 3, 5, 2, 4, cv2.BORDER_CONSTANT, value=255)
    unframed = without_frame(framed)
    assert unframed is not None
    assert np.array_equal(unframed, picture)
    assert without_frame(picture) is None
    assert without_frame(np.dstack([framed] * 3)).shape == (120, 90, 3)  # type: ignore[union-attr]
    # A flat picture is not all frame: at most a quarter of each side goes.
    flat = without_frame(np.full((100, 100), 7, np.uint8))
    assert flat is not None
    assert flat.shape[0] >= 50
    assert flat.shape[1] >= 50


def test_a_framed_film_refused_says_it_looks_like_one_without_its_frame(
    pipeline: Pipeline, samples: list[tuple[Path, str]]
) -> None:
    """A frame of 1% of a film's size made the check refuse most films (77 of 100 in black, 100
    of 100 in white): the refusal says what to mend."""
    served = pipeline.pool.get("cxr-pneumonia")
    said = 0
    films = [decode_bytes(p.read_bytes(), p.name).pixels for p, _ in samples if p.suffix == ".png"][:4]
    for pixels in films:
        border = max(2, round(0.02 * max(pixels.shape[:2])))
        framed = cv2.copyMakeBorder(pixels, border, border, border, border, cv2.BORDER_CONSTANT, value=255)
        [found] = served.predict([framed])
        refusal = orientation.refusal(served, framed, found.scope, True)
        assert refusal is not None
        assert refusal.code is Code.OUT_OF_SCOPE
        said += orientation.FRAMED in refusal.message
    assert said >= len(films) - 1


def test_frame_filled_keeps_the_size_and_the_picture_inside() -> None:
    picture = np.random.default_rng(1).integers(0, 255, (200, 150), dtype=np.uint8)
    framed = picture.copy()
    framed[:3], framed[:, -2:] = 0, 0  # a mask line drawn over the picture's edges
    filled = frame_filled(framed, 0.02)
    assert filled is not None
    assert filled.shape == framed.shape
    assert np.array_equal(filled[3:, :-2], picture[3:, :-2])
    assert np.array_equal(filled[0, :-2], picture[3, :-2])  # the edge row repeated outwards
    assert frame_filled(picture, 0.02) is None
    # A frame wider than 2% of a side is filled only so far: its inner part is kept (a film's
    # own flat band under a mask drawn over it: what the film was without the mask).
    banded = picture.copy()
    banded[:, :12] = 0  # the film's own band, 8% of its width
    masked = banded.copy()
    masked[:3], masked[-3:], masked[:, :3], masked[:, -3:] = 0, 0, 0, 0  # a 1.5% mask over it
    again = frame_filled(masked, 0.02)
    assert again is not None
    assert np.array_equal(again[3:-3, 3:-3], banded[3:-3, 3:-3])
    assert not again[:, :3].any()  # the band's outer part: the band, repeated outwards
    assert np.array_equal(again[0, 12:-3], banded[3, 12:-3])  # the mask's rows: the film's edge row
    wide = cv2.copyMakeBorder(picture, 10, 10, 10, 10, cv2.BORDER_CONSTANT, value=0)
    still = frame_filled(wide, 0.02)
    assert still is not None
    assert not still[:6].any()
    assert not still[6:10].any()  # 2% of 220 rows filled (4), from a row of the frame: still framed


def test_a_frame_a_jpeg_rang_into_is_found(samples: list[tuple[Path, str]]) -> None:
    """A framed film exported as JPEG: the blocks ring into the frame, a few values 10-20 levels
    off, and the frame was found short (8 of 9 rows, 2 at the bottom), so the film was refused
    (all of 400 development films framed in white by 1%, JPEG quality 75)."""
    path = next(p for p, _ in samples if p.suffix == ".png")
    film = cv2.resize(
        decode_bytes(path.read_bytes(), path.name).pixels, (896, 896), interpolation=cv2.INTER_CUBIC
    )
    for value in (255, 0):
        framed = cv2.copyMakeBorder(film, 9, 9, 9, 9, cv2.BORDER_CONSTANT, value=value)
        ok, encoded = cv2.imencode(".jpg", framed, [cv2.IMWRITE_JPEG_QUALITY, 75])
        assert ok
        box = framing_box(cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED))
        assert box is not None
        top, bottom, left, right = box
        sides = (top, 914 - bottom, left, 914 - right)
        # The frame, and at most a block of the film's own edge where it is as dark as a black frame
        assert all(9 <= side <= 9 + JPEG_BLOCK for side in sides), (value, box)
    # At the films' own 224 pixels a block spans the whole 2-pixel frame and the film's edge.
    found = 0
    for path, _ in samples:
        if path.suffix != ".png":
            continue
        pixels = decode_bytes(path.read_bytes(), path.name).pixels
        for value in (255, 0):
            framed = cv2.copyMakeBorder(pixels, 2, 2, 2, 2, cv2.BORDER_CONSTANT, value=value)
            encoded = cv2.imencode(".jpg", framed, [cv2.IMWRITE_JPEG_QUALITY, 75])[1]
            box = framing_box(cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED))
            assert box is not None
            top, bottom, left, right = box
            found += sum(side >= 2 for side in (top, 228 - bottom, left, 228 - right))
    assert found >= 140  # of 160 sides (20 films, 2 greys); 152 now, fewer than 20 without the ringing rule


def test_a_film_in_a_thin_frame_is_read_as_the_film(
    pipeline: Pipeline, samples: list[tuple[Path, str]], tmp_path: Path
) -> None:
    """A white frame of 1% of its size made the check refuse every development film tried (400
    of 400); the film inside is read, with the finding of the film without it."""
    films = [(p, decode_bytes(p.read_bytes(), p.name).pixels) for p, _ in samples if p.suffix == ".png"][:4]
    served = pipeline.pool.get("cxr-pneumonia")
    for path, pixels in films:
        border = max(2, round(0.01 * max(pixels.shape[:2])))
        framed = cv2.copyMakeBorder(pixels, border, border, border, border, cv2.BORDER_CONSTANT, value=255)
        [as_given] = served.predict([framed])
        assert served.out_of_scope(as_given.scope, True) is not None  # what the check said alone
        target = tmp_path / f"framed-{path.name}"
        cv2.imwrite(str(target), framed)
        [analysis] = pipeline.analyse_file(target, model="cxr-pneumonia")
        assert analysis.ok, analysis.code
        assert analysis.result is not None
        assert analysis.result.finding == served.predict([pixels])[0].finding.finding
        # The result says it was read through its frame: stored, in words, and on the way out.
        scope = analysis.result.applicability or {}
        assert scope["frame_filled"] == pytest.approx(border / max(pixels.shape[:2]), abs=0.002)
        assert "frame along its edges (1% of a side) filled" in (plain_words(scope) or "")
        [unframed] = pipeline.analyse_file(path, model="cxr-pneumonia")
        assert unframed.result is not None
        assert unframed.result.applicability is not None
        assert "frame_filled" not in unframed.result.applicability


def test_a_thin_frame_changes_no_answer_for_a_film_a_part_or_a_film_upside_down(
    pipeline: Pipeline, samples: list[tuple[Path, str]]
) -> None:
    """A frame weakened the other checks: a part of a film, or a film upside down, in a thin
    frame was answered (an outside-style check: 2 of 75 normal parts and 8 of 75 normal films
    upside down, framed, read "pneumonia"; here sample-05, normal, upside down in a black
    frame). Framed, each is answered as unframed, or refused as unlike the model's films."""
    served = pipeline.pool.get("cxr-pneumonia")

    def outcome(picture: np.ndarray) -> str:
        [found] = served.predict([picture])
        read, refused = orientation.judged(served, picture, found, True)
        return refused.code.value if refused is not None else read.finding.finding

    changed = []
    for path, _ in samples:
        if path.suffix != ".png":
            continue
        pixels = decode_bytes(path.read_bytes(), path.name).pixels
        height, width = pixels.shape[:2]
        part = pixels[round(height * 0.15) : round(height * 0.85), round(width * 0.15) : round(width * 0.85)]
        for picture in (pixels, np.ascontiguousarray(part), np.ascontiguousarray(pixels[::-1, ::-1])):
            unframed = outcome(picture)
            border = max(2, round(0.01 * max(picture.shape[:2])))
            for value in (0, 255):
                framed = cv2.copyMakeBorder(
                    picture, border, border, border, border, cv2.BORDER_CONSTANT, value=value
                )
                if outcome(framed) not in (unframed, Code.OUT_OF_SCOPE.value):
                    changed.append((path.name, unframed, outcome(framed)))
    assert changed == []


def test_a_framed_chest_film_that_does_not_say_what_it_is_goes_to_the_chest_model(
    pipeline: Pipeline, samples: list[tuple[Path, str]], tmp_path: Path
) -> None:
    """Routing a PNG read each check on the framed picture: the chest check refused it, so it was
    refused, or answered by the lung model (an outside-style check: 2 of 150 normal films
    framed by 1% read "covid"). A film model's check now reads it with the frame filled."""
    films = [(p, decode_bytes(p.read_bytes(), p.name).pixels) for p, _ in samples if p.suffix == ".png"][:6]
    for path, pixels in films:
        border = max(2, round(0.01 * max(pixels.shape[:2])))
        framed = cv2.copyMakeBorder(pixels, border, border, border, border, cv2.BORDER_CONSTANT, value=255)
        target = tmp_path / f"framed-{path.name}"
        cv2.imwrite(str(target), framed)
        [analysis] = pipeline.analyse_file(target)  # no model named, no modality
        assert analysis.result is not None, analysis.message
        assert analysis.result.model_name == "cxr-pneumonia"
