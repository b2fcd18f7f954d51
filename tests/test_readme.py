"""Every command the README shows, checked against the code and run: the README cannot drift.

The commands are read from the README itself (its ```bash blocks, and `edge ...`, `python -m ...`
and `pip ...` in backticks in the prose), so a command added to the README is checked without
touching this file. `a ; b` and `a && b` are split, trailing `# comments` dropped.

- `edge ...`: click parses every one exactly as the `edge` command would (command path, options,
  arguments, values), then each is run with fresh data directories and no network but localhost:
  one-shot commands in-process, services (`edge run`, `edge hub serve`, `edge sync run`) as
  `python -m edge` subprocesses that must report ready and stop cleanly on SIGTERM. The README's
  placeholder names (study.dcm, CODE, ...) are mapped to shipped samples or to what an earlier
  command made (PLACEHOLDERS); one without a mapping fails. The few commands that cannot run
  here are in SKIPPED, each with its reason.
- `python -m tools.X ...`: the module exists and knows every option shown (not run: training
  takes torch and hours).
- The install and test commands: checked as text (the test command is the one `.ci/run` runs);
  pip is never run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import click
import cv2
import httpx
import pytest
from click.testing import CliRunner

from edge.cli import cli
from edge.compat import tomllib
from edge.config import load_settings

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
MODELS = REPO / "models"
CXR_SAMPLES = MODELS / "cxr-pneumonia" / "samples"
VIDEO = REPO / "samples" / "video" / "lung-regular-alines.mp4"  # one the lung model answers
PASSWORD = "correct horse battery staple"
READY_TIMEOUT_S = 120.0  # services open every model before they say READY
ONE_SHOT_TIMEOUT_S = 120  # a command run in-process that never returns is a service


# ---------------------------------------------------------------------- reading the README


@dataclass(frozen=True)
class Shown:
    """One command as the README shows it."""

    argv: tuple[str, ...]
    line: int
    inline: bool  # in backticks in the prose, not in a ```bash block

    @property
    def text(self) -> str:
        return shlex.join(self.argv)

    def __str__(self) -> str:
        return f"README.md:{self.line} `{self.text}`"


def split_commands(text: str) -> list[list[str]]:
    """Shell words of each command on a line: `# comments` dropped, split at `;` and `&&`."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|<>()")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in (";", "&&"):
            commands.append([])
        elif set(token) <= set(";&|<>()"):
            raise ValueError(f"{token!r} in {text!r}: this test knows `;` and `&&` only")
        else:
            commands[-1].append(token)
    return [command for command in commands if command]


INLINE_COMMAND = re.compile(r"`((?:edge|python3? -m|pip) [^`]+)`")


def readme_commands() -> list[Shown]:
    shown: list[Shown] = []
    fence: str | None = None  # the language of the fenced block we are in
    pending = ""  # a bash line continued with a backslash
    paragraph: list[tuple[int, str]] = []  # prose: a code span may wrap onto the next line

    def prose() -> None:
        text = " ".join(line for _, line in paragraph)
        for span in INLINE_COMMAND.finditer(text):
            number, offset = paragraph[-1][0], span.start()
            for first, line in paragraph:  # the line the span starts on
                if offset < len(line):
                    number = first
                    break
                offset -= len(line) + 1
            shown.extend(Shown(tuple(argv), number, True) for argv in split_commands(span.group(1)))
        paragraph.clear()

    for number, line in enumerate(README.read_text().splitlines(), 1):
        if line.startswith("```"):
            prose()
            fence = line[3:].strip() if fence is None else None
            continue
        if fence is None:
            if line.strip():
                paragraph.append((number, line))
            else:
                prose()
        elif fence == "bash":
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            shown.extend(Shown(tuple(argv), number, False) for argv in split_commands(pending + line))
            pending = ""
    prose()
    return shown


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.MULTILINE | re.DOTALL)


COMMANDS = readme_commands()
EDGE_COMMANDS = [shown for shown in COMMANDS if shown.argv[0] == "edge"]


def is_tool(shown: Shown) -> bool:
    module = shown.argv[2] if len(shown.argv) > 2 else ""
    return shown.argv[0] in ("python", "python3") and shown.argv[1] == "-m" and "." in module


