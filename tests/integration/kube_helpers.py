"""kmock's fake Kubernetes API server for the integration tests (see ``../shared/LIBRARIES.md``):
served from its own event loop in a thread, so the tests stay synchronous, as the provider is."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import kmock
import kmock._internal.parsing as kmock_parsing


class FakeApiServer:
    """kmock's KubernetesEmulator on a free loopback port, served from a background loop."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="kmock")
        self.url = ""
        self.emulator: Any = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
            self.emulator = emulator
            # kmock lists only resources it holds objects of, or that are declared; a real server
            # answers an empty list, so declare every resource the backend lists.
            for resource in ("v1/namespaces", "v1/pods", "v1/secrets", "v1/services",
                             "apps/v1/deployments", "discovery.k8s.io/v1/endpointslices"):
                emulator.resources[resource] = {}
            self.url = str(server.url).rstrip("/")
            self._started.set()
            await self._stop.wait()

    def start(self) -> FakeApiServer:
        self._thread.start()
        assert self._started.wait(10), "kmock did not start"
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

    def react(self, request: str, *payloads: Any) -> None:
        """Add a kmock reaction; the DSL is not thread-safe, so it runs on the server's loop."""
        async def add() -> None:
            view = self.emulator[request]
            for p in payloads:
                view = view << p
        asyncio.run_coroutine_threadsafe(add(), self._loop).result(5)


def _parse_path_with_namespaces(original: Any) -> Any:
    """kmock 0.8 reads ``/api/v1/namespaces[/NAME]`` as a namespace prefix with no resource and
    fails with a 500 (it cannot serve the Namespace resource itself); parse those two paths as
    the cluster-scoped ``namespaces`` resource, and leave every other path to kmock."""
    def parse_path(path: str) -> Any:
        parts = path.strip("/").split("/")
        if parts[:3] == ["api", "v1", "namespaces"] and len(parts) in (3, 4):
            return kmock_parsing.ParsedPath("", "v1", "namespaces", None,
                                            parts[3] if len(parts) == 4 else None, None)
        return original(path)
    return parse_path
