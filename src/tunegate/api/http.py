"""The HTTP/1.1 connection protocol the server runs on: uvicorn's h11 protocol plus a header timeout.

Owns closing connections whose request headers do not arrive in time. uvicorn times out idle
keep-alive connections but not a client that opens a connection and sends its headers a byte at a
time (slowloris): each such connection would stay open forever. Body timeouts are in `api/guard.py`.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def header_timeout_protocol(seconds: float) -> type[asyncio.Protocol]:
    """An H11Protocol class that closes a connection still waiting for request headers after `seconds`."""

    class HeaderTimeoutH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(seconds, self._header_timeout)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            # IDLE: the request line and headers are not complete yet (a new request on a kept-alive
            # connection too); anything later means the headers are in and the body timeouts apply.
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self._arm()
            else:
                self._disarm()

        def on_response_complete(self) -> None:
            self._disarm()  # the keep-alive timeout takes over until the next request starts
            super().on_response_complete()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutH11Protocol