def is_setup(shown: Shown) -> bool:
    """venv, activate, pip, pytest: how to install and test, checked as text."""
    return shown.argv[0] in (".", "pip") or shown.argv[:3] in (
        ("python3", "-m", "venv"),
        ("python", "-m", "pytest"),
    )


# ---------------------------------------------------------------------- the CLI, parsed as click does


def parse(argv: Sequence[str]) -> tuple[str, ...]:
    """The command path of `edge ARGV`, parsed exactly as `edge` parses it, without running it.

    An unknown command or option, a missing argument or a bad value raises click.UsageError.
    """
    command: click.Command = cli
    path: list[str] = []
    parent: click.Context | None = None
    args = list(argv)
    with contextlib.redirect_stdout(io.StringIO()):  # --help prints, then exits 0
        try:
            while True:
                ctx = command.make_context(path[-1] if path else "edge", args, parent=parent)
                if not isinstance(command, click.Group):
                    return tuple(path)
                # click >= 8.2 keeps the subcommand in _protected_args (protected_args before).
                protected = ctx.__dict__.get("_protected_args", ctx.__dict__.get("protected_args", []))
                rest = [*protected, *ctx.args]
                if not rest:
                    return tuple(path)
                name, sub, args = command.resolve_command(ctx, rest)
                assert name is not None
                assert sub is not None
                path.append(name)
                command, parent = sub, ctx
        except click.exceptions.Exit as stop:
            if stop.exit_code != 0:
                raise
            return tuple(path)


def cli_options() -> set[str]:
    """Every --option of every edge command."""
    found: set[str] = set()

    def walk(command: click.Command) -> None:
        for param in command.params:
            found.update(name for name in [*param.opts, *param.secondary_opts] if name.startswith("--"))
        if isinstance(command, click.Group):
            for sub in command.commands.values():
                walk(sub)

    walk(cli)
    return found


# ---------------------------------------------------------------------- placeholders


@dataclass
class World:
    """Fresh data directories for a clinic device and a hub, and what the commands made there."""

    root: Path
    hub_port: int
    code: str | None = None  # printed by `edge hub enroll-code`
    hub_url: str | None = None  # set once `edge hub serve` answers

    def __post_init__(self) -> None:
        self.work = self.root / "cwd"  # the commands' working directory (eval writes there)
        self.work.mkdir()
        config = self.root / "edge.toml"
        config.write_text("")  # $EDGE_CONFIG: never the machine's /etc/edge/edge.toml
        base = {
            "EDGE_CONFIG": str(config),
            "HOME": str(self.root / "home"),
            "XDG_DATA_HOME": str(self.root / "xdg"),
        }
        self.env = {
            "device": {
                **base,
                "EDGE_DATA_DIR": str(self.root / "device"),
                # Should `edge run` start the DICOM listener: on localhost, on a free port.
                "EDGE_DICOM__BIND": "127.0.0.1",
                "EDGE_DICOM__PORT": str(free_port()),
            },
            "hub": {
                **base,
                "EDGE_DATA_DIR": str(self.root / "hub-host"),
                "EDGE_HUB__BIND": "127.0.0.1",
                "EDGE_HUB__PORT": str(self.hub_port),
            },
        }

    def role(self, path: tuple[str, ...]) -> dict[str, str]:
        """`edge hub ...` runs on the hub's host, everything else on the clinic device."""
        return self.env["hub" if path[:1] == ("hub",) else "device"]

    def jpeg(self) -> str:
        target = self.root / "chest.jpg"
        if not target.exists():
            ok, encoded = cv2.imencode(".jpg", cv2.imread(str(CXR_SAMPLES / "sample-01.png")))
            assert ok
            target.write_bytes(encoded.tobytes())
        return str(target)

    def labelled_folder(self, argv: Sequence[str]) -> str:
        """The evaluated model's shipped samples and their labels.csv, as a site's folder."""
        verb = "eval" if "eval" in argv else "calibrate"
        model = argv[argv.index(verb) + 1]
        target = self.root / f"labelled-{model}"
        if not target.exists():
            shutil.copytree(MODELS / model / "samples", target)
        return str(target)

    def enroll_code(self) -> str:
        if self.code is None:
            raise LookupError("CODE: no `edge hub enroll-code` ran before this command")
        return self.code

    def backup(self) -> str:
        made = sorted((Path(self.env["device"]["EDGE_DATA_DIR"]) / "backups").glob("*.db"))
        if not made:
            raise LookupError("BACKUP.db: no `edge store backup` ran before this command")
        return str(made[-1])

    def hub(self) -> str:
        if self.hub_url is None:
            raise LookupError("the hub: no `edge hub serve` runs before this command")
        return self.hub_url


