"""Encryption at rest (issue 17 item 5): is the data folder on encrypted storage, as `edge doctor`
says and `edge run` enforces. Each layout is a small fake of /sys, /dev and the mount table."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge import log as edge_log
from edge.cli import cli
from edge.cli.base import EXIT_NEEDS_A_PERSON
from edge.config import Settings, load_settings
from edge.errors import Code, EdgeError
from edge.operations import doctor, storage_encryption
from edge.operations.agent import Agent
from edge.operations.storage_encryption import Host, inspect, mount_of, parse_mountinfo


class FakeHost:
    """A sysfs tree laid out like the kernel's (devices/, class/block and dev/block links), /dev
    nodes and mapper links, a mountinfo and a swaps file."""

    def __init__(self, root: Path) -> None:
        self.sys = root / "sys"
        self.dev = root / "dev"
        self.mountinfo = root / "mountinfo"
        self.swaps = root / "swaps"
        for folder in (self.sys / "class" / "block", self.sys / "dev" / "block", self.dev / "mapper"):
            folder.mkdir(parents=True)
        self.lines = ["27 1 254:0 / / rw,relatime - ext4 /dev/vda rw"]
        self.swap_lines = ["Filename\tType\tSize\tUsed\tPriority"]
        self.fscrypt: set[Path] = set()
        self.block("vda", "254:0")

    def block(
        self,
        name: str,
        number: str,
        *,
        uuid: str | None = None,
        mapped: str | None = None,
        slaves: tuple[str, ...] = (),
        parent: str | None = None,
        backing: Path | None = None,
    ) -> None:
        base = (
            (self.sys / "class" / "block" / parent).resolve() if parent else self.sys / "devices" / "virtual"
        )
        node = base / name
        node.mkdir(parents=True)
        (node / "dev").write_text(number + "\n")
        if parent:
            (node / "partition").write_text("1\n")
        if uuid is not None:
            (node / "dm").mkdir()
            (node / "dm" / "uuid").write_text(uuid + "\n")
            (node / "dm" / "name").write_text((mapped or name) + "\n")
        (node / "slaves").mkdir()
        for slave in slaves:
            (node / "slaves" / slave).symlink_to(self.sys / "class" / "block" / slave)
        if backing is not None:
            (node / "loop").mkdir()
            (node / "loop" / "backing_file").write_text(f"{backing}\n")
        (self.sys / "class" / "block" / name).symlink_to(node)
        (self.sys / "dev" / "block" / number).symlink_to(node)
        (self.dev / name).touch()
        if mapped:
            (self.dev / "mapper" / mapped).symlink_to(f"../{name}")

    def mount(self, point: Path | str, number: str, fs_type: str, source: str, options: str = "rw") -> None:
        escaped = str(point).replace(" ", "\\040")
        mount_id = 40 + len(self.lines)
        self.lines.append(
            f"{mount_id} 27 {number} / {escaped} rw,relatime shared:1 - {fs_type} {source} {options}"
        )

    def swap(self, path: str, kind: str) -> None:
        self.swap_lines.append(f"{path}\t{kind}\t1048572\t0\t-2")

    @property
    def host(self) -> Host:
        self.mountinfo.write_text("\n".join(self.lines) + "\n")
        self.swaps.write_text("\n".join(self.swap_lines) + "\n")
        return Host(self.sys, self.mountinfo, self.dev, self.swaps, fscrypt=lambda p: p in self.fscrypt)


@pytest.fixture
def fake(tmp_path: Path) -> FakeHost:
    return FakeHost(tmp_path / "host")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = (tmp_path / "mnt").resolve()
    (folder / "edge").mkdir(parents=True)
    return folder


def settings_for(data: Path, **overrides: object) -> Settings:
    return load_settings(data_dir=data / "edge", **overrides)


def only(fake: FakeHost, data: Path) -> storage_encryption.Verdict:
    (verdict,) = inspect(settings_for(data), fake.host)
    return verdict


def luks(fake: FakeHost) -> None:
    fake.block("nvme0n1", "259:0")
    fake.block("nvme0n1p2", "259:2", parent="nvme0n1")
    fake.block(
        "dm-0",
        "253:0",
        uuid="CRYPT-LUKS2-4b1f0c8a9d2e4f6a8b0c1d2e3f4a5b6c-root",
        mapped="root",
        slaves=("nvme0n1p2",),
    )


@pytest.mark.security
def test_a_plain_partition_is_named_and_not_encrypted(fake: FakeHost, data: Path) -> None:
    fake.block("sda", "8:0")
    fake.block("sda1", "8:1", parent="sda")
    fake.mount(data, "8:1", "ext4", "/dev/sda1")
    verdict = only(fake, data)
    assert not verdict.protected
    assert verdict.sentence().startswith(f"data folder {data / 'edge'} is on /dev/sda1, not encrypted: ")
    assert "no dm-crypt layer down to /dev/sda" in verdict.sentence()
    assert "Encryption at rest" in verdict.sentence()


def test_luks_on_a_partition_is_encrypted(fake: FakeHost, data: Path) -> None:
    luks(fake)
    fake.mount(data, "253:0", "ext4", "/dev/mapper/root")
    verdict = only(fake, data)
    assert verdict.protected
    assert (
        verdict.sentence()
        == f"data folder {data / 'edge'} is on /dev/mapper/root: LUKS2 (dm-crypt) as /dev/mapper/root"
    )


def test_lvm_on_luks_is_encrypted_and_lvm_over_a_plain_disk_too_is_not(fake: FakeHost, data: Path) -> None:
    luks(fake)
    fake.block("dm-1", "253:1", uuid="LVM-abcdef", mapped="vg-data", slaves=("dm-0",))
    fake.mount(data, "253:1", "xfs", "/dev/mapper/vg-data")
    assert only(fake, data).state == "encrypted"

    fake.block("sdb", "8:16")
    fake.block("dm-2", "253:2", uuid="LVM-spanning", mapped="vg-wide", slaves=("dm-0", "sdb"))
    fake.mount(data, "253:2", "xfs", "/dev/mapper/vg-wide")  # mounted later on the same point: wins
    verdict = only(fake, data)
    assert verdict.state == "plain"
    assert "/dev/dm-2 spans /dev/sdb, which has no dm-crypt layer" in verdict.sentence()


@pytest.mark.security
@pytest.mark.parametrize(
    "uuid", ["CRYPT-VERITY-0123-root", "CRYPT-INTEGRITY-0123-data", "CRYPT-SUBDEV-0123-x_dif"]
)
def test_cryptsetup_devices_that_encrypt_nothing_do_not_count(fake: FakeHost, data: Path, uuid: str) -> None:
    fake.block("sda", "8:0")
    fake.block("dm-3", "253:3", uuid=uuid, mapped="checked", slaves=("sda",))
    fake.mount(data, "253:3", "ext4", "/dev/mapper/checked")
    assert only(fake, data).state == "plain"


def test_btrfs_anonymous_device_is_followed_through_its_source(fake: FakeHost, data: Path) -> None:
    luks(fake)
    fake.mount(data, "0:45", "btrfs", "/dev/mapper/root", "rw,subvol=/@edge")
    assert only(fake, data).state == "encrypted"


def test_a_container_overlay_is_judged_by_its_upper_directory(
    fake: FakeHost, data: Path, tmp_path: Path
) -> None:
    upper = (tmp_path / "docker" / "upper").resolve()
    upper.mkdir(parents=True)
    luks(fake)
    fake.mount(upper.parent, "253:0", "ext4", "/dev/mapper/root")
    fake.mount(data, "0:50", "overlay", "overlay", f"rw,lowerdir=/l1:/l2,upperdir={upper},workdir=/w")
    assert only(fake, data).state == "encrypted"


def test_memory_and_file_system_encryption(fake: FakeHost, data: Path) -> None:
    fake.mount(data, "0:23", "tmpfs", "tmpfs")
    assert only(fake, data).state == "memory"
    assert "nothing of it outlives a power cut" in only(fake, data).sentence()
    fake.mount(data, "0:60", "ecryptfs", "/home/.ecryptfs/edge/.Private")
    assert only(fake, data).sentence().endswith("eCryptfs")
    fake.mount(data, "254:0", "ext4", "/dev/vda")
    assert only(fake, data).state == "plain"
    fake.fscrypt.add(data / "edge")
    assert only(fake, data).detail == "fscrypt (per-file encryption)"


def test_a_network_share_cannot_be_confirmed(fake: FakeHost, data: Path) -> None:
    fake.mount(data, "0:70", "nfs4", "archive:/export/edge")
    verdict = only(fake, data)
    assert verdict.state == "unknown"
    assert not verdict.protected
    assert (
        "on archive:/export/edge, encryption cannot be confirmed: a nfs4 file system, not a block device"
        in verdict.sentence()
    )


def test_mount_points_deepest_wins_and_escapes_are_read(tmp_path: Path) -> None:
    mounts = parse_mountinfo(
        "27 1 254:0 / / rw - ext4 /dev/vda rw\n"
        "40 27 8:1 / /srv/clinic\\040data rw shared:1 master:2 - ext4 /dev/sda1 rw\n"
        "41 27 8:2 / /srv/clinic rw - ext4 /dev/sda2 rw\n"
        "garbage line\n"
    )
    assert [m.source for m in mounts] == ["/dev/vda", "/dev/sda1", "/dev/sda2"]
    from pathlib import PurePosixPath

    assert mount_of(PurePosixPath("/srv/clinic data/edge"), mounts).source == "/dev/sda1"  # type: ignore[union-attr]
    assert mount_of(PurePosixPath("/srv/clinic/edge"), mounts).source == "/dev/sda2"  # type: ignore[union-attr]
    assert mount_of(PurePosixPath("/srv/clinical"), mounts).source == "/dev/vda"  # type: ignore[union-attr]


def test_a_data_folder_not_made_yet_is_judged_where_it_will_be(fake: FakeHost, data: Path) -> None:
    luks(fake)
    fake.mount(data, "253:0", "ext4", "/dev/mapper/root")
    (verdict,) = inspect(load_settings(data_dir=data / "not" / "yet"), fake.host)
    assert verdict.state == "encrypted"


def test_swap_and_a_drop_folder_outside_the_data_folder_are_checked(
    fake: FakeHost, data: Path, tmp_path: Path
) -> None:
    luks(fake)
    fake.mount(data, "253:0", "ext4", "/dev/mapper/root")
    fake.block("sda", "8:0")
    fake.block("sda3", "8:3", parent="sda")
    fake.swap("/dev/sda3", "partition")
    fake.swap("/dev/zram0", "partition")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    settings = settings_for(data, watch={"enabled": True, "inbox": inbox})
    verdicts = {v.label: v for v in inspect(settings, fake.host)}
    assert verdicts[f"data folder {data / 'edge'}"].state == "encrypted"
    assert verdicts[f"drop folder {inbox}"].state == "plain"  # on the fake's plain root, /dev/vda
    assert verdicts["swap /dev/sda3"].state == "plain"
    assert "swap /dev/zram0" not in verdicts  # compressed RAM: nothing to say


def test_a_loop_device_is_as_safe_as_its_backing_file(fake: FakeHost, data: Path, tmp_path: Path) -> None:
    image = tmp_path / "edge.img"
    image.touch()
    fake.block("loop0", "7:0", backing=image)
    fake.mount(data, "7:0", "ext4", "/dev/loop0")
    assert only(fake, data).state == "plain"  # the image sits on the plain root
    luks(fake)
    fake.mount(tmp_path.resolve(), "253:0", "ext4", "/dev/mapper/root")
    fake.mount(data, "7:0", "ext4", "/dev/loop0")
    assert only(fake, data).state == "encrypted"


@pytest.mark.security
def test_doctor_warns_by_default_fails_when_required_and_passes_when_accepted(
    fake: FakeHost, data: Path
) -> None:
    fake.mount(data, "254:0", "ext4", "/dev/vda")
    host = fake.host
    [(level, message)] = storage_encryption.doctor_lines(settings_for(data), host)
    assert level == "warn"
    assert "not encrypted" in message
    required = settings_for(data, security={"require_encrypted_storage": True})
    assert storage_encryption.doctor_lines(required, host)[0][0] == "fail"
    accepted = settings_for(data, security={"require_encrypted_storage": False})
    assert storage_encryption.doctor_lines(accepted, host)[0] == (
        "pass",
        message + " (accepted: [security] require_encrypted_storage = false)",
    )
    luks(fake)
    fake.mount(data, "253:0", "ext4", "/dev/mapper/root")
    assert storage_encryption.doctor_lines(required, fake.host)[0][0] == "pass"


def test_doctor_runs_the_check_on_this_machine(settings: Settings) -> None:
    """On the real /sys and mount table: one line per place, never a crash."""
    checks = [c for c in doctor.run_checks(settings) if c.name == "encryption"]
    assert checks
    assert all("crashed" not in c.message for c in checks)
    assert checks[0].message.startswith(f"data folder {settings.data_dir} ")


@pytest.mark.security
def test_the_agent_refuses_to_start_on_plain_storage_when_required(
    fake: FakeHost, data: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake.mount(data, "254:0", "ext4", "/dev/vda")
    host = fake.host
    monkeypatch.setattr(storage_encryption, "Host", lambda: host)
    required = settings_for(data, security={"require_encrypted_storage": True})
    with pytest.raises(EdgeError) as refused:
        Agent(required).run(install_signals=False)
    assert refused.value.code is Code.STORAGE_NOT_ENCRYPTED
    assert "is on /dev/vda, not encrypted" in refused.value.message
    assert not (data / "edge" / "edge.db").exists()  # refused before anything was opened

    config = data / "edge.toml"
    config.write_text(f'data_dir = "{data / "edge"}"\n[security]\nrequire_encrypted_storage = true\n')
    monkeypatch.setattr(edge_log, "configure", lambda level=0: None)  # keep caplog's handler
    caplog.set_level("INFO")
    result = CliRunner().invoke(cli, ["--config", str(config), "run", "--no-dicom", "--no-watch"])
    assert result.exit_code == EXIT_NEEDS_A_PERSON  # not restarted by systemd: a person must act
    assert not (data / "edge" / "agent.lock").exists()
    for service in (["sync", "run"], ["pacs", "run"]):  # the other services holding patient data
        caplog.clear()
        result = CliRunner().invoke(cli, ["--config", str(config), *service])
        assert result.exit_code == EXIT_NEEDS_A_PERSON, service
        assert "STORAGE_NOT_ENCRYPTED" in caplog.text, service  # the journal's coded line


def test_the_agent_warns_by_default_and_is_silent_when_accepted(
    fake: FakeHost, data: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake.mount(data, "254:0", "ext4", "/dev/vda")
    host = fake.host
    with caplog.at_level(logging.WARNING, logger="edge.operations.storage_encryption"):
        storage_encryption.enforce(settings_for(data), host)
        assert "STORAGE_NOT_ENCRYPTED: data folder" in caplog.text
        caplog.clear()
        storage_encryption.enforce(settings_for(data, security={"require_encrypted_storage": False}), host)
        assert caplog.text == ""


def test_an_uninspectable_host_is_reported_not_crashed(data: Path, tmp_path: Path) -> None:
    host = Host(
        tmp_path / "no-sys",
        tmp_path / "no-mountinfo",
        tmp_path / "no-dev",
        tmp_path / "no-swaps",
        lambda p: False,
    )
    [(level, message)] = storage_encryption.doctor_lines(settings_for(data), host)
    assert level == "warn"
    assert "encryption cannot be confirmed" in message
    with pytest.raises(EdgeError):
        storage_encryption.enforce(settings_for(data, security={"require_encrypted_storage": True}), host)


def test_the_setting_reads_from_toml_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_settings().security.require_encrypted_storage == "warn"
    monkeypatch.setenv("EDGE_SECURITY__REQUIRE_ENCRYPTED_STORAGE", "true")
    assert load_settings().security.require_encrypted_storage is True
    monkeypatch.setenv("EDGE_SECURITY__REQUIRE_ENCRYPTED_STORAGE", "sometimes")
    with pytest.raises(EdgeError) as refused:
        load_settings()
    assert refused.value.code is Code.CONFIG_INVALID
