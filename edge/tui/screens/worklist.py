"""The worklist: every image and model as one row, urgent studies first, then the newest.

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

from edge.inference.scope import p_text
from edge.store import WorklistItem
from edge.tui.data import (
    STATE_FILTERS,
    STATE_LABELS,
    WorklistFilter,
    display_name,
    load_worklist,
)
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
# (key, label, width); the name column (None) takes the width the others leave.
COLUMNS: tuple[tuple[str, str, int | None], ...] = (
    ("badge", "", 6),
    ("state", "state", 7),
    ("time", "time", 11),
    ("name", "patient / file", None),
    ("model", "model", 13),
    ("finding", "finding", 14),
)
NAME_MIN_WIDTH = 14
TABLE_CHROME = 2 + 2 * len(COLUMNS)  # the vertical scrollbar, and one cell of padding each side


class WorklistLoaded(Message):
    def __init__(self, rows: list[WorklistItem], chosen: WorklistFilter) -> None:
        super().__init__()
        self.rows = rows
        self.chosen = chosen


BORDERLINE_MARK = "?"  # after POS, or alone: the applicability check found the image borderline


def badge(item: WorklistItem) -> Text:
    """At most 6 cells: URGENT; else POS and/or the borderline mark, or OLD for a result of a
    superseded (corrected since) image. The row's detail line below the table says it in words."""
    if item.urgent:
        return Text("URGENT", style="bold white on red")
    if item.superseded:
        return Text("OLD", style="dim")
    out = Text("")
    if item.positive:
        out.append("POS", style="bold black on yellow")
    if item.state == "done" and item.borderline:
        out.append((" " if out else "") + BORDERLINE_MARK, style="bold magenta")
    return out


def finding_cell(item: WorklistItem) -> Text:
    if item.state == "done" and item.finding:
        style = "bold yellow" if item.positive else ""
        return Text(f"{item.finding} {item.probability:.2f}", style=style)
    if item.state in ("refused", "failed"):
        return Text(item.error_code or item.state, style=STATE_STYLES[item.state])
    return Text("…", style="dim")


class WorklistScreen(ItemActions):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "search", "Search"),
        Binding("f", "cycle_state", "Filter"),
        Binding("U", "toggle_filter('urgent_only')", "Urgent only", show=False),
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
        yield DataTable(id="worklist", cursor_type="row", zebra_stripes=True)
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
        fixed = sum(width for _, _, width in COLUMNS if width)
        name_width = max(NAME_MIN_WIDTH, self.size.width - fixed - TABLE_CHROME)
        for key, label, width in COLUMNS:
            table.add_column(label, width=width or name_width, key=key)
        for item in self.rows:
            unseen = item.result_id and not item.seen_at
            table.add_row(
                badge(item),
                Text(STATE_LABELS[item.state], style=STATE_STYLES[item.state]),
                self.context.when(item.queued_at),
                Text(display_name(item), style="bold" if unseen else ""),
                item.model_name,
                finding_cell(item),
                key=item.job_id,
            )
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
                else "Nothing matches the search and filters (x clears the filters)."
            )
            return
        detail.update(describe(item, self.context.stamp(item.received_at)))

    # ------------------------------------------------------------------ search and filters

    def action_search(self) -> None:
        self.query_one("#search", Input).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        self._set_filter(search=event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.query_one(DataTable).focus()

    def on_key(self, event: events.Key) -> None:
        if event.key == "escape" and self.query_one("#search", Input).has_focus:
            self.query_one(DataTable).focus()
            event.stop()

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


def describe(item: WorklistItem, received: str) -> str:
    """Two lines about one row: who and what, then its outcome in words."""
    kind = " ".join(str(part) for part in (item.modality, item.body_part) if part)
    first = [
        f"[b]{escape(display_name(item))}[/b]",
        kind or str(item.format or ""),
        f"received {received}",
    ]
    if item.description:
        first.insert(2, escape(str(item.description)))
    if item.notes:
        first.append(f"{item.notes} note(s)")
    state = item.state
    if state == "done":
        second = (
            f"{item.finding}: P({item.finding_label}) = {item.probability:.3f}, threshold "
            f"{item.threshold:.3f} ({item.operating_point})"
        )
        if item.borderline:
            p_value = item.applicability_p
            number = f" (p = {p_text(p_value)})" if p_value is not None else ""
            second += (
                f" · [magenta]{BORDERLINE_MARK} borderline{number}[/]: near the edge of the model's training"
            )
        if item.review_verdict:
            second += f" · specialist: {item.review_verdict}"
        second += f" · seen by {item.seen_by}" if item.seen_at else " · not seen yet"
    elif state in ("refused", "failed"):
        reason = escape(item.error_message or "")
        second = f"[{STATE_STYLES[state]}]{state}[/] {item.error_code}: {reason}"
    elif state == "running":
        second = f"{item.model_name} is analysing it now"
    else:
        second = f"waiting for {item.model_name}"
    if item.superseded:
        second += " · [dim]superseded: a corrected version of this image came later[/dim]"
    return " · ".join(first) + "\n" + second
