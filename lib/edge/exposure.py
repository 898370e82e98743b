"""Who may talk to the server. Safe by default for the plain ``monailabel start_server``
command: loopback only, browsers only from the server's own origin (OHIF is served from it).

* **Listening beyond loopback** (``--host 0.0.0.0`` or a LAN address; MONAI Label's default
  is ``0.0.0.0``) is refused at start unless remote access is configured:
  a bearer token (``--conf auth_token_file FILE`` or the ``MIDEPSEG_AUTH_TOKEN`` environment
  variable), MONAI Label's own authentication (``MONAI_LABEL_AUTH_ENABLE=true``), or the
  explicit ``--conf allow_remote true`` for an authenticating reverse proxy in front.
* **Every request** passes :class:`EdgeGuard` first: a client beyond loopback is refused
  unless remote access is configured, and must then present the token when one is set; the
  ``Host`` header must name this machine's loopback unless remote access is configured (a
  DNS-rebinding page cannot pose as the server); a browser request whose ``Origin`` is not
  the server's own and not listed in ``MONAI_LABEL_CORS_ORIGINS`` is refused before it runs
  (CORS headers alone would let a foreign page's form POST run and only hide the answer).
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

logger = logging.getLogger(__name__)

TOKEN_ENV = "MIDEPSEG_AUTH_TOKEN"
MIN_TOKEN_CHARS = 16


class ExposureRefused(RuntimeError):
    """The server was asked to listen beyond loopback without authentication."""


def is_loopback(host: str | None) -> bool:
    """``localhost``, ``127.0.0.0/8`` or ``::1`` (brackets allowed)."""
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ExposurePolicy:
    """What the operator configured.

    Attributes:
        token: bearer token clients beyond loopback must send (empty: none).
        allow_remote: accept clients beyond loopback without the app's token (MONAI Label's
            authentication or a reverse proxy authenticates them).
        origins: browser origins allowed besides the server's own (``scheme://host[:port]``).
    """

    token: str = ""
    allow_remote: bool = False
    origins: tuple[str, ...] = ()

    @property
    def remote(self) -> bool:
        """Clients beyond loopback may connect at all."""
        return self.allow_remote or bool(self.token)

    @classmethod
    def configure(cls, conf: Mapping[str, Any], environ: Mapping[str, str], auth_enabled: bool,
                  cors_origins: Sequence[Any] = ()) -> "ExposurePolicy":
        """From the app's ``--conf`` (``auth_token_file``, ``allow_remote``), the environment
        (:data:`TOKEN_ENV`) and MONAI Label's settings (authentication, CORS origins)."""
        token = environ.get(TOKEN_ENV, "")
        if conf.get("auth_token_file"):
            with open(conf["auth_token_file"]) as f:
                token = f.read().strip()
        if token and len(token) < MIN_TOKEN_CHARS:
            raise ExposureRefused(f"the auth token must have at least {MIN_TOKEN_CHARS} characters")
        allow_remote = str(conf.get("allow_remote", "false")).lower() in ("1", "true", "yes") or auth_enabled
        return cls(token=token, allow_remote=allow_remote, origins=tuple(str(o).rstrip("/") for o in cors_origins))


def listen_host(argv: Sequence[str]) -> str | None:
    """The ``--host`` of a ``monailabel start_server`` command line (its default ``0.0.0.0``
    when absent); ``None`` for any other command line (the per-request guard still applies)."""
    if "start_server" not in argv:
        return None
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-i", "--host", default="0.0.0.0")
    return parser.parse_known_args(list(argv)[list(argv).index("start_server") + 1:])[0].host


def check_listen_host(host: str | None, policy: ExposurePolicy) -> None:
    """Raise :class:`ExposureRefused` for a non-loopback ``host`` without remote access configured."""
    if host is None or is_loopback(host) or policy.remote:
        return
    raise ExposureRefused(
        f"refusing to listen on {host!r} (beyond this machine) without authentication: use --host 127.0.0.1, "
        f"or set a token ({TOKEN_ENV}=... or --conf auth_token_file FILE), or MONAI Label's auth "
        "(MONAI_LABEL_AUTH_ENABLE=true), or --conf allow_remote true behind an authenticating reverse proxy "
        "(README, Security)"
    )


class EdgeGuard:
    """ASGI middleware applying an :class:`ExposurePolicy` to every HTTP request before the
    app sees it (refusals are JSON ``{"detail": ...}`` with 401 or 403)."""

    def __init__(self, app, policy: ExposurePolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope, receive, send) -> None:
        refusal = self.refusal(scope) if scope["type"] in ("http", "websocket") else None
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, detail = refusal
        logger.warning("refused %s %s from %s: %s", scope.get("method"), scope.get("path"), scope.get("client"), detail)
        await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)

    def refusal(self, scope) -> tuple[int, str] | None:
        """``(status, reason)`` when the request must not run, else ``None``."""
        headers = Headers(scope=scope)
        client = (scope.get("client") or ("", 0))[0]
        if not is_loopback(client):
            if not self.policy.remote:
                return 403, "requests from beyond this machine are refused (the server has no authentication configured)"
            given = headers.get("authorization", "")
            if self.policy.token and not hmac.compare_digest(given.encode(), f"Bearer {self.policy.token}".encode()):
                return 401, "missing or wrong bearer token (Authorization: Bearer <token>)"
        host = headers.get("host", "")
        if not self.policy.remote and not is_loopback(_hostname(host)):
            return 403, f"Host {host!r} is not this machine's loopback address"
        origin = headers.get("origin")
        if origin is not None:
            own = f"{scope.get('scheme', 'http')}://{host}"
            if origin.rstrip("/") != own and origin.rstrip("/") not in self.policy.origins:
                return 403, f"cross-origin request from {origin!r} refused (allowed: {own!r} and MONAI_LABEL_CORS_ORIGINS)"
        return None


def _hostname(host_header: str) -> str | None:
    try:
        return urlsplit(f"//{host_header}").hostname
    except ValueError:  # not a host[:port]
        return None
