"""Which installed model(s) score an input: by the modality and body part it says it is, and,
where that does not settle it, by each candidate's applicability check (weighed by
`edge.inference.routing`, which is pure; here the candidates are opened and read).
"""

from __future__ import annotations

import logging

from edge.config import Settings
from edge.errors import Code, EdgeError
from edge.imaging.decode import DecodedImage
from edge.imaging.framing import frame_filled
from edge.inference import framing, orientation, routing
from edge.inference.pool import ModelPool
from edge.inference.registry import Manifest, Registry
from edge.inference.scope import OUT_OF_SCOPE

log = logging.getLogger(__name__)


def models_for(decoded: DecodedImage, settings: Settings, registry: Registry, pool: ModelPool) -> list[str]:
    """The model(s) for an input. `[models] default` is an explicit override for inputs with
    no modality. Otherwise every model whose manifest accepts the input; when several do and
    the input does not say what it is (no modality, or no body part), the one whose
    applicability check finds it most typical of its training images (highest p-value)
    serves, so one image never yields two findings from two models by accident. For an
    input with no modality that guess is answered only where it is sure (edge.inference.
    routing says when and why); otherwise it is refused, every model's reading
    named: OUT_OF_SCOPE (like none of them) or NO_MODEL_FOR_INPUT (a borderline best guess)."""
    study = decoded.study
    if study.modality is None and settings.models.default:
        return [settings.models.default]
    entries = registry.entries()  # read once: for routing, and for the checks that witness it
    names = registry.route(study.modality, study.body_part, entries)
    if not names:
        raise EdgeError(
            Code.NO_MODEL_FOR_INPUT,
            f"no installed model accepts modality {study.modality or '(none)'}"
            f" / body part {study.body_part or 'unspecified'}",
        )
    if len(names) > 1 and not (study.modality and study.body_part):
        names = [_most_applicable(decoded, names, settings, pool)]
    if study.modality is not None and settings.gate.refuses_out_of_scope:
        _refuse_if_contradicted(decoded, names, {entry.name: entry.manifest for entry in entries}, pool)
    return names


def _refuse_if_contradicted(
    decoded: DecodedImage, names: list[str], manifests: dict[str, Manifest], pool: ModelPool
) -> None:
    """A header can be wrong: a chest film sent as US (a converter's default, a worklist entry
    for the wrong room) went to the lung ultrasound model, whose check lets 60% of chest films
    through, and read "covid" (an outside check: 26 of 50). So an installed model whose check
    is sharp (`routing.sharp_checks`: it refuses at least 95% of every other model's images) and
    that the header did not choose reads the picture too: where it finds it its own kind, the
    header and the picture disagree and nothing is guessed (MODALITY_CONTRADICTED)."""
    for name in sorted(routing.sharp_checks(manifests) - set(names)):
        try:
            scope = pool.get(name).predict([decoded.pixels])[0].scope
        except EdgeError as error:  # a model that cannot be opened is no witness either
            log.warning("%s could not read the input for its check: %s", name, error.one_line())
            continue
        if scope is None or scope.state == OUT_OF_SCOPE:
            continue
        study, spec = decoded.study, manifests[name].applicability
        kind = spec.looks_like if spec is not None else name
        raise EdgeError(
            Code.MODALITY_CONTRADICTED,
            f"the header says modality {study.modality} / body part {study.body_part or 'unspecified'}"
            f" ({', '.join(names)}), but the picture looks like {kind} ({name}'s check: p="
            f"{scope.p_value:.3f}, {scope.state}): not analysed; check the modality's or the PACS's tags",
        )


def _most_applicable(decoded: DecodedImage, names: list[str], settings: Settings, pool: ModelPool) -> str:
    readings, manifests = [], {}
    for name in names:
        served = pool.get(name)  # a model that cannot be opened refuses the input here
        readings.append(routing.Reading.of(name, served.predict([decoded.pixels])[0].scope))
        manifests[name] = served.entry.manifest
    order = routing.ranked(readings)
    log.info("routed by applicability: %s", routing.said(order))
    # Without a modality the guess spans X-ray and ultrasound, where a wrong model is worst;
    # a DICOM modality without a body part keeps the best guess (the model's own check
    # still refuses it out of scope), as a PACS's lung cines often lack the body part.
    if decoded.study.modality is not None or not settings.gate.refuses_out_of_scope:
        return order[0].model
    sharp = routing.sharp_checks(manifests)
    choice = routing.chosen(order, sharp)
    if choice is None or not orientation.reads_films(pool.get(choice.model)):
        framed = _film_in_a_frame(decoded, sharp & set(names), pool)
        if framed is not None:
            log.info("routed to %s: a film in a thin flat frame (its check takes it filled)", framed)
            return framed
    if choice is None:
        looks_like = {
            name: spec.looks_like
            for name, manifest in manifests.items()
            if (spec := manifest.applicability) is not None
        }
        study = decoded.study
        raise routing.refusal(order, looks_like, study.modality, study.body_part)
    for name in sorted(sharp - {choice.model}):  # a film upside down, taken by a weak check
        upside_down = orientation.taken_turned(pool.get(name), decoded.pixels)
        if upside_down is not None:
            raise upside_down
    return choice.model


def _film_in_a_frame(decoded: DecodedImage, sharp: set[str], pool: ModelPool) -> str | None:
    """The film model whose sharp check takes the picture with its thin flat frame filled
    (`framing.read_through_frame` serves it so), or None. A frame made the chest check refuse
    most chest films, so an unlabelled framed film was refused, or answered by the lung model
    (an outside-style check: 2 of 150 normal films framed by 1% read "covid")."""
    filled = frame_filled(decoded.pixels, framing.MAX_FILLED_FRAME)
    if filled is None:
        return None
    for name in sorted(sharp):
        served = pool.get(name)
        if not orientation.reads_films(served):
            continue
        scope = served.predict([filled])[0].scope
        if scope is not None and not scope.refused:
            return name
    return None
