"""Training for shift and measuring it: the acquisition-shift primitives (tools/augment.py), the
shift-aware validation (tools/shift_eval.py) on a real ONNX model, and the clip scale sweep
(tools/clip_scale.py) through the product's clip path with the shipped lung model."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.test_tools import make_recipe
from tests.tinymodel import tiny_onnx
from tools import augment as a
from tools import shift_eval


def sharpness(image: np.ndarray) -> float:
    return float(cv2.Laplacian(image.astype(np.float32), cv2.CV_32F).var())


def checkerboard(size: int = 64) -> np.ndarray:
    board = (np.indices((size, size)).sum(axis=0) % 2 * 200 + 20).astype(np.uint8)
    return board


def test_each_acquisition_shift_moves_the_picture_the_way_its_name_says() -> None:
    rng = np.random.default_rng(0)
    board = checkerboard()
    assert sharpness(a.blur(board, 1.5)) < 0.2 * sharpness(board)
    assert sharpness(a.lower_resolution(board, 0.5)) < 0.2 * sharpness(board)  # fine detail gone
    flat = np.full((64, 64), 128, np.uint8)
    assert 6 < a.noise(flat, 8.0, rng).std() < 10
    ramp = np.tile(np.linspace(100, 140, 64).astype(np.uint8), (64, 1))
    assert a.local_contrast(ramp, 3.0).std() > ramp.std()  # CLAHE stretches a narrow range
    assert a.intensity(ramp, gamma=1.6).mean() < ramp.mean() < a.intensity(ramp, gamma=0.6).mean()
    assert a.intensity(ramp, contrast=0.5).std() < ramp.std()
    assert a.intensity(ramp, gain=0.7).mean() < ramp.mean()
    recompressed = a.jpeg(board, 25)
    assert recompressed.shape == board.shape
    assert recompressed.dtype == np.uint8
    assert np.abs(recompressed.astype(int) - board).mean() > 0  # lossy
    rgb = np.dstack([board, board // 2, board // 3])
    for shifted in (a.jpeg(rgb, 40), a.local_contrast(rgb, 2.0), a.lower_resolution(rgb, 0.4)):
        assert shifted.shape == rgb.shape
        assert shifted.dtype == np.uint8
    bright_top = np.zeros((64, 64), np.uint8)
    bright_top[:16] = 255
    assert a.depth_crop(bright_top, 0.25)[:21].mean() > 200  # the top quarter fills more rows
    centre_column = np.zeros((64, 64), np.uint8)
    centre_column[:, 28:36] = 255
    assert 15 <= (a.stretch(centre_column, 2.0)[0] > 128).sum() <= 17  # twice as wide, the height kept
    assert (a.stretch(centre_column, 2.0)[:, 32] == 255).all()
    zoomed = a.affine(bright_top, 0.0, 0.5, (0.0, 0.0))
    assert zoomed[:16].mean() == 0  # zoomed out: black border where nothing was imaged


def test_training_augmentation_with_every_shift_keeps_shape_and_never_mirrors_a_chest() -> None:
    """The chest recipe as shipped, plus a pixel-aspect change, with every optional shift firing."""
    from tools.recipe import REPO, load_recipe

    recipe_augment = dict(load_recipe(REPO / "tools" / "configs" / "cxr-pneumonia.toml").raw["augment"])
    recipe_augment["aspect"] = [0.8, 1.25]
    assert recipe_augment["hflip"] is False
    for key in ("resolution", "blur", "local_contrast", "noise", "jpeg", "aspect"):
        assert key in recipe_augment
        recipe_augment[f"{key}_p"] = 1.0  # every one of them fires here
    image = np.zeros((64, 64), np.uint8)
    image[:, :16] = 255
    rng = np.random.default_rng(4)
    outs = [a.augment(image, recipe_augment, rng) for _ in range(20)]
    for out in outs:
        assert out.shape == image.shape
        assert out.dtype == np.uint8
        assert out[:, :20].mean() > out[:, 44:].mean()
    assert len({out.tobytes() for out in outs}) == len(outs)


def _synthetic(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Dark noisy squares are normal, bright ones positive: the tiny model scores brightness."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    bases = rng.normal(100 + 30 * labels, 20)  # the classes overlap, as real ones do
    images = np.stack([np.clip(rng.normal(base, 12, (32, 32)), 0, 255).astype(np.uint8) for base in bases])
    return images, labels


def test_shift_aware_validation_reports_each_shift_and_the_threshold_it_would_choose(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    recipe = make_recipe(tmp_path, [])
    recipe.raw["augment"] = {"kind": "xray"}
    onnx = tmp_path / "tiny.onnx"
    tiny_onnx(onnx, weight=1.0, size=32)
    val, test = _synthetic(200, 1), _synthetic(200, 2)
    scorer = shift_eval.candidate_scorer(recipe, onnx, *val)
    clean_p = scorer.probability(test[0])
    assert 0.0 < scorer.threshold < 1.0
    assert scorer.temperature > 0

    result = shift_eval.evaluate(scorer, shift_eval.shifts_for(recipe), test, val, seed=0)
    rows = result["rows"]
    assert next(iter(rows)) == "clean"
    assert list(rows)[-1] == "all shifts pooled"
    assert set(shift_eval.XRAY) <= set(rows)
    assert 0.75 < rows["clean"]["auc"] < 1.0
    assert rows["clean"]["median_p_negatives"] == pytest.approx(
        float(np.median(clean_p[test[1] == 0])), abs=1e-4
    )
    # A brighter exposure pushes this brightness-reading model's negatives up: the table shows it.
    assert rows["brighter (gamma 0.6)"]["median_p_negatives"] > rows["clean"]["median_p_negatives"]
    assert rows["brighter (gamma 0.6)"]["specificity"] < rows["clean"]["specificity"]
    assert 0.0 <= result["threshold_chosen_on_shifted_validation"] <= 1.0
    # Where every site exposes brighter, choosing on the shifted validation split moves the
    # threshold up, after the negatives, and wins back specificity on the shifted images.
    brighter = {"brighter": shift_eval.XRAY["brighter (gamma 0.6)"]}
    only_bright = shift_eval.evaluate(scorer, brighter, test, val, seed=0)
    assert only_bright["threshold_chosen_on_shifted_validation"] > scorer.threshold
    at_shift = only_bright["pooled_at_shift_threshold"]["specificity"]
    assert at_shift > only_bright["rows"]["brighter"]["specificity"]
    low, high = rows["all shifts pooled"]["auc_ci95"]
    assert low <= rows["all shifts pooled"]["auc"] <= high


def test_the_ultrasound_shifts_are_the_ultrasound_ones(tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path, [])
    recipe.raw["augment"] = {"kind": "ultrasound"}
    names = set(shift_eval.shifts_for(recipe))
    assert {"gain 0.7", "speckle 0.3", "shallower depth (25%)", "half resolution"} <= names
    assert "rotated 10 degrees" not in names


def test_a_cross_validated_model_has_no_held_out_split_unless_told(tmp_path: Path) -> None:
    rows = [
        {"path": f"{i}.png", "class_name": ["normal", "pneumonia"][i % 2], "patient": f"p{i}"}
        for i in range(10)
    ]
    recipe = make_recipe(tmp_path, rows)
    recipe.raw["data"]["cv_folds"] = 5
    with pytest.raises(SystemExit, match="trained on every image"):
        shift_eval.splits(recipe, seen=False)
    test, val, kind = shift_eval.splits(recipe, seen=True)
    assert len(test) == 10
    assert not val
    assert "optimistic" in kind
    del recipe.raw["data"]["cv_folds"]
    test, val, kind = shift_eval.splits(recipe, seen=False)
    assert test
    assert val
    assert not {s.path for s in test} & {s.path for s in val}


def test_the_clip_scale_sweep_measures_what_the_product_computes(settings, store) -> None:  # type: ignore[no-untyped-def]
    """At 1x the sweep's clip probability is the stored result of `edge infer clip.mp4`."""
    from edge.inference.pool import ModelPool
    from edge.inference.registry import Registry
    from edge.video.analysis import analyse_recording
    from tools import clip_scale

    pool = ModelPool(Registry(settings.models.dir), settings, settings.data_dir / "cache")
    served = pool.get("us-lung")
    frames = clip_scale.read_clip(clip_scale.SAMPLE)
    sizes = {name: next(clip_scale.rescaled(frames, s))[1].shape[:2] for name, s in clip_scale.SCALES.items()}
    height, width = frames[0][1].shape[:2]
    assert sizes["1x"] == (height, width)
    assert sizes["0.5x"] == (round(height / 2), round(width / 2))
    assert sizes["4K stretched"] == (2160, 3840)

    result = clip_scale.sweep(settings, served, [clip_scale.SAMPLE])
    row = result["clips"][0]
    assert set(row["probability"]) == {*clip_scale.SCALES, clip_scale.PROFILED}
    stored = analyse_recording(settings, store, pool, clip_scale.SAMPLE)
    assert stored.result is not None
    assert row["probability"]["1x"] == pytest.approx(stored.result.probability, abs=1e-4)
    assert row["finding"]["1x"] == stored.result.finding
    # A device profile that says how much the capture stretches gives the undistorted reading back
    # (4K unstretched is about the 4x picture).
    assert row["probability"][clip_scale.PROFILED] == pytest.approx(row["probability"]["4x"], abs=0.02)
    assert row["spread"] == pytest.approx(
        max(row["probability"][k] for k in ("0.5x", "1x", "2x", "4x"))
        - min(row["probability"][k] for k in ("0.5x", "1x", "2x", "4x")),
        abs=2e-4,
    )


