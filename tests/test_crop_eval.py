"""tools/crop_eval.py's counting, on films made up for it (its reading is the served model's)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tools import crop_eval


def kind(
    refused: bool, darkness: float, nearness: float, pneumonia: bool, now: str = "normal"
) -> dict[str, Any]:
    return {
        "refused": refused,
        "refused now": refused,
        "finding now": now,
        "darkness": darkness,
        "nearness": nearness,
        "pneumonia": pneumonia,
    }


def test_a_normal_part_answered_pneumonia_counts_until_the_rule_refuses_it() -> None:
    whole = kind(False, 2.5, 0.4, False)
    films = [
        {
            "label": "normal",
            "kinds": dict.fromkeys(crop_eval.KINDS, whole) | {"central 70%": kind(False, 1.0, 0.9, True)},
        },
        {
            "label": "normal",
            "kinds": dict.fromkeys(crop_eval.KINDS, whole) | {"central 70%": kind(False, 1.0, 0.5, True)},
        },
        {
            "label": "pneumonia",
            "kinds": dict.fromkeys(crop_eval.KINDS, kind(True, 1.0, 1.5, True, "pneumonia")),
        },
    ]
    result = crop_eval.summary(films, limit=1.44, nearness=0.6)
    assert result["central 70%: normals answered pneumonia, without the rule"]["share"] == 1.0
    assert result["central 70%: normals answered pneumonia, with it"]["share"] == 0.5  # one very typical
    assert result["as given: refused today"]["share"] == round(1 / 3, 4)
    assert result["as given: answered as the film as given was"]["n"] == 2


def test_the_parts_and_frames_are_what_they_say() -> None:
    film = np.arange(100 * 80, dtype=np.uint32).reshape(100, 80).astype(np.uint8)
    assert crop_eval.PARTS["central 50%"](film).shape == (50, 40)
    assert crop_eval.PARTS["bottom half"](film).shape == (50, 80)
    framed = crop_eval.FRAMED["framed in white 2%"](film)
    assert framed.shape == (104, 84)
    assert (framed[0] == 255).all()
