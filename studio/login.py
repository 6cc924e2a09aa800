"""The login check for LACKER_AUTH, with a throttle: after MAX_FAILURES wrong passwords within WINDOW_S from one
client for one user name, that client is refused for LOCKOUT_S, the right password included, while other clients
can still log in.

Gradio calls the check as `auth(user, password)` and does not pass the request, so the client's address comes
from `ClientAddress`, an ASGI middleware that notes it for the request being handled. Behind a proxy (Spaces)
every client has the proxy's address and the throttle is in effect per user name.
"""

from __future__ import annotations

import contextvars
import hmac
import logging
import threading
import time
from collections import deque

logger = logging.getLogger(__name__)

MAX_FAILURES = 5
WINDOW_S = 60.0
LOCKOUT_S = 30.0

_client_address: contextvars.ContextVar[str] = contextvars.ContextVar("lacker_client_address", default="unknown")


class ClientAddress:
    """ASGI middleware: the address of the client whose request is being handled, for `LoginThrottle`."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        client = scope.get("client")
        token = _client_address.set(client[0] if client else "unknown")
        try:
            await self.app(scope, receive, send)
        finally:
            _client_address.reset(token)


class LoginThrottle:
    """`auth=` for gradio's launch: True for the right user and password unless this client is locked out."""

    def __init__(self, user: str, password: str, clock=time.monotonic):
        self._user, self._password = user.encode(), password.encode()
        self._clock = clock
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._locked_until: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def __call__(self, user: str, password: str) -> bool:
        key = (user, _client_address.get())
        now = self._clock()
        with self._lock:
            self._forget_before(now)
            if self._locked_until.get(key, 0.0) > now:
                return False
            # Both compared in full and in constant time, so neither a wrong name nor a wrong password is faster.
            right = hmac.compare_digest(user.encode(), self._user) & hmac.compare_digest(password.encode(),
                                                                                       self._password)
            if right:
                self._failures.pop(key, None)
                return True
            failures = self._failures.setdefault(key, deque())
            failures.append(now)
            if len(failures) >= MAX_FAILURES:
                self._locked_until[key] = now + LOCKOUT_S
                failures.clear()
                logger.warning("%d wrong passwords for %r from %s within %.0f s; refusing that client for %.0f s",
                               MAX_FAILURES, user, key[1], WINDOW_S, LOCKOUT_S)
            return False

    def _forget_before(self, now: float) -> None:
        """Drop failures older than the window and lockouts that ended, so the tables stay small."""
        for key, failures in list(self._failures.items()):
            while failures and failures[0] <= now - WINDOW_S:
                failures.popleft()
            if not failures:
                del self._failures[key]
        for key, until in list(self._locked_until.items()):
            if until <= now:
                del self._locked_until[key]
