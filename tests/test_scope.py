"""The applicability check's arithmetic (edge/inference/scope.py) on statistics made here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.errors import Code, EdgeError
from edge.inference.scope import BORDERLINE, IN_SCOPE, OUT_OF_SCOPE, ScopeCheck, refusal


def two_layer_check(threshold: float = 1.2) -> ScopeCheck:
    """Layer 0: 2 values, layer 1: 3 values; two classes; identity precision; scale 1 and 2."""
    means = [np.array([[1.0, 1.0], [2.0, 2.0]]), np.array([[1.0, 1.0, 1.0], [3.0, 3.0, 3.0]])]
    precisions = [np.eye(2), np.eye(3)]
    calibration = np.linspace(0.0, 1.0, 99)  # 99 validation distances
    return ScopeCheck([2, 3], means, precisions, np.array([1.0, 2.0]), calibration, threshold)


def test_distance_is_the_largest_scaled_layer_distance_to_the_nearest_class() -> None:
    check = two_layer_check()
    # sqrt is applied before the distance: features 1 and 4 are 1 and 2 after it
    features = np.array([[1.0, 1.0, 1.0, 1.0, 1.0], [4.0, 4.0, 9.0, 9.0, 9.0]])
    layers = check.layer_distances(features)
    assert np.allclose(layers[0], [0.0, 0.0])  # nearest class: class 0, then class 1
    assert np.allclose(layers[1], [0.0, 0.0])
    assert np.allclose(check.distances(features), [0.0, 0.0])
    off = np.array([[1.0, 1.0, 16.0, 9.0, 9.0]])  # layer 1 (4, 3, 3) after sqrt: 1 from class 1
    assert np.allclose(check.layer_distances(off)[1], [1.0])
    assert np.allclose(check.distances(off), [0.5])  # layer 1's scale is 2


def test_p_value_states_and_threshold() -> None:
    check = two_layer_check(threshold=1.2)
    in_scope, borderline, far = check.judge_distances(np.array([0.5, 0.99, 5.0]))
    assert in_scope.state == IN_SCOPE
    assert in_scope.p_value == pytest.approx(50 / 100)
    assert borderline.state == BORDERLINE
    assert borderline.p_value < 0.05
    assert far.state == OUT_OF_SCOPE
    assert far.refused
    assert far.p_value == pytest.approx(1 / 100)
    assert far.as_dict() == {"state": OUT_OF_SCOPE, "distance": 5.0, "p_value": 0.01, "threshold": 1.2}


def test_non_finite_features_are_out_of_scope() -> None:
    check = two_layer_check()
    features = np.array([[np.nan, 1.0, 1.0, 1.0, 1.0]])
    assert check.judge(features)[0].state == OUT_OF_SCOPE


def test_a_clip_is_judged_by_the_median_of_its_frames() -> None:
    check = two_layer_check(threshold=1.2)
    assert check.judge_clip([]) is None
    mostly_fine = check.judge_clip([0.2, 0.3, 9.0])  # one odd frame (probe lifted)
    assert mostly_fine is not None
    assert not mostly_fine.refused
    mostly_off = check.judge_clip([0.2, 8.0, 9.0])
    assert mostly_off is not None
    assert mostly_off.refused


def test_wrong_feature_width_is_a_coded_error() -> None:
    with pytest.raises(EdgeError) as caught:
        two_layer_check().distances(np.zeros((1, 4)))
    assert caught.value.code is Code.MODEL_OUTPUT_INVALID


def test_load_round_trip_and_damaged_files(tmp_path: Path) -> None:
    check = two_layer_check()
    path = tmp_path / "applicability.npz"
    np.savez(
        path,
        sizes=np.array(check.sizes),
        scales=check.scales,
        calibration=check.calibration,
        means_0=check.means[0],
        precision_0=check.precisions[0],
        means_1=check.means[1],
        precision_1=check.precisions[1],
    )
    loaded = ScopeCheck.load(path, 1.2)
    features = np.array([[1.0, 4.0, 16.0, 1.0, 9.0]])
    assert np.allclose(loaded.distances(features), check.distances(features))
    np.savez(path, sizes=np.array([2, 3]), scales=check.scales, calibration=check.calibration)
    with pytest.raises(EdgeError) as caught:
        ScopeCheck.load(path, 1.2)
    assert caught.value.code is Code.MODEL_MANIFEST_INVALID
    path.write_bytes(b"not an npz")
    with pytest.raises(EdgeError):
        ScopeCheck.load(path, 1.2)


def test_the_refusal_sentence_names_what_the_model_reads() -> None:
    scope = two_layer_check().judge_distances(np.array([7.0]))[0]
    error = refusal("cxr-pneumonia", "a frontal paediatric chest X-ray", scope)
    assert error.code is Code.OUT_OF_SCOPE
    assert error.message.startswith("this does not look like a frontal paediatric chest X-ray: check")


def test_a_variant_is_judged_by_fp32_scaled_to_this_machine_where_that_is_stricter() -> None:
    """scope.localised: the manifest's INT8 threshold was fitted on another machine's INT8
    features; where this machine's variant computes nearly FP32's distances (the measured
    ratio), FP32's threshold and calibration scaled by that ratio judge it. Never looser."""
    from edge.inference.scope import distance_ratio, localised

    fp32 = two_layer_check(threshold=1.0)
    lenient = two_layer_check(threshold=1.8)
    here = localised(lenient, fp32, 1.05)
    assert here.threshold == pytest.approx(1.05)
    assert np.allclose(here.calibration, fp32.calibration * 1.05)
    far = np.array([[1.0, 1.0, 16.0, 16.0, 16.0]])  # layer 1: (4, 4, 4) after sqrt, 3 from class 1
    distance = float(fp32.distances(far)[0])
    assert 1.05 < distance < 1.8  # answered by the manifest's threshold, refused here
    assert lenient.judge(far)[0].state != OUT_OF_SCOPE
    assert here.judge(far)[0].state == OUT_OF_SCOPE
    assert localised(lenient, fp32, 2.0) is lenient  # FP32 x 2 would be looser than the manifest
    assert localised(lenient, fp32, None) is lenient  # not measured: the manifest
    assert localised(lenient, fp32, float("nan")) is lenient
    reference = np.array([[1.0, 1.0, 16.0, 9.0, 9.0], [4.0, 4.0, 16.0, 16.0, 16.0]])
    assert distance_ratio(fp32, reference, reference) == pytest.approx(1.0)


def test_a_result_read_through_a_frame_says_so_and_nothing_else_does() -> None:
    """`Scope.frame_filled` (the read-through's frame width) is stored and said in words; a stored
    verdict without it, or with a value no device writes, says nothing of a frame."""
    from edge.inference.scope import Scope, frame_words, plain_words

    read = Scope(distance=30.0, p_value=0.2, threshold=40.0, state=IN_SCOPE, frame_filled=0.0123)
    assert read.as_dict()["frame_filled"] == 0.012
    assert "(1% of a side) filled" in (plain_words(read.as_dict()) or "")
    plain = Scope(distance=30.0, p_value=0.2, threshold=40.0, state=IN_SCOPE).as_dict()
    assert "frame_filled" not in plain
    assert "frame" not in (plain_words(plain) or "")
    assert "under 1%" in (frame_words({"frame_filled": 0.004}) or "")
    for odd in (True, 0, 1.5, "0.01", None, -0.01):
        assert frame_words({"frame_filled": odd}) is None
    assert frame_words(None) is None
