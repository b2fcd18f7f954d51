"""N hub processes on one PostgreSQL behind nginx: a programme's hub on one machine.

    python -m tools.hub_cluster --nodes 3 [--postgres URL] [--port 8080]   # until Ctrl-C

Each node is `edge hub serve --bind 127.0.0.1 --port P` with its own hub folder (nothing on disk
is shared: what a request needs is in PostgreSQL), `[hub] nodes = N`. nginx (the distribution's
package) runs unprivileged from its own configuration in a temporary folder, no system service,
and fails a request over to the next node when a node refuses the connection, times out or
answers 502/503/504, POSTs included (`non_idempotent`): every device write is idempotent (a
batch is keyed by (device, uuid), an upload by (device, record, kind), a chunk by its offset),
and a retried request whose first copy reached a node before it died is answered `REPLAYED`
(its nonce is stored), which the device treats as "send again, newly signed".
Without --postgres a throwaway cluster is started (tools/postgres_temp.py).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx

from tools import postgres_temp

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {folder}/body;
  proxy_temp_path {folder}/proxy;
  fastcgi_temp_path {folder}/fastcgi;
  uwsgi_temp_path {folder}/uwsgi;
  scgi_temp_path {folder}/scgi;
  client_max_body_size 3m;  # the protocol's 2 MB body and 256 KB chunks, with headers
  upstream hub {{
{servers}
    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://hub;  # no URI part: the path (and query) the device signed, unchanged
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_request_buffering on;  # the whole body is kept, so a failed-over POST is resent whole
      proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;
      proxy_next_upstream_tries 3;
      proxy_connect_timeout 2s;
      proxy_read_timeout 60s;
    }}
  }}
}}
"""


def nginx_available() -> bool:
    return Path(NGINX).exists()


class HubCluster:
    """Start with `with HubCluster(3, url) as cluster:`; `cluster.url` is nginx's address."""

    def __init__(self, nodes: int, database_url: str, port: int = 0, folder: Path | None = None) -> None:
        self.database_url = database_url
        self.own_folder = folder is None  # made here: removed by `stop`
        self.folder = folder or Path(tempfile.mkdtemp(prefix="edge-hub-cluster-"))
        self.ports = [postgres_temp.free_port() for _ in range(nodes)]
        self.port = port or postgres_temp.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * nodes
        self.cpu_seconds = [0.0] * nodes  # of killed instances; live ones are read on demand
        self.kills = 0
        self.nginx: subprocess.Popen[bytes] | None = None
        self.nginx_folder: Path | None = None  # its own temporary folder when run as `nobody`

    # ------------------------------------------------------------------ nodes

    def node_env(self, index: int) -> dict[str, str]:
        return {
            **os.environ,
            "EDGE_HUB__DIR": str(self.folder / f"node{index}"),
            "EDGE_HUB__DATABASE_URL": self.database_url,
            "EDGE_HUB__NODES": str(len(self.ports)),
            # A fleet of simulated devices shares one address: the per-address enrolment bucket
            # and the per-device buckets must not be what is measured.
            "EDGE_HUB__RATE_PER_S": "100000",
            "EDGE_HUB__RATE_BURST": "100000",
            "EDGE_STORE__MIN_FREE_MB": "0",
        }

    def start_node(self, index: int) -> None:
        node_dir = self.folder / f"node{index}"
        node_dir.mkdir(parents=True, exist_ok=True)
        log = (self.folder / f"node{index}.log").open("ab")
        command = [sys.executable, "-m", "edge", "--data-dir", str(node_dir), "hub", "serve"]
        command += ["--bind", "127.0.0.1", "--port", str(self.ports[index])]
        self.processes[index] = subprocess.Popen(
            command, env=self.node_env(index), stdout=log, stderr=log, start_new_session=True
        )

    def wait_node(self, index: int, timeout_s: float = 60) -> None:
        _wait_health(f"http://127.0.0.1:{self.ports[index]}", timeout_s, self.processes[index])

    def kill_node(self, index: int) -> None:
        """SIGKILL: no drain, no goodbye (a crash or a power cut of that machine)."""
        process = self.processes[index]
        if process is None or process.poll() is not None:
            return
        self.cpu_seconds[index] += _cpu_of(process.pid)
        process.send_signal(signal.SIGKILL)
        process.wait()
        self.processes[index] = None
        self.kills += 1

    def alive(self, index: int) -> bool:
        process = self.processes[index]
        return process is not None and process.poll() is None

    def node_cpu_seconds(self) -> list[float]:
        return [
            self.cpu_seconds[i] + (_cpu_of(p.pid) if p is not None and p.poll() is None else 0.0)
            for i, p in enumerate(self.processes)
        ]

    # ------------------------------------------------------------------ nginx

    def start_nginx(self) -> None:
        if os.geteuid() == 0:
            # Unprivileged, as a service account would run it: `nobody`, in a folder of its own
            # (the cluster's folder may sit under one only root can enter, e.g. pytest's).
            folder = Path(tempfile.mkdtemp(prefix="edge-nginx-"))
            shutil.chown(folder, "nobody")
            self.nginx_folder = folder
        else:
            folder = self.folder / "nginx"
            folder.mkdir(parents=True, exist_ok=True)
        servers = "\n".join(f"    server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;" for p in self.ports)
        conf = folder / "nginx.conf"
        conf.write_text(NGINX_CONF.format(folder=folder, servers=servers, port=self.port))
        command = [NGINX, "-p", str(folder), "-c", str(conf), "-e", str(folder / "error.log")]
        if os.geteuid() == 0:
            shutil.chown(conf, "nobody")
            command = ["runuser", "-u", "nobody", "--", *command]
        log = (self.folder / "nginx.log").open("ab")
        self.nginx = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)

    # ------------------------------------------------------------------ whole

    def start(self) -> HubCluster:
        # The first node makes the schema; the others start together (db.schema_lock orders them).
        for index in range(len(self.ports)):
            self.start_node(index)
        for index in range(len(self.ports)):
            self.wait_node(index)
        self.start_nginx()
        _wait_health(self.url, 30, self.nginx)
        return self

    def stop(self) -> None:
        for process in [self.nginx, *self.processes]:
            if process is not None and process.poll() is None:
                process.terminate()
        for process in [self.nginx, *self.processes]:
            if process is not None:
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if self.nginx_folder is not None:
            shutil.rmtree(self.nginx_folder, ignore_errors=True)
        if self.own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> HubCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()


def _cpu_of(pid: int) -> float:
    """User + system CPU seconds of a process and its waited-for children (/proc/PID/stat)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / CLOCK_TICKS


def _wait_health(url: str, timeout_s: float, process: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url}: the process exited ({process.returncode}) before answering")
        try:
            if httpx.get(url + "/v1/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--postgres", help="a PostgreSQL URL (default: a throwaway cluster)")
    parser.add_argument("--port", type=int, default=8080, help="nginx's port on 127.0.0.1")
    args = parser.parse_args()
    if not nginx_available():
        sys.exit("nginx is not installed: apt-get install --no-install-recommends nginx")

    def serve(url: str) -> None:
        with HubCluster(args.nodes, url, args.port) as cluster:
            print(f"{args.nodes} hub nodes behind nginx at {cluster.url} (files in {cluster.folder})")
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()

    if args.postgres:
        serve(args.postgres)
    else:
        with postgres_temp.throwaway_postgres() as url:
            serve(url)


if __name__ == "__main__":
    main()
