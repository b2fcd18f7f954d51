"""One row of the worklist in full: the image with its heatmap, the finding and every number
behind it, quality, the model, the specialist's review when it has come back, the local notes."""

from __future__ import annotations

from typing import Any, ClassVar

from PIL import Image as PILImage
from rich.markup import escape
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import Footer, Static

from edge.hints import refusal_next_step
from edge.inference.scope import BORDERLINE, IN_SCOPE, MEANINGS, OUT_OF_SCOPE, frame_words, p_text
from edge.store import StoredResult, WorklistItem
from edge.tui.data import ResultDetail, display_name, load_picture, load_result
from edge.tui.screens.base import EdgeScreen
from edge.tui.screens.item_actions import ITEM_BINDINGS, ItemActions
from edge.tui.widgets.picture import Picture
from edge.tui.widgets.top_bar import TopBar

BAR_WIDTH = 16
QUALITY_STYLES = {"ok": "green", "borderline": "yellow", "beyond": "bold red", "no limit": "dim"}
QUALITY_STATES = {
    "ok": "ok",
    "borderline": "borderline: close to the limit",
    "beyond": "beyond the limit",
    "no limit": "no limit",
}
# The quality gate's measures in plain words (what the number is of).
QUALITY_WORDS = {
    "min_side": "smallest side, pixels",
    "black_fraction": "share of black (clipped dark)",
    "white_fraction": "share of white (clipped bright)",
    "dynamic_range": "grey range used",
    "sharpness": "sharpness (fine detail)",
    "uniform_fraction": "share of flat grey (no anatomy)",
}
# What an operating point means for this patient (models name theirs in model.toml).
OPERATING_POINTS = {
    "balanced": "set to weigh missed cases and false alarms evenly",
    "screening": "set to miss very few cases, at the cost of more false alarms",
}
APPLICABILITY_STYLES = {IN_SCOPE: "green", BORDERLINE: "bold black on yellow", OUT_OF_SCOPE: "bold red"}
SUPERSEDED = "SUPERSEDED: a corrected version of this image came later; this result is for the old one"


class ResultLoaded(Message):
    def __init__(self, detail: ResultDetail | None) -> None:
        super().__init__()
        self.detail = detail


class PictureLoaded(Message):
    def __init__(self, image: PILImage.Image | None, caption: str, heat: bool = False) -> None:
        super().__init__()
        self.image = image
        self.caption = caption
        self.heat = heat  # the image is the heatmap overlay


class ResultScreen(ItemActions):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,backspace", "back", "Back"),
        Binding("t", "toggle_heatmap", "Heatmap", tooltip="heatmap overlay or the image alone"),
        *ITEM_BINDINGS,
    ]

    def __init__(self, job_id: str) -> None:
        super().__init__()
        self.job_id = job_id
        self.detail: ResultDetail | None = None
        self.heatmap = True

    def compose(self) -> ComposeResult:
        yield TopBar("worklist")
        with Horizontal(id="result-body"):
            yield Picture(self.context.graphics, id="picture")
            with VerticalScroll(id="result-details"):
                for section in (
                    "review",
                    "finding",
                    "applicability",
                    "probabilities",
                    "quality",
                    "model",
                    "clip",
                    "notes",
                    "study",
                ):
                    yield Static("", id=f"section-{section}", classes="section")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#result-details").focus()

    # ------------------------------------------------------------------ data

    def reload(self) -> None:
        self._load()

    @work(thread=True, exclusive=True, group="result")
    def _load(self) -> None:
        self.post_message(ResultLoaded(load_result(self.context, self.job_id)))

    @work(thread=True, exclusive=True, group="picture")
    def _load_picture(self, detail: ResultDetail, heatmap: bool) -> None:
        image, caption = load_picture(self.context, detail, heatmap)
        heat = (
            heatmap and image is not None and detail.result is not None and bool(detail.result.heatmap_path)
        )
        self.post_message(PictureLoaded(image, caption, heat))

    def on_result_loaded(self, message: ResultLoaded) -> None:
        first = self.detail is None
        self.detail = message.detail
        if message.detail is None:
            self.query_one("#section-finding", Static).update("This study is no longer in the store.")
            self.query_one(Picture).show(None, "")
            return
        for name, text in sections(message.detail, self.context.stamp).items():
            widget = self.query_one(f"#section-{name}", Static)
            widget.update(text)
            widget.display = bool(text)
        if first:
            self._load_picture(message.detail, self.heatmap)

    def on_picture_loaded(self, message: PictureLoaded) -> None:
        self.query_one(Picture).show(message.image, message.caption, heat=message.heat)

    # ------------------------------------------------------------------ actions

    def current_item(self) -> WorklistItem | None:
        return self.detail.item if self.detail else None

    def screen_for_delete(self) -> EdgeScreen:
        self.app.pop_screen()
        below = self.app.screen
        return below if isinstance(below, EdgeScreen) else self

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_toggle_heatmap(self) -> None:
        if self.detail is None:
            return
        self.heatmap = not self.heatmap
        self._load_picture(self.detail, self.heatmap)


