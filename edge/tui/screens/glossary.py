"""The words and marks of the TUI in plain language (key `g`): what a technician reads on the
worklist and the result screen, and what each number means for the patient in front of them."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

# (term, meaning); markup allowed in the term.
TERMS: tuple[tuple[str, str], ...] = (
    (
        "[bold white on red]URGENT[/] / [bold white on red]URG[/]",
        "a person flagged the study (key !). Flagged studies come first in the worklist and "
        "their waiting images are analysed first.",
    ),
    (
        "[bold white on magenta]REPLY![/] / [bold white on magenta]RPL![/]",
        "the specialist disagrees with the model, in a reply not yet marked seen (key m): read "
        "it first, a child may need recalling or a film repeating. These come right after the "
        "flagged studies, and u keeps them.",
    ),
    (
        "[bold black on yellow]POS[/]",
        "the model's finding is positive (e.g. pneumonia). Positive findings are urgent too: "
        "they come after the flagged studies and the replies that disagree, and u shows only "
        "urgent rows.",
    ),
    (
        "[bold magenta]?[/] borderline",
        "the image is near the edge of what the model was trained on: read the result with care.",
    ),
    ("OLD", "a corrected version of this image came later; this result is for the old one."),
    (
        "P(finding), probability",
        "the model's estimate that the image shows the finding, from 0 to 1. Calibrated: of the "
        "images it scores 0.80, about 80 in 100 really show it. It is decision support, not a "
        "diagnosis.",
    ),
    (
        "threshold",
        "from this probability up, the result is called positive. Below it, negative.",
    ),
    (
        "operating point",
        "how the threshold was chosen. balanced: missed cases and false alarms weighed evenly. "
        "screening: a lower threshold that misses very few cases but gives more false alarms.",
    ),
    (
        "applicability, p",
        "how usual the image looks to the model. in scope: like its training images. borderline: "
        "unusual (p is the share of its test images that were this unusual). out of scope: "
        "unlike them, so no finding is given.",
    ),
    (
        "quality measures",
        "checked before the model runs: share of black, of white, of flat grey (no anatomy), "
        "grey range used, sharpness, smallest side. Past a limit the image is refused with a "
        "code (e.g. UNDEREXPOSED) and a next step.",
    ),
    (
        "review column",
        "the specialist's reply from the hub: agree, disagree (with their finding), uncertain, "
        "or pending (no reply yet). [bold cyan]●[/] marks a reply you have not marked seen (m).",
    ),
    ("seen", "a technician pressed m on the result (and on its latest reply)."),
    (
        "refused / failed",
        "the model did not score the image: the code says why and the line under it what to do "
        "next. failed: the software broke (see the log).",
    ),
    (
        "Live: OK / FROZEN / BLACK",
        "whether the ultrasound picture can be analysed now; the finding word after OK is the "
        "current frame's finding, not a clip result.",
    ),
)


class GlossaryScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,g,q", "close", "Close")]

    def compose(self) -> ComposeResult:
        lines = []
        for term, meaning in TERMS:
            lines.append(f"[b]{term}[/b]")
            lines.append(f"  {meaning}")
        with Vertical(classes="dialog help"):
            yield Static("Glossary: the words and marks on these screens", classes="dialog-title")
            with VerticalScroll(id="help-body"):
                yield Static("\n".join(lines))
            yield Static("[b]esc[/b] close    [b]?[/b] keys", classes="dialog-keys")

    def on_mount(self) -> None:
        self.query_one("#help-body").focus()

    def action_close(self) -> None:
        self.dismiss(None)
