"""A TCP proxy that breaks things on purpose, between a device and its hub (loopback tests).

Per connection it picks, at random: pass cleanly; refuse (accept, then close at once); delay the
request; trickle the response a few bytes at a time; or cut the connection *after* the request
reached the hub but before the device hears the answer (the hub committed; the device must retry
and the hub must not store twice). Counts bytes each way, for bytes-on-the-wire figures.
"""

from __future__ import annotations

import asyncio
import random
import threading
from dataclasses import dataclass, field


@dataclass
class Faults:
    refuse: float = 0.0
    delay: float = 0.0
    trickle: float = 0.0
    cut_after_request: float = 0.0
    delay_s: tuple[float, float] = (0.05, 0.6)


@dataclass
class ProxyStats:
    connections: int = 0
    to_hub: int = 0
    to_device: int = 0
    faults: dict[str, int] = field(default_factory=dict)


class FaultProxy:
    def __init__(self, upstream_port: int, faults: Faults, seed: int = 0) -> None:
        self.upstream_port = upstream_port
        self.faults = faults
        self.stats = ProxyStats()
        self.port = 0
        self._rng = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="faultproxy")

    def start(self) -> FaultProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    def _pick(self) -> str:
        roll = self._rng.random()
        for name in ("refuse", "delay", "trickle", "cut_after_request"):
            chance = getattr(self.faults, name)
            if roll < chance:
                return name
            roll -= chance
        return "clean"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        fault = self._pick()
        self.stats.connections += 1
        self.stats.faults[fault] = self.stats.faults.get(fault, 0) + 1
        if fault == "refuse":
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        if fault == "delay":
            await asyncio.sleep(self._rng.uniform(*self.faults.delay_s))
        request_sent = asyncio.Event()

        async def to_hub() -> None:
            try:
                while data := await reader.read(65536):
                    self.stats.to_hub += len(data)
                    up_writer.write(data)
                    await up_writer.drain()
                    request_sent.set()
            except (ConnectionError, OSError):
                pass
            finally:
                up_writer.close()

        async def to_device() -> None:
            try:
                while data := await up_reader.read(65536):
                    if fault == "cut_after_request":
                        writer.transport.abort()  # the hub answered (it committed); the device never hears
                        return
                    if fault == "trickle":
                        for start in range(0, len(data), 64):
                            writer.write(data[start : start + 64])
                            await writer.drain()
                            await asyncio.sleep(0.01)
                    else:
                        writer.write(data)
                        await writer.drain()
                    self.stats.to_device += len(data)
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        await asyncio.gather(to_hub(), to_device(), return_exceptions=True)
