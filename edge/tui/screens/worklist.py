"""The worklist: every image and model as one row; urgent first (studies a person flagged, then
positive findings), then the newest; the specialist's reply in its own column.

Live (reloaded every few seconds from the store, which the agent writes from another process):
new, running, done, and refused with its reason. The row under the cursor is described in full
below the table; Enter opens its result.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.markup import escape
from rich.text import Text
from textual import events, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import DataTable, Footer, Input, Static

from edge.hints import refusal_next_step
from edge.inference.scope import p_text
from edge.store import WorklistItem
from edge.tui.data import (
    STATE_FILTERS,
    STATE_LABELS,
    WorklistFilter,
    display_name,
    is_urgent,
    load_worklist,
    middle_ellipsis,
    new_disagreement,
    review_words,
)
from edge.tui.screens.base import WIDE_COLUMNS
from edge.tui.screens.item_actions import ITEM_BINDINGS, ItemActions
from edge.tui.screens.result import ResultScreen
from edge.tui.widgets.top_bar import TopBar

STATE_STYLES = {
    "queued": "cyan",
    "running": "bold cyan",
    "done": "green",
    "refused": "magenta",
    "failed": "red",
}
WIDE = WIDE_COLUMNS  # from here on: the state column, full dates, a wider review column
NAME_MIN_WIDTH = 14
NAME_LABEL = "patient / file"
NAME_MIN_WIDTH_LAST = 10  # when even the review column cannot give more
REVIEW_MIN_WIDTH = 10  # "● disagree", "not sent"
NEW_REPLY = "●"  # before the review: the specialist's answer came after the row was marked seen
REVIEW_STYLES = {
    "agree": "green",
    "disagree": "bold red",
    "uncertain": "yellow",
    "pending": "dim",
    "not sent": "yellow",
}


class WorklistTable(DataTable[Text | str]):
    """Home and End go to the first and the last row, as the help says: DataTable's own scroll
    sideways, and its ctrl+Home / ctrl+End never arrive from the Linux console or PuTTY, which
    send the same code as Home and End."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("home", "scroll_top", "First row", show=False),
        Binding("end", "scroll_bottom", "Last row", show=False),
    ]


class WorklistLoaded(Message):
    def __init__(self, rows: list[WorklistItem], chosen: WorklistFilter) -> None:
        super().__init__()
        self.rows = rows
        self.chosen = chosen


BORDERLINE_MARK = "?"  # after POS, or alone: the applicability check found the image borderline


def badge(item: WorklistItem, wide: bool = False) -> Text:
    """URGENT (flagged by a person; URG when narrow); else REPLY! (RPL!: a specialist's
    disagreement not yet seen, urgent too); else POS (a positive finding: urgent too)
    and/or the borderline mark, or OLD for a result of a superseded (corrected since) image. The
    glossary (g) and the row's detail line below the table say it in words."""
    if item.urgent:
        return Text("URGENT" if wide else "URG", style="bold white on red")
    if new_disagreement(item):
        return Text("REPLY!" if wide else "RPL!", style="bold white on magenta")
    if item.superseded:
        return Text("OLD", style="dim")
    out = Text("")
    if item.state == "done" and item.positive:
        out.append("POS", style="bold black on yellow")
    if item.state == "done" and item.borderline:
        out.append(BORDERLINE_MARK, style="bold magenta")
    return out


def finding_cell(item: WorklistItem) -> Text:
    """The finding with its probability; the full refusal code; else what the job is doing."""
    if item.state == "done" and item.finding:
        style = "bold yellow" if item.positive else ""
        return Text(f"{item.finding} {item.probability:.2f}", style=style)
    if item.state in ("refused", "failed"):
        return Text(item.error_code or item.state, style=STATE_STYLES[item.state])
    return Text("analysing" if item.state == "running" else "waiting", style="dim cyan")


def review_cell(item: WorklistItem, width: int | None = None) -> Text:
    """The review in `width` cells: the specialist's finding goes before the verdict is cut
    (`● disagree`, not `● disagr…`; the detail line has the finding)."""
    words = review_words(item)
    mark = f"{NEW_REPLY} " if item.new_reply else ""
    if width is not None and len(mark + words) > width:
        words = words.split(":")[0]
    out = Text(mark, style="bold cyan")
    out.append(words, style=REVIEW_STYLES.get(item.review_verdict or words, ""))
    return out