@dataclass(frozen=True)
class Placeholder:
    means: str
    make: Callable[[World, Sequence[str]], str]


def shipped(path: Path) -> Callable[[World, Sequence[str]], str]:
    return lambda world, argv: str(path)


# The README's example names, and what stands in for each here. Keep it small and explicit.
PLACEHOLDERS = {
    "study.dcm": Placeholder("a DICOM file: a shipped demo one", shipped(CXR_SAMPLES / "demo/demo-05.dcm")),
    "chest.png": Placeholder("a PNG chest X-ray: a shipped sample", shipped(CXR_SAMPLES / "sample-01.png")),
    "img.jpg": Placeholder("a JPEG: no JPEG X-ray ships, a sample re-encoded", lambda w, a: w.jpeg()),
    "clip.mp4": Placeholder("a recording: the shipped one", shipped(VIDEO)),
    "recording.mp4": Placeholder("a recording: the shipped one", shipped(VIDEO)),
    "/dev/video0": Placeholder("a capture device: the shipped recording, opened alike", shipped(VIDEO)),
    "SOURCE": Placeholder("a device, file or stream: the shipped recording", shipped(VIDEO)),
    "DIR": Placeholder("a labelled folder: the model's own samples", lambda w, a: w.labelled_folder(a)),
    "NAME": Placeholder("a model name", lambda w, a: "cxr-pneumonia"),
    "https://hub.example.org": Placeholder("the hub: `edge hub serve` on localhost", lambda w, a: w.hub()),
    "CODE": Placeholder("the code `edge hub enroll-code` printed", lambda w, a: w.enroll_code()),
    "BACKUP.db": Placeholder("the backup `edge store backup` made", lambda w, a: w.backup()),
}

# Option values the README shows that would make the test slow; the option is still parsed as shown.
OPTION_VALUES = {"--runs": "5"}  # edge bench: 200 timed runs of every variant take a minute

PLACEHOLDER_SHAPE = re.compile(r"[A-Z][A-Z0-9_]*|.*://.*|.*/.*|.*\.[A-Za-z][A-Za-z0-9]*")


def stands_for_something(token: str) -> bool:
    """A file, device, URL or CAPITALS: what the reader replaces with their own."""
    return not token.startswith("-") and PLACEHOLDER_SHAPE.fullmatch(token) is not None


def in_repo(token: str) -> Path | None:
    """A relative path shipped in the repository (`edge infer models/.../sample-01.png`)."""
    if token.startswith("/") or not stands_for_something(token):
        return None
    path = REPO / token
    return path if path.exists() else None


def substitute(argv: Sequence[str], world: World) -> list[str]:
    out: list[str] = []
    for before, token in zip(["", *argv], argv, strict=False):
        option, equals, _ = token.partition("=")
        if token in PLACEHOLDERS:
            out.append(PLACEHOLDERS[token].make(world, argv))
        elif before in OPTION_VALUES:
            out.append(OPTION_VALUES[before])
        elif equals and option in OPTION_VALUES:
            out.append(f"{option}={OPTION_VALUES[option]}")
        elif (path := in_repo(token)) is not None:
            out.append(str(path))
        elif stands_for_something(token):
            raise LookupError(f"{token!r} has no entry in PLACEHOLDERS")
        else:
            out.append(token)
    return out


# ---------------------------------------------------------------------- what cannot run here

TENSORRT = importlib.util.find_spec("tensorrt") is not None

# Parsed, never run. Each entry: why.
SKIPPED = {
    ("tui",): "full-screen and keyboard-driven; tests/test_tui.py drives it headless with Textual's pilot",
}
if TENSORRT:  # without TensorRT they run here and must refuse with BACKEND_UNAVAILABLE
    SKIPPED[("models", "build")] = "builds TensorRT engines for minutes (tests/test_tensorrt.py)"
    SKIPPED[("models", "verify")] = "builds TensorRT engines for minutes (tests/test_tensorrt.py)"

# Long-running services: started as `python -m edge ...` subprocesses, ready when they say so
# (systemd's READY=1 on $NOTIFY_SOCKET, or the hub's health answering), then stopped with SIGTERM.
SERVICES = {("run",): "notify", ("sync", "run"): "notify", ("hub", "serve"): "http"}