def test_a_stretched_capture_is_brought_back_to_the_shape_the_scanner_drew() -> None:
    from edge.video.roi import unstretch

    circle = np.zeros((90, 90), np.uint8)
    cv2.circle(circle, (45, 45), 30, 255, -1)
    stretched = cv2.resize(circle, (160, 90), interpolation=cv2.INTER_LINEAR)  # 16:9 capture
    back = unstretch(stretched, 160 / 90)
    assert back.shape == (90, 90)
    assert np.abs(back.astype(int) - circle).mean() < 4
    assert unstretch(circle, 1.0) is circle
    assert unstretch(circle, 0.5).shape == (90, 180)  # a squeezed capture is widened


def test_a_release_scores_every_validation_image_under_every_shift(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tools/release.py chooses thresholds on these: each image once per shift, by a model that
    never trained on it, a clip's frames grouped per shift so a per-video mean never mixes two."""
    pytest.importorskip("onnxruntime")
    from tools.recipe import load_pixels, read_samples, run_onnx
    from tools.release_sets import Predictions, shifted_sets

    images, labels = _synthetic(12, 3)
    rows = []
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        cv2.imwrite(str(tmp_path / f"{index}.png"), image)
        rows.append(
            {
                "path": f"{index}.png",
                "class_name": ["normal", "pneumonia"][label],
                "patient": f"v{index // 3}",
            }
        )
    recipe = make_recipe(tmp_path, rows)
    recipe.raw["augment"] = {"kind": "xray"}
    recipe.raw["release"] = {"aggregate_by": "patient"}
    monkeypatch.setenv("EDGE_TOOLS_RUNS", str(tmp_path / "runs"))
    recipe.run_dir().mkdir(parents=True)
    tiny_onnx(recipe.run_dir() / "t-fp32.onnx", size=32)
    samples = read_samples(recipe)
    truth = np.array([s.label for s in samples])
    clean = Predictions("validation split", samples, np.zeros((12, 2), np.float32), truth)

    shifted = shifted_sets(recipe, {"validation": clean}, seed=5)["validation_shifted"]
    count = len(shift_eval.XRAY)
    assert shifted.kind == f"validation split under {count} acquisition shifts"
    assert len(shifted.samples) == 12 * count
    assert shifted.logits.shape == (12 * count, 2)
    assert (shifted.truth == np.tile(truth, count)).all()
    assert len({s.row["patient"] for s in shifted.samples}) == 4 * count  # per video and shift
    first_name, first_shift = next(iter(shift_eval.XRAY.items()))
    assert {s.row["shift"] for s in shifted.samples[:12]} == {first_name}
    expected = run_onnx(
        recipe.run_dir() / "t-fp32.onnx",
        np.stack(
            [
                shift_eval.normalise(x, recipe.spec)
                for x in shift_eval.shifted(load_pixels(recipe, samples), first_shift, 5)
            ]
        ),
    )
    assert np.allclose(shifted.logits[:12], expected)


def test_a_gate_with_an_unmeasured_field_still_writes_a_manifest() -> None:
    """A cross-validated INT8 gate carries the parity report's `scope_ratio`, None when it was
    not measured: TOML has no null, and the release must not fail on it (it did)."""
    import tomli_w

    from tools.release import _without_none

    gate = {"passed": True, "out_of_fold": {"images": 3, "scope_ratio": None, "agreement": 1.0}}
    assert _without_none(gate) == {"passed": True, "out_of_fold": {"images": 3, "agreement": 1.0}}
    assert "scope_ratio" not in tomli_w.dumps({"gate": _without_none(gate)})


def test_the_profile_describes_live_captures_but_never_files_or_dicom_cines(settings) -> None:  # type: ignore[no-untyped-def]
    from edge.config import VideoProfile
    from edge.inference.pool import ModelPool
    from edge.inference.registry import Registry
    from edge.video.live import LiveAnalyzer
    from edge.video.source import FrameSource

    profile = VideoProfile(horizontal_stretch=1.78, roi=(10, 5, 60, 50))
    video = settings.video.model_copy(update={"profiles": {"card": profile}, "profile": "card"})
    configured = settings.model_copy(update={"video": video})
    served = ModelPool(Registry(settings.models.dir), configured, settings.data_dir / "cache").get("us-lung")
    frames = [(0.0, np.zeros((90, 160, 3), np.uint8))]
    stretch_of = {
        "device": LiveAnalyzer(configured, served, FrameSource("/dev/video7")).horizontal_stretch,
        "stream": LiveAnalyzer(configured, served, FrameSource("rtsp://scanner/live")).horizontal_stretch,
        "file": LiveAnalyzer(configured, served, FrameSource("clip.mp4")).horizontal_stretch,
        "DICOM cine": LiveAnalyzer(configured, served, FrameSource("cine", frames=frames)).horizontal_stretch,
        "no profile": LiveAnalyzer(settings, served, FrameSource("/dev/video7")).horizontal_stretch,
    }
    assert stretch_of == {"device": 1.78, "stream": 1.78, "file": 1.0, "DICOM cine": 1.0, "no profile": 1.0}
    # Its sector position is the capture's screen too: a file is searched for its own sector.
    assert LiveAnalyzer(configured, served, FrameSource("/dev/video7")).roi == (10, 5, 60, 50)
    assert LiveAnalyzer(configured, served, FrameSource("clip.mp4")).roi is None
    assert LiveAnalyzer(configured, served, FrameSource("cine", frames=frames)).roi is None


def test_a_simulated_site_whose_normals_score_high_is_read_better_after_calibrating(tmp_path: Path) -> None:
    """tools/site_sim.py: calibrating (the product's `fit_site`) on a stratified draw of a site
    whose normals score as high as the shipped threshold reads its other cases better; on a site
    the shipped point already suits, it changes little. The combined shifts keep the picture."""
    from edge.inference.registry import Registry
    from tests.tinymodel import make_model_dir
    from tools import site_sim

    make_model_dir(tmp_path / "models")  # labels normal/finding, balanced at 0.5, temperature 1
    entry = Registry(tmp_path / "models").get("tiny")
    rng = np.random.default_rng(0)
    truth = np.r_[np.zeros(300, np.int64), np.ones(300, np.int64)]
    # The logit difference: positives around +4, normals around +1 (P 0.73 > 0.5: flagged),
    # a site that moved the normals up; the same with the normals at -3 suits the shipped point.
    for normals, before_at_most, threshold_above in ((1.0, 0.75, 0.5), (-3.0, 1.0, 0.0)):
        margin = np.where(truth == 1, 4.0, normals) + rng.normal(0, 0.8, len(truth))
        logits = np.stack([np.zeros(len(truth)), margin], axis=1)
        result = site_sim.simulate(entry, logits, truth, site_sim.Sampling(38, 62, draws=20, seed=1))
        assert result["before"]["accuracy"] <= before_at_most
        assert result["after"]["accuracy"]["p05"] >= 0.9
        assert result["after"]["threshold"]["median"] > threshold_above
        assert 0 <= result["after_reaching_target"] <= 1
    with pytest.raises(SystemExit, match="too few"):
        site_sim.simulate(entry, logits[:50], truth[:50], site_sim.Sampling(38, 62, draws=2, seed=1))
    picture = checkerboard()
    for shift in [*site_sim.COMBINED["xray"].values(), *site_sim.COMBINED["ultrasound"].values()]:
        assert shift(picture, rng).shape == picture.shape
    # The screening point, as the product fits it and always refitted, on the same draws.
    read = site_sim.screening(entry, logits, truth, site_sim.Sampling(38, 62, draws=4, seed=1))
    assert 0.0 <= read["kept"] <= 1.0
    for rule in ("product", "always refit"):
        assert 0.0 <= read[rule]["sensitivity_p05"] <= read[rule]["sensitivity"] <= 1.0
        assert 0.0 <= read[rule]["specificity"] <= 1.0
