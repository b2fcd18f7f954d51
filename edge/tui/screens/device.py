"""The device: disk, queue, models and what serves them, services, and on a Jetson the GPU and
its temperature. What a field engineer asks first on the phone."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from textual import work
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import Footer, Static

from edge.hints import AGENT_STOPPED, next_step
from edge.tui.data import load_device
from edge.tui.screens.base import EdgeScreen
from edge.tui.widgets.top_bar import TopBar

SECTIONS = ("storage", "queue", "models", "services", "host")


class DeviceLoaded(Message):
    def __init__(self, snap: dict[str, Any]) -> None:
        super().__init__()
        self.snap = snap


class DeviceScreen(EdgeScreen):
    def compose(self) -> ComposeResult:
        yield TopBar("device")
        with VerticalScroll(id="device-body"):
            for name in SECTIONS:
                yield Static("", id=f"device-{name}", classes="section")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#device-storage", Static).update("reading the device…")
        self.query_one("#device-body").focus()
        self.refresh_every(max(self.context.refresh_s, 5.0))

    def reload(self) -> None:
        self._load()

    @work(thread=True, exclusive=True, group="device")
    def _load(self) -> None:
        self.post_message(DeviceLoaded(load_device(self.context)))

    def on_device_loaded(self, message: DeviceLoaded) -> None:
        snap = message.snap
        for name, text in (
            ("storage", storage(snap)),
            ("queue", queue(snap)),
            ("models", models(snap)),
            ("services", services(snap, self.context.stamp)),
            ("host", host(snap)),
        ):
            self.query_one(f"#device-{name}", Static).update(text)


def storage(snap: dict[str, Any]) -> str:
    disk = snap["disk"]
    used = 1 - disk["free_mb"] / disk["total_mb"] if disk["total_mb"] else 0.0
    state = (
        "[bold red]NOT accepting studies[/]"
        if not disk["accepting"]
        else "[yellow]accepting, low[/]"
        if disk["warning"]
        else "[green]accepting studies[/]"
    )
    lines = [
        f"[b]Disk[/b] {disk['free_mb'] / 1024:.1f} GB free of {disk['total_mb'] / 1024:.1f} GB "
        f"({used:.0%} used) · {state}"
    ]
    if disk.get("reason"):
        lines.append(escape(str(disk["reason"])))
    lines.append(f"data in {escape(str(snap['data_dir']))}")
    return "\n".join(lines)


def queue(snap: dict[str, Any]) -> str:
    counts = snap["counts"]
    states = ", ".join(
        f"{counts.get(f'jobs_{state}', 0)} {label}"
        for state, label in (
            ("queued", "new"),
            ("running", "running"),
            ("refused", "refused"),
            ("failed", "failed"),
        )
    )
    lines = [
        f"[b]Queue[/b] {snap['queue_depth']} waiting or running · {states}",
        f"{counts['studies']} studies, {counts['results']} results, "
        f"{snap['outbox_pending']} not yet at the hub",
    ]
    for error in snap.get("recent_errors", [])[:3]:
        lines.append(
            f"[magenta]{error['state']}[/] {error['error_code']}: {escape(str(error['error_message']))}"
        )
        step = next_step(error["error_code"])
        if step:
            lines.append(f"  [dim]next:[/dim] {escape(step)}")
    if snap.get("drop_refused"):
        # Refused before the store (undecodable, unlike any model's images): not in the worklist.
        lines.append(
            f"{snap['drop_refused']} file(s) refused at the drop folder in 7 days (in its quarantine/):"
        )
        for item in snap.get("drop_refused_newest", []):
            lines.append(f"  {item['when']} {escape(item['name'])}: {escape(item['reason'])}")
    return "\n".join(lines)


def models(snap: dict[str, Any]) -> str:
    in_use = {row["model_name"]: row for row in snap.get("models_in_use", [])}
    lines = [f"[b]Models[/b] (runtime setting {snap['backend_setting']})"]
    for model in snap.get("installed_models", []):
        if "error" in model:
            lines.append(f"[red]{model['name']}[/]: {escape(model['error'])}")
            continue
        served = in_use.get(model["name"])
        # What the last result was made with: a variant found damaged since is not served now,
        # and "serves" said it was until the next result.
        serving = (
            f"last result by {served['variant']} on {served['backend']}/{served['precision']}"
            if served
            else "[dim]not used yet[/dim]"
        )
        lines.append(f"{model['name']} {model['version']} · {serving}")
        if model.get("profile"):
            lines.append(f"  calibration: {escape(model['profile'])}")
    return "\n".join(lines)


def services(snap: dict[str, Any], stamp: Any) -> str:
    agent = snap["agent"]
    if agent.get("running"):
        lines = [
            f"[b]Agent[/b] [green]running[/], pid {agent.get('pid')}, "
            f"since {escape(str(agent.get('started_at')))}",
            f"worker heartbeat {agent.get('worker_heartbeat_age_s', '?')} s ago, "
            f"{agent.get('jobs_done_since_start', 0)} job(s) done",
        ]
        sources = agent.get("sources") or {}
        lines.append(f"DICOM listener: {sources.get('dicom') or 'off'}")
        callers = snap.get("dicom_callers")
        if callers and callers[0] != "pass":  # a modality refused: the line that allows it
            lines.append(f"  [yellow]callers:[/] {escape(callers[1])}")
        lines.append(f"drop folder: {escape(str(sources.get('watch') or 'off'))}")
    else:
        lines = [f"[b]Agent[/b] [yellow]not running[/]: {escape(str(agent.get('reason', '')))}"]
        lines.append(AGENT_STOPPED)
    last = snap.get("last_result")
    if last:
        lines.append(f"last result {stamp(last['created_at'])}: {last['model_name']} {last['finding']}")
    return "\n".join(lines)


def host(snap: dict[str, Any]) -> str:
    facts = snap.get("host") or {}
    board = facts.get("board") or "generic computer"
    lines = [f"[b]Host[/b] {escape(board)} · {facts.get('cpus', '?')} CPUs"]
    memory = facts.get("memory_mb")
    if memory:
        lines.append(f"memory {memory[1]} MB free of {memory[0]} MB")
    if facts.get("gpu_load") is not None:
        lines.append(f"GPU load {facts['gpu_load']:.0%}")
    temps = facts.get("temperatures") or []
    if temps:
        hottest = max(value for _, value in temps)
        colour = "bold red" if hottest >= 85 else "yellow" if hottest >= 70 else "green"
        parts = []
        for name, value in temps:
            reading = f"{value:.0f}°C"
            parts.append(f"{escape(name)} " + (f"[{colour}]{reading}[/]" if value == hottest else reading))
        lines.append("temperature " + ", ".join(parts))
    versions = snap.get("versions") or {}
    lines.append(" · ".join(f"{name} {version}" for name, version in versions.items()))
    return "\n".join(lines)