def layout(width: int, rows: list[WorklistItem], when: Any) -> list[tuple[str, str, int]]:
    """(key, label, width) per column for a terminal `width` cells wide: every column but the
    name as wide as its widest cell (codes and dates in full), the name the rest. Under WIDE
    columns the state column goes (the finding column says waiting / analysing / the code)."""
    wide = width >= WIDE

    def widest(texts: list[str], floor: int) -> int:
        return max([floor, *(len(text) for text in texts)])

    columns = [("badge", "", 6 if wide else 4)]
    if wide:
        columns.append(("state", "state", 7))
    columns += [
        (
            "time",
            "received" if wide else "when",
            widest([when(row.queued_at, narrow=not wide) for row in rows], 5),
        ),
        ("name", NAME_LABEL, 0),
        ("model", "model", widest([row.model_name for row in rows], 5)),
        ("finding", "finding", widest([finding_cell(row).plain for row in rows], 7)),
        ("review", "review", min(widest([review_cell(row).plain for row in rows], 6), 28 if wide else 12)),
    ]
    chrome = 1 + 2 * len(columns)  # the vertical scrollbar (app.tcss), one cell of padding each side
    name = width - sum(size for _, _, size in columns) - chrome
    if name < NAME_MIN_WIDTH:  # the review column gives way first (its words are in the detail line)
        key, label, review = columns[-1]
        cut = min(NAME_MIN_WIDTH - name, review - REVIEW_MIN_WIDTH)
        columns[-1] = (key, label, review - max(cut, 0))
        name += max(cut, 0)
    name = max(NAME_MIN_WIDTH_LAST, name)
    if name < len(NAME_LABEL):
        columns[columns.index(("name", NAME_LABEL, 0))] = ("name", NAME_LABEL.replace(" ", ""), 0)
    return [(key, label, size or name) for key, label, size in columns]


