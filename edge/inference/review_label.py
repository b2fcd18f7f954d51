"""What a specialist's review says the truth is, for a model's labels: one rule for the device
(`edge models calibrate --from-reviews`, `models show`) and the hub's agreement page, so both
count the same cases the same way. Pure.

- "agree": the model's finding.
- "disagree" naming one of the model's labels (in any case, spaces trimmed): that label; naming
  the model's own finding contradicts itself and is left out.
- "disagree" naming no finding: for a two-label model, the other label (disagreeing says which);
  with more labels, left out.
- "disagree" naming something the model has no label for ("tuberculosis", "pneumonia
  (bacterial)"): left out. Guessing would put a case the model was never built for into a class.
- "uncertain", or anything else: left out.
"""

from __future__ import annotations

UNCERTAIN = "uncertain"
NO_FINDING = "disagree without a finding"
UNKNOWN_FINDING = "disagree naming a finding the model has no label for"
SELF_CONTRADICTING = "disagree naming the model's own finding"


def specialist_label(
    verdict: str, review_finding: str | None, model_finding: str, labels: list[str]
) -> tuple[str | None, str]:
    """(the label, "") or (None, why it is left out)."""
    if verdict == "agree":
        return model_finding, ""
    if verdict != "disagree":
        return None, UNCERTAIN
    named = (review_finding or "").strip()
    if not named:
        others = [label for label in labels if label != model_finding]
        return (others[0], "") if len(others) == 1 else (None, NO_FINDING)
    label = {label.lower(): label for label in labels}.get(named.lower())
    if label is None:
        return None, UNKNOWN_FINDING
    if label == model_finding:
        return None, SELF_CONTRADICTING
    return label, ""
