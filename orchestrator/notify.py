"""The systemd notification protocol (sd_notify), in the dozen lines it takes.

systemd passes ``NOTIFY_SOCKET``: the path of a datagram socket, or an abstract name written
with a leading ``@``. Each message is one datagram of ``KEY=VALUE`` lines. Without the
variable (a run from a shell, the tests that do not ask for it) every call is a no-op, and a
failed send is logged once and never fatal: systemd's bookkeeping must not take posting down.

``WATCHDOG_USEC`` (with ``WATCHDOG_PID``) asks for a ``WATCHDOG=1`` at least that often. The
daemon sends it from a task on its own event loop, so a loop that stops turning is restarted
by systemd instead of sitting there holding the state lock.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

from .logs import fields

log = logging.getLogger(__name__)


def notify_address(env: Mapping[str, str]) -> str | bytes | None:
    raw = env.get("NOTIFY_SOCKET", "")
    if not raw:
        return None
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    return raw


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between pings systemd asked for, or None when no watchdog is configured."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    owner = env.get("WATCHDOG_PID")
    if usec <= 0 or (owner and owner != str(pid)):
        return None
    return usec / 1_000_000


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.address = notify_address(env)
        self.watchdog = watchdog_interval(env, os.getpid())
        self._sock: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **values: object) -> bool:
        """One datagram with ``KEY=value`` per keyword; True if it was handed to the kernel."""
        if self.address is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in values.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message, self.address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning(
                    "cannot notify systemd: %s",
                    exc.strerror or exc,
                    extra=fields("systemd.notify_failed"),
                )
            return False
        return True

    def ready(self, status: str) -> None:
        self.send(READY=1, STATUS=status)

    def status(self, status: str) -> None:
        self.send(STATUS=status)

    def reloading(self) -> None:
        # systemd 253+ checks MONOTONIC_USEC against the SIGHUP; 252 ignores it harmlessly.
        self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self, status: str) -> None:
        self.send(STOPPING=1, STATUS=status)

    def ping(self) -> None:
        self.send(WATCHDOG=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