class WorklistScreen(ItemActions):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "search", "Search"),
        Binding(
            "u",
            "toggle_filter('urgent_only')",
            "Urgent only",
            tooltip="flagged studies and positive findings",
        ),
        Binding(
            "f", "cycle_state", "State filter", show=False, tooltip="all, new, running, done, refused, failed"
        ),
        Binding("V", "toggle_filter('unseen_only')", "Unseen only", show=False),
        Binding("x", "clear_filters", "Clear filters", show=False),
        *ITEM_BINDINGS,
    ]

    def __init__(self) -> None:
        super().__init__()
        self.chosen = WorklistFilter()
        self.rows: list[WorklistItem] = []
        self._by_job: dict[str, WorklistItem] = {}
        self._signature: object = None

    def compose(self) -> ComposeResult:
        yield TopBar("worklist")
        with Horizontal(id="filter-bar"):
            yield Input(placeholder="/ search: name, file, model, finding, code", id="search")
            yield Static(self.chosen.describe(), id="filter-state")
        yield WorklistTable(id="worklist", cursor_type="row", zebra_stripes=True)
        yield Static("", id="row-detail")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one(DataTable).focus()
        self.refresh_every(self.context.refresh_s)

    # ------------------------------------------------------------------ data

    def reload(self) -> None:
        self._load(self.chosen)

    @work(thread=True, exclusive=True, group="worklist")
    def _load(self, chosen: WorklistFilter) -> None:
        self.post_message(WorklistLoaded(load_worklist(self.context, chosen), chosen))

    def on_worklist_loaded(self, message: WorklistLoaded) -> None:
        if message.chosen != self.chosen:
            return  # the filter changed while this was read: a newer load is on its way
        signature = (self.size.width, list(message.rows))  # frozen records compare by value
        if signature == self._signature:
            return
        self._signature = signature
        self.rows = message.rows
        self._by_job = {row.job_id: row for row in self.rows}
        self._fill_table()

    def _fill_table(self) -> None:
        table = self.query_one(DataTable)
        keep = self.current_item()
        table.clear(columns=True)
        columns = layout(self.size.width, self.rows, self.context.when)
        widths = {key: size for key, _, size in columns}
        wide = "state" in widths
        for key, label, size in columns:
            table.add_column(label, width=size, key=key)
        for item in self.rows:
            unseen = item.result_id and not item.seen_at
            cells = {
                "badge": badge(item, wide),
                "state": Text(STATE_LABELS[item.state], style=STATE_STYLES[item.state]),
                "time": self.context.when(item.queued_at, narrow=not wide),
                "name": Text(
                    middle_ellipsis(display_name(item), widths["name"]), style="bold" if unseen else ""
                ),
                "model": item.model_name,
                "finding": finding_cell(item),
                "review": _fit(review_cell(item, widths["review"]), widths["review"]),
            }
            table.add_row(*(cells[key] for key, _, _ in columns), key=item.job_id)
        if keep is not None and keep.job_id in self._by_job:
            table.move_cursor(row=table.get_row_index(keep.job_id))
        self._describe_current()

    def on_resize(self, event: events.Resize) -> None:
        if self.rows:
            self._signature = None
            self._fill_table()

    # ------------------------------------------------------------------ the current row

    def current_item(self) -> WorklistItem | None:
        table = self.query_one(DataTable)
        if not self.rows or table.row_count == 0:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return self._by_job.get(str(row_key.value))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._describe_current()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.app.push_screen(ResultScreen(str(event.row_key.value)))

    def _describe_current(self) -> None:
        detail = self.query_one("#row-detail", Static)
        item = self.current_item()
        if item is None:
            empty = self.chosen == WorklistFilter()
            detail.update(
                "No studies yet: send images to the DICOM listener or the drop folder, or use edge infer."
                if empty
                else "Nothing matches the search and filters (x clears them; u switches the urgent filter)."
            )
            return
        detail.update(describe(item, self.context.when(item.received_at)))

    # ------------------------------------------------------------------ search and filters

    def action_search(self) -> None:
        self.query_one("#search", Input).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        self._set_filter(search=event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.query_one(DataTable).focus()

    def on_key(self, event: events.Key) -> None:
        # As in lazygit or k9s: the search box keeps only typing; Down, Enter (on_input_submitted)
        # and Escape hand the keys back to the list, where letters are commands again.
        if event.key in ("escape", "down", "tab") and self.query_one("#search", Input).has_focus:
            self.query_one(DataTable).focus()
            event.stop()
            event.prevent_default()

    def action_cycle_state(self) -> None:
        following = STATE_FILTERS[(STATE_FILTERS.index(self.chosen.state) + 1) % len(STATE_FILTERS)]
        self._set_filter(state=following)

    def action_toggle_filter(self, name: str) -> None:
        self._set_filter(**{name: not getattr(self.chosen, name)})

    def action_clear_filters(self) -> None:
        self.query_one("#search", Input).value = ""
        self.chosen = WorklistFilter()
        self._after_filter_change()

    def _set_filter(self, **changes: Any) -> None:
        values = {**self.chosen.__dict__, **changes}
        self.chosen = WorklistFilter(**values)
        self._after_filter_change()

    def _after_filter_change(self) -> None:
        self.query_one("#filter-state", Static).update(self.chosen.describe())
        self.reload()


def _fit(text: Text, width: int) -> Text:
    if len(text.plain) <= width:
        return text
    out = text.copy()
    out.truncate(width - 1)
    out.append("…")
    return out


def describe(item: WorklistItem, received: str) -> str:
    """Up to three lines about one row: its outcome in words; the specialist's reply (or, for a
    refusal, what to do next); who and what. In that order: the panel holds five lines at 80x24,
    and a long name or description wrapping there had pushed the next step out of it (the row
    above already names the patient)."""
    kind = " ".join(str(part) for part in (item.modality, item.body_part) if part)
    first = [f"[b]{escape(display_name(item))}[/b]"]
    if item.urgent:
        first.insert(0, "[bold white on red]URGENT[/] flagged")
    elif new_disagreement(item):
        first.insert(0, "[bold white on magenta]REPLY![/] the specialist disagrees")
    elif is_urgent(item):
        first.insert(0, "[bold black on yellow]POS[/] positive finding")
    first += [kind or str(item.format or ""), f"received {received}"]
    if item.description:
        first.insert(-1, escape(str(item.description)))
    if item.notes:
        first.append(f"{item.notes} note(s)")
    second, third = _outcome(item)
    if item.superseded:
        second += " · [dim]superseded: a corrected version of this image came later[/dim]"
    return second + (f"\n{third}" if third else "") + "\n" + " · ".join(first)


def _outcome(item: WorklistItem) -> tuple[str, str]:
    """The row's outcome in words, and the line under it: the specialist's reply, or what to do
    after a refusal."""
    state = item.state
    if state == "running":
        return f"{item.model_name} is analysing it now", ""
    if state == "queued":
        return f"waiting for {item.model_name}", ""
    if state in ("refused", "failed"):
        step = refusal_next_step(item.error_code, item.error_message)
        reason = escape(item.error_message or "")
        return (
            f"[{STATE_STYLES[state]}]{state}[/] {item.error_code}: {reason}",
            f"Next: {escape(step)}" if step else "",
        )
    second = (
        f"{item.model_name}: [b]{item.finding}[/b], P({item.finding_label}) = {item.probability:.2f} "
        f"(called {item.finding_label} from {item.threshold:.2f})"
    )
    if item.borderline:
        p_value = item.applicability_p
        number = f" (p = {p_text(p_value)})" if p_value is not None else ""
        second += (
            f" · [magenta]{BORDERLINE_MARK} borderline{number}[/]: near the edge of the model's training"
        )
    second += f" · seen by {escape(str(item.seen_by))}" if item.seen_at else " · not seen yet (m)"
    if not item.review_verdict:
        if not item.at_hub:
            return (
                second,
                "specialist: [yellow]not sent[/yellow]: the hub has not got it yet (3 Sync says why)",
            )
        return second, "specialist: [dim]pending (at the hub, no reply yet)[/dim]"
    new = f"[bold cyan]{NEW_REPLY} new reply[/] " if item.new_reply else ""
    return (
        second,
        f"{new}specialist: [b]{escape(review_words(item))}[/b] · Enter opens the reply and its note",
    )