def sections(detail: ResultDetail, stamp: Any) -> dict[str, str]:
    """Markup per section (empty: hidden). `stamp` formats a stored time for display."""
    item, result = detail.item, detail.result
    out = dict.fromkeys(
        ("review", "finding", "applicability", "probabilities", "quality", "model", "clip", "notes"), ""
    )
    out["finding"] = _finding(item, result)
    if result:
        out["applicability"] = _applicability(result)
        out["probabilities"] = _probabilities(result)
        out["quality"] = _quality(detail)
        out["model"] = (
            f"[b]Model[/b] {result.model_name} {result.model_version}"
            + (f"\n{escape(detail.model_title)}" if detail.model_title else "")
            + f"\n{result.variant} · {result.backend}/{result.precision}"
            + f"\noperating point [b]{result.operating_point}[/b], threshold {result.threshold:.3f}"
            + (f" (site profile {escape(result.profile_id)})" if result.profile_id else " (as shipped)")
        )
    else:
        out["model"] = f"[b]Model[/b] {item.model_name}"
    if detail.clip:
        clip = detail.clip
        out["clip"] = (
            f"[b]Clip[/b] {clip['duration_s']:.1f} s, {clip['frames_analysed']} frames analysed, "
            f"{clip['frames_excluded']} excluded ({clip['source']})\nscore: {clip['aggregate']}"
        )
    out["review"] = _review(detail, stamp)
    out["notes"] = _notes(detail, stamp)
    out["study"] = _study(item, stamp)
    return out


def threshold_words(result: StoredResult) -> str:
    """The threshold and operating point for this patient, in one plain sentence."""
    meaning = OPERATING_POINTS.get(result.operating_point, "as chosen for this site")
    return (
        f"Called {result.finding_label} from {result.threshold:.2f} up "
        f"(operating point {result.operating_point}: {meaning})"
    )


def _how_many(probability: float) -> str:
    """A calibrated probability as a count a person can picture ("about 7 in 10")."""
    tenths = round(probability * 10)
    if tenths >= 10:
        return "nearly all"
    if tenths <= 0:
        return "very few"
    return f"about {tenths} in 10"


def _finding(item: WorklistItem, result: StoredResult | None) -> str:
    old = f"\n[dim]{SUPERSEDED}[/dim]" if item.superseded else ""
    urgent = "[bold white on red] URGENT [/] " if item.urgent else ""
    if result:
        positive = item.positive  # the worklist row carries the result's decision
        colour = "bold yellow" if positive else "bold green"
        seen = f"seen by {escape(str(item.seen_by))}" if item.seen_at else "[b]not seen yet[/b] (m marks it)"
        return (
            f"{urgent}[{colour}]{result.finding.upper()}[/] · {seen}\n"
            f"P({result.finding_label}) = [b]{result.probability:.3f}[/b]: the model's calibrated estimate; "
            f"of images it scores like this, {_how_many(result.probability)} show {result.finding_label}\n"
            f"{threshold_words(result)}{old}"
        )
    state = item.state
    if state in ("refused", "failed"):
        step = refusal_next_step(item.error_code, item.error_message)
        return (
            f"{urgent}[bold magenta]{state.upper()}[/] {item.error_code}\n"
            f"{escape(item.error_message or '')}{old}" + (f"\n[b]Next:[/b] {escape(step)}" if step else "")
        )
    return f"{urgent}[cyan]{'RUNNING' if state == 'running' else 'NEW'}[/] waiting for {item.model_name}{old}"