# Typed at a prompt (hidden: a password twice).
STDIN = {("hub", "user", "add"): f"{PASSWORD}\n{PASSWORD}\n"}


# ---------------------------------------------------------------------- checks that need no run


def test_the_readme_shows_commands() -> None:
    """Guards the reader above: if it found nothing, every other test would pass vacuously."""
    assert len(EDGE_COMMANDS) >= 20
    assert {shown.inline for shown in EDGE_COMMANDS} == {True, False}
    assert ("edge", "demo") in {shown.argv for shown in EDGE_COMMANDS}
    unknown = [str(s) for s in COMMANDS if s.argv[0] != "edge" and not is_tool(s) and not is_setup(s)]
    assert not unknown, f"commands this test does not know how to check: {unknown}"


@pytest.mark.parametrize("shown", EDGE_COMMANDS, ids=str)
def test_every_edge_command_parses(shown: Shown) -> None:
    try:
        parse(shown.argv[1:])
    except click.UsageError as error:
        usage = error.ctx.get_usage() if error.ctx else ""
        pytest.fail(f"{shown}: {error.format_message()}\n{usage}", pytrace=False)


def test_every_placeholder_has_a_stand_in() -> None:
    tokens = {token for shown in EDGE_COMMANDS for token in shown.argv[1:]}
    unmapped = sorted(t for t in tokens - set(PLACEHOLDERS) if stands_for_something(t) and not in_repo(t))
    assert not unmapped, f"add these README placeholders to PLACEHOLDERS: {unmapped}"
    stale = sorted(set(PLACEHOLDERS) - tokens)
    assert not stale, f"PLACEHOLDERS the README no longer shows: {stale}"
    paths = {shown.argv[1:3] for shown in EDGE_COMMANDS} | {shown.argv[1:2] for shown in EDGE_COMMANDS}
    assert set(SKIPPED) <= paths, "SKIPPED names a command the README no longer shows"
    assert set(SERVICES) <= paths, "SERVICES names a command the README no longer shows"


def test_every_option_mentioned_exists() -> None:
    """`--option` anywhere in the README (prose, comments) is an edge option or a tool's."""
    tools = "".join(path.read_text() for path in (REPO / "tools").glob("*.py"))
    known = cli_options() | {"--help"}
    mentioned = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", README.read_text()))
    missing = sorted(o for o in mentioned if o not in known and f'"{o}"' not in tools)
    assert not missing, f"the README mentions options nothing has: {missing}"


def test_install_and_test_commands() -> None:
    """pip is not run here: the commands are checked against pyproject.toml and .ci/run."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = set(pyproject["project"]["optional-dependencies"])
    bash_lines = [line for block in readme_blocks("bash") for line in block.splitlines()]
    ci = [
        line
        for line in (REPO / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert ci[-1] in bash_lines, "the README must show the test command .ci/run runs, verbatim"
    assert ci[-1].endswith("python -m pytest")
    assert any(line.endswith("pip install -e . && edge demo") for line in bash_lines)
    assert "edge" in pyproject["project"]["scripts"]
    for shown in COMMANDS:
        if not is_setup(shown):
            continue
        if shown.argv[0] == "pip":
            assert shown.argv[1:3] == ("install", "-e"), shown
            spec = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", shown.argv[3])
            assert spec, f"{shown}: install the checkout, `.` or `.[extra]`"
            assert set((spec.group(1) or "").split(",")) - {""} <= extras, f"{shown}: no such extra"
        elif shown.argv[0] == ".":
            assert shown.argv[1] == ".venv/bin/activate", shown


@pytest.mark.parametrize("shown", [s for s in COMMANDS if is_tool(s)], ids=str)
def test_every_tool_command_names_a_tool_and_its_options(shown: Shown) -> None:
    """Not run (torch, hours of training): the module exists, knows each option, files exist."""
    module = shown.argv[2]
    assert module.startswith("tools."), shown
    source = REPO / (module.replace(".", "/") + ".py")
    assert source.is_file(), f"{shown}: no {source.relative_to(REPO)}"
    text = source.read_text()
    assert "def main(" in text or "__main__" in text, f"{shown}: {module} cannot be run with -m"
    for token in shown.argv[3:]:
        if token.startswith("--"):
            assert f'"{token}"' in text, f"{shown}: {module} has no {token}"
        elif "/" in token:
            assert (REPO / token).exists(), f"{shown}: no {token}"


def test_the_configuration_shown_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's TOML loads (unknown keys would be refused), and so do its EDGE_* examples."""
    blocks = readme_blocks("toml")
    assert blocks
    config = tmp_path / "edge.toml"
    for block in blocks:
        config.write_text(block)
        settings = load_settings(config)
        default = settings.models.default
        assert default is None or default in {path.name for path in MODELS.iterdir() if path.is_dir()}
    variables = re.findall(r"`(EDGE_[A-Z_]+)=([^`]+)`", README.read_text())
    assert variables
    for name, value in variables:
        monkeypatch.setenv(name, value)
    settings = load_settings(config)
    for name, value in variables:
        section, key = name.removeprefix("EDGE_").lower().split("__")
        assert str(getattr(getattr(settings, section), key)) == value, name


# ---------------------------------------------------------------------- running them


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def subprocess_env(role_env: dict[str, str]) -> dict[str, str]:
    """This interpreter's `python -m edge`, importing this checkout (a worktree or a clean clone)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("EDGE_", "WATCHDOG_"))
        and name not in ("NOTIFY_SOCKET", "STATE_DIRECTORY", "JOURNAL_STREAM")
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return {**env, **role_env}


_NUMBERS = itertools.count()


class Service:
    """`python -m edge ARGV` in the background, its output in a log file."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], world: World, ready: str) -> None:
        self.argv = list(argv)
        self.ready = ready
        self.log = world.root / f"service-{next(_NUMBERS)}.log"
        env = subprocess_env(env)
        self.notify: socket.socket | None = None
        if ready == "notify":
            name = f"edge-readme-{os.getpid()}-{next(_NUMBERS)}"  # abstract: no path length limit
            self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.notify.bind("\0" + name)
            self.notify.settimeout(0.2)
            env["NOTIFY_SOCKET"] = "@" + name
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edge", *self.argv],
                cwd=world.work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.url = f"http://127.0.0.1:{env.get('EDGE_HUB__PORT')}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"exited {self.process.returncode} before ready:\n{self.output()}")
            if self._is_ready():
                return
        raise AssertionError(f"not ready after {READY_TIMEOUT_S:.0f} s:\n{self.output()}")

    def _is_ready(self) -> bool:
        if self.notify is not None:
            try:
                return "READY=1" in self.notify.recv(4096).decode().splitlines()
            except TimeoutError:
                return False
        try:
            return httpx.get(self.url + "/v1/health", timeout=1).json().get("ok") is True
        except (httpx.HTTPError, ValueError):
            time.sleep(0.1)
            return False

    def stop(self) -> None:
        """SIGTERM, as systemd stops it: the process must end by itself, cleanly."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"still running 60 s after SIGTERM:\n{self.output()}") from None
        finally:
            if self.notify is not None:
                self.notify.close()
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        clean = code == 0 or (self.ready == "http" and code == -signal.SIGTERM)
        if not clean or "Traceback" in self.output():
            raise AssertionError(f"stopped with exit status {code}:\n{self.output()}")


def check_output(path: tuple[str, ...], argv: Sequence[str], code: int, out: str, err: str) -> None:
    """What a run must show beyond 'exit 0, no traceback', where the README promises it."""
    if path == ("doctor",):
        # One pass/warn/fail line per check; exit 0, 1 or 2 for the worst. A fresh data dir
        # warns (no agent has run yet): a warning is fine, a failing check on this machine is not.
        levels = [line.split()[0] for line in out.splitlines() if line[:4] in ("PASS", "WARN", "FAIL")]
        assert len(levels) >= 5, f"expected pass/warn/fail lines:\n{out}"
        assert "FAIL" not in levels, f"a check fails on this machine:\n{out}"
        assert code == (1 if "WARN" in levels else 0), f"exit {code} for the worst of {set(levels)}"
        return
    if path in (("models", "build"), ("models", "verify")):  # only run where TensorRT is absent
        assert code == 1, f"exit {code}"
        assert err.startswith("BACKEND_UNAVAILABLE: "), err
        return
    if path == ("infer",) and any("/ood/" in a for a in argv):  # the README shows a refusal
        assert code == 1, f"exit {code}"
        assert "OUT_OF_SCOPE: this does not look like" in out, out
        return
    if path in (("models", "calibrate"), ("models", "prior")) and "--reset" not in argv:
        # A fresh data directory has neither 30 cases per class nor 30 results: the refusal the
        # README names, which proves the command reached its data.
        assert code == 1, f"exit {code}"
        assert err.startswith(("CALIBRATION_TOO_FEW_CASES: ", "PRIOR_TOO_FEW_RESULTS: ")), err
        return
    assert code == 0, f"exit {code}\n{out}\n{err}"
    assert out.strip() or err.strip(), "printed nothing"
    if "--help" in argv:
        assert out.startswith("Usage: edge"), out
    if path == ("infer",) and "--json" in argv:
        records = [json.loads(line) for line in out.splitlines()]
        assert len(records) == sum(Path(a).is_file() for a in argv[1:]), out
        assert {r["status"] for r in records} == {"ok"}, records
    if path == ("hub", "enroll-code"):
        assert re.fullmatch(r"\S{8,}\n", out), out


def _too_long(signum: int, frame: object) -> None:
    raise TimeoutError(f"still running after {ONE_SHOT_TIMEOUT_S} s: a service? add it to SERVICES")


def run_in_process(argv: Sequence[str], env: dict[str, str], stdin: str | None) -> tuple[int, str, str]:
    """One-shot commands run in this process (one import, not one per command)."""
    previous = signal.signal(signal.SIGALRM, _too_long)
    signal.alarm(ONE_SHOT_TIMEOUT_S)
    try:
        result = CliRunner().invoke(cli, list(argv), prog_name="edge", env=env, input=stdin)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        assert result.exc_info is not None
        trace = "".join(traceback.format_exception(*result.exc_info))
        raise AssertionError(f"raised {result.exception!r}\n{result.output}\n{trace}")
    assert "Traceback (most recent call last)" not in result.output, result.output
    return result.exit_code, result.stdout, result.stderr


@contextlib.contextmanager
def services() -> Iterator[list[Service]]:
    running: list[Service] = []
    try:
        yield running
    finally:
        for service in running:
            with contextlib.suppress(AssertionError):
                service.stop()


@pytest.mark.slow
def test_every_readme_command_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In the README's order (the hub's commands come before the device's enrolment there)."""
    world = World(tmp_path, free_port())
    monkeypatch.chdir(world.work)
    failures: list[str] = []
    done: dict[tuple[str, ...], str] = {}  # argv as run -> how
    with services() as running:
        for shown in EDGE_COMMANDS:
            try:
                argv = substitute(shown.argv[1:], world)
                path = parse(argv)
                if tuple(argv) in done:
                    continue  # shown twice (a fenced block and the prose): run once
                if path in SKIPPED:
                    done[tuple(argv)] = f"parsed only   {shown}: {SKIPPED[path]}"
                    continue
                env = world.role(path)
                if path in SERVICES:
                    service = Service(argv, env, world, SERVICES[path])
                    running.append(service)
                    service.wait_ready()
                    if path == ("hub", "serve"):  # stays up for the device's sync commands
                        world.hub_url = service.url
                        # "then open http://HUB:8720/review/": a browser lands on the login page.
                        page = httpx.get(
                            service.url + "/review/",
                            headers={"Accept": "text/html"},
                            follow_redirects=True,
                            timeout=10,
                        )
                        assert page.status_code == 200, page.status_code
                        assert page.headers["content-type"].startswith("text/html")
                        assert page.url.path.endswith("/login"), page.url
                    else:
                        running.remove(service)
                        service.stop()
                    done[tuple(argv)] = f"started       {shown}"
                    continue
                code, out, err = run_in_process(argv, env, STDIN.get(path))
                check_output(path, argv, code, out, err)
                if path == ("hub", "enroll-code"):
                    world.code = out.strip()
                done[tuple(argv)] = f"ran           {shown}"
            except (AssertionError, LookupError, click.UsageError) as error:
                message = error.format_message() if isinstance(error, click.UsageError) else str(error)
                failures.append(f"{shown}: {message}")
        for service in list(running):
            running.remove(service)
            try:
                service.stop()
            except AssertionError as error:
                failures.append(f"`edge {shlex.join(service.argv)}`: {error}")
    print("\n".join(done.values()))
    assert not failures, "\n\n".join(failures)