def _applicability(result: StoredResult) -> str:
    """The applicability check's word and number, and what they mean for whoever reads on."""
    scope = result.applicability or {}
    state, p_value = scope.get("state"), scope.get("p_value")
    if state not in MEANINGS or not isinstance(p_value, (int, float)):
        return "[b]Applicability[/b] [dim]not checked: this model version has no applicability check[/dim]"
    style = APPLICABILITY_STYLES.get(state, "")
    share = f"{p_value:.0%}" if p_value >= 0.01 else "under 1%"
    frame = frame_words(scope)
    return (
        f"[b]Applicability[/b] [{style}]{state.upper()}[/] p = [b]{p_text(p_value)}[/b]\n"
        f"{MEANINGS[state]} ({share} of its test images are this unusual)"
        + (f"\n[yellow]{frame}[/]" if frame else "")
    )


def _probabilities(result: StoredResult) -> str:
    lines = ["[b]Probabilities[/b] per label (calibrated; they add up to 1)"]
    width = max(len(label) for label in result.probabilities)
    for label, value in sorted(result.probabilities.items(), key=lambda kv: -kv[1]):
        filled = round(value * BAR_WIDTH)
        mark = "[yellow]" if label == result.finding_label else "[blue]"
        bar = f"{mark}{'█' * filled}[/]{'·' * (BAR_WIDTH - filled)}"
        lines.append(f"{label:<{width}} {bar} {value:.3f}")
    return "\n".join(lines)


def _quality(detail: ResultDetail) -> str:
    if not detail.quality:
        return ""
    lines = ["[b]Quality[/b] (measured before the model runs; past a limit, the image is refused)"]
    for flag in detail.quality:
        limit = "" if flag.limit is None else f" ({flag.bound} {flag.limit:g})"
        value = f"{flag.value:.0f}" if flag.value >= 10 else f"{flag.value:.2f}"
        style = QUALITY_STYLES[flag.state]
        name = QUALITY_WORDS.get(flag.name, flag.name.replace("_", " "))
        lines.append(f"{name} {value}{limit} [{style}]{QUALITY_STATES[flag.state]}[/]")
    return "\n".join(lines)


def _review(detail: ResultDetail, stamp: Any) -> str:
    """The specialist's reply, first on the screen: verdict, their finding, the note, who, when."""
    if not detail.result:
        return ""
    if not detail.reviews:
        if not detail.item.at_hub:
            return (
                "[b]Specialist[/b] [yellow]not sent[/]: the hub has not got this result yet, so no "
                "specialist can read it; it goes with the next sync (3 Sync says how that goes)"
            )
        return "[b]Specialist[/b] [dim]pending: at the hub, no reply yet (it comes with the sync)[/dim]"
    review = detail.reviews[0]
    colour = {"agree": "bold green", "disagree": "bold red", "uncertain": "bold yellow"}.get(
        review["verdict"], ""
    )
    new = "[bold cyan]● new reply[/] (m marks it read) · " if detail.item.new_reply else ""
    verdict = f"[{colour}]{str(review['verdict']).upper()}[/]"
    if review.get("finding"):
        verdict += f" · their finding: [b]{escape(str(review['finding']))}[/b]"
    lines = [
        f"{new}[b]Specialist[/b] {verdict}",
        f"{escape(str(review.get('reviewer_role') or 'specialist'))}, {stamp(review['reviewed_at'])}",
    ]
    if review.get("note"):
        lines.append(f"“{escape(str(review['note']))}”")
    if len(detail.reviews) > 1:
        lines.append(f"[dim]{len(detail.reviews) - 1} earlier review(s)[/dim]")
    return "\n".join(lines)


def _notes(detail: ResultDetail, stamp: Any) -> str:
    if not detail.notes:
        return "[b]Notes[/b] [dim]none (n adds one)[/dim]"
    lines = [f"[b]Notes[/b] ({len(detail.notes)})"]
    for note in detail.notes:
        lines.append(f"[dim]{stamp(note['created_at'])} {escape(str(note['author']))}[/dim]")
        lines.append(escape(str(note["phi_text"])))
    return "\n".join(lines)


def _study(item: WorklistItem, stamp: Any) -> str:
    lines = [f"[b]Study[/b] {escape(display_name(item))}"]
    facts = [
        item.phi_patient_id and f"ID {item.phi_patient_id}",
        item.patient_age_years is not None and f"{item.patient_age_years:g} y",
        item.patient_sex,
        item.modality,
        item.body_part,
    ]
    shown = [escape(str(fact)) for fact in facts if fact]
    if shown:
        lines.append(" · ".join(shown))
    if item.description:
        lines.append(escape(str(item.description)))
    lines.append(f"received {stamp(item.received_at)} via {item.source}")
    if item.phi_original_name and item.phi_patient_name:
        lines.append(f"file {escape(str(item.phi_original_name))}")
    return "\n".join(lines)
