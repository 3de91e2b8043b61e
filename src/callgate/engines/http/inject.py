"""Credential injection: callgate adds its own credential to every request it forwards upstream.

The caller authenticates to callgate and never holds the API's key, password, client secret or
AWS keys (SPEC §2 ``connections[].inject``). The engine builds one injector per connection at
start with :func:`build_injector` and shares it between that connection's requests (so an OAuth2
token is fetched once for all of them). For each request that policy allowed, the engine builds
an :class:`Outgoing` (the caller's ``Authorization`` already removed, ``Host`` and the forwarding
headers in place) and sends whatever :meth:`Injector.apply` returns, byte for byte: an AWS
signature covers headers and URL exactly as given.

Secrets are resolved at first use, not at start, and kept for :data:`SECRET_REFRESH_SECONDS`
before they are read again, so a rotated ``file:`` or ``env:`` secret is picked up without a
restart (within that time) while a busy connection does not read its secret file on every
request. A reference that cannot be resolved fails the request with
:class:`~callgate.errors.UpstreamAuthFailed` (502), whose message names the reference only;
a failure is never cached: the next request tries again.

The static kinds (``headers``, ``basic``, ``query``) live here; ``oauth2_client_credentials`` is
in :mod:`.oauth2` and ``aws_sigv4`` in :mod:`.sigv4`.
"""

from __future__ import annotations

import base64
import dataclasses
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Generic, Protocol, TypeVar
from urllib.parse import quote, unquote_plus, urlsplit, urlunsplit

from callgate.config.connections import ConnectionConfig
from callgate.errors import SecretError, UpstreamAuthFailed
from callgate.secrets import SecretRef

# RFC 9110 §5.5: a field value is visible characters, spaces and tabs. CR and LF would let a
# secret's value start a header of its own (response splitting in reverse), NUL and the other
# controls are refused by servers; a secret holding one is a configuration mistake.
_FORBIDDEN_IN_FIELD: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

# RFC 3986 §2.3 unreserved characters: the only ones left as they are in an injected query
# parameter, so a secret with ``&``, ``=``, ``+``, ``#`` or ``%`` arrives exactly as configured.
_QUERY_SAFE: Final = "-_.~"

#: Seconds an injector uses the secrets it resolved before resolving them again: a rotated
#: ``file:`` or ``env:`` secret is sent from the first request this long after the change.
SECRET_REFRESH_SECONDS: Final = 1.0

Clock = Callable[[], float]
_T = TypeVar("_T")


@dataclass(slots=True)
class Outgoing:
    """A request as callgate will send it upstream.

    ``body`` is the whole body when the engine buffered it (``b""`` when there is none) and
    ``None`` when it streams; ``body_length`` is its length when known (``Content-Length``), else
    ``None``. A request without a body is ``body=b""`` (or ``body=None, body_length=0``).
    """

    method: str
    #: absolute upstream URL: ``scheme://host[:port]/path?query``
    url: str
    #: what callgate will send, in order (the caller's ``Authorization`` removed; ``Host`` included)
    headers: list[tuple[str, str]]
    body: bytes | None
    body_length: int | None


class Injector(Protocol):
    """Adds one connection's credential to requests. One instance serves all its requests."""

    #: True when :meth:`apply` needs the whole body (``Outgoing.body`` not ``None``): AWS
    #: SigV4 for services that do not accept ``UNSIGNED-PAYLOAD``
    needs_body: bool

    async def apply(self, req: Outgoing) -> Outgoing:
        """The request with the credential added. Raises an upstream-side ``CallgateError``."""
        ...

    def apply_now(self, req: Outgoing) -> Outgoing | None:
        """What :meth:`apply` returns, when it can be had without waiting (the static kinds:
        their secrets are at hand); ``None``: await :meth:`apply`. Raises like it."""
        ...

    def secret_values(self) -> tuple[str, ...]:
        """The secrets this injector sends (also in the encodings it sends them, such as a
        Basic credential's base64), so an engine or a test can check that none of them ever
        reaches a caller: those of the last :meth:`apply` (resolved now if there was none) and
        the ones they replaced at the last refresh. Includes a cached OAuth2 access token."""
        ...

    async def aclose(self) -> None:
        """Release what the injector holds (the OAuth2 token client)."""
        ...


# --- helpers shared by the kinds ----------------------------------------------------------------


def resolve(connection: str, key: str, ref: SecretRef) -> str:
    """``ref``'s secret, or :class:`UpstreamAuthFailed` naming ``key`` and the reference."""
    try:
        return ref.resolve()
    except SecretError as exc:
        # SecretError's message names the reference, never a value.
        raise UpstreamAuthFailed(
            f"connection {connection!r}: callgate's credential for the upstream cannot be read "
            f"(inject.{key}: {exc.message})"
        ) from None


def resolve_secrets(ref: SecretRef) -> tuple[str, ...]:
    """Every secret behind ``ref`` (a template's parts too); nothing when it cannot be read."""
    try:
        return ref.resolve_secrets()
    except SecretError:
        return ()


def check_field_value(connection: str, key: str, value: str) -> str:
    """``value`` when it can be sent in a header, else :class:`UpstreamAuthFailed`."""
    if _FORBIDDEN_IN_FIELD.search(value):
        raise UpstreamAuthFailed(
            f"connection {connection!r}: the value of inject.{key} contains a line break or "
            "another control character, which cannot be sent in an HTTP header"
        )
    return value


def without_headers(
    headers: Iterable[tuple[str, str]], names: Iterable[str]
) -> list[tuple[str, str]]:
    """``headers`` less every header named in ``names`` (compared case-insensitively)."""
    drop = {name.lower() for name in names}
    return [(name, value) for name, value in headers if name.lower() not in drop]


def replace_headers(
    headers: Sequence[tuple[str, str]], added: Sequence[tuple[str, str]]
) -> list[tuple[str, str]]:
    """``headers`` with ``added`` in place of any header of the same name the caller sent.

    A caller-sent copy is dropped rather than kept beside ours: with two ``Authorization``
    headers an upstream may pick the caller's (RFC 9110 §5.3 forbids repeating it, and servers
    differ on which one wins)."""
    kept = without_headers(headers, (name for name, _ in added))
    return kept + list(added)


def _dedupe(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(value for value in values if value))


class Refreshed(Generic[_T]):
    """What an injector builds from its secrets, kept for :data:`SECRET_REFRESH_SECONDS`.

    :meth:`get` builds it at first use and again once it is that old (or the clock went
    back). A build that fails (a secret that cannot be read) raises and caches nothing, so the
    next request tries again. The value it replaced is kept in :attr:`previous`: a response to
    a request sent just before a rotation is still checked for the old secret.
    """

    __slots__ = ("_at", "_build", "_clock", "_secrets", "_secrets_of", "current", "previous")

    def __init__(
        self,
        build: Callable[[], _T],
        clock: Clock,
        secrets_of: Callable[[_T], Iterable[str]],
    ) -> None:
        self._build = build
        self._clock = clock
        self._secrets_of = secrets_of
        self._at = 0.0
        self._secrets: tuple[str, ...] | None = None
        self.current: _T | None = None
        self.previous: _T | None = None

    def get(self) -> _T:
        now = self._clock()
        current = self.current
        if current is None or not 0.0 <= now - self._at < SECRET_REFRESH_SECONDS:
            built = self._build()
            if built != current:
                if current is not None:
                    self.previous = current
                self._secrets = None
            self.current = current = built
            self._at = now
        return current

    def secret_values(self) -> tuple[str, ...]:
        """The secrets of the current value (built now if there is none: this may raise like
        :meth:`get`) and of the one it replaced; the same tuple until they change."""
        if self.current is None:
            self.get()
        found = self._secrets
        if found is None:
            kept = (v for v in (self.current, self.previous) if v is not None)
            found = self._secrets = _dedupe(s for v in kept for s in self._secrets_of(v))
        return found


@dataclass(frozen=True, slots=True)
class Prepared:
    """An injector's secrets, resolved: the header fields (or query parameters) to send, with
    the names they replace, and the secret values to keep from callers."""

    fields: tuple[tuple[str, str], ...] = field(repr=False)
    #: lower-case names of the caller's fields (or parameters) these replace
    replaces: frozenset[str]
    secrets: tuple[str, ...] = field(repr=False)


def _prepared(build: Callable[[], Prepared], clock: Clock) -> Refreshed[Prepared]:
    return Refreshed(build, clock, lambda p: p.secrets)


def _secrets_of(
    prepared: Refreshed[Prepared], fallback: Callable[[], tuple[str, ...]]
) -> tuple[str, ...]:
    try:
        return prepared.secret_values()
    except UpstreamAuthFailed:
        return fallback()  # nothing sendable: whatever can be read now


def _with_fields(req: Outgoing, prepared: Prepared) -> Outgoing:
    """``req`` with ``prepared.fields`` in place of the caller's fields of those names."""
    drop = prepared.replaces
    headers = [f for f in req.headers if f[0].lower() not in drop]
    headers += prepared.fields
    return Outgoing(req.method, req.url, headers, req.body, req.body_length)


# --- headers: {Name: template} ------------------------------------------------------------------


class HeaderInjector:
    """``inject.headers``: each header rendered from its template, replacing the caller's."""

    needs_body = False

    def __init__(
        self, connection: str, headers: dict[str, SecretRef], *, clock: Clock = time.monotonic
    ) -> None:
        self._connection = connection
        self._headers = tuple(headers.items())
        self._prepared = _prepared(self._prepare, clock)

    def _prepare(self) -> Prepared:
        connection = self._connection
        fields = tuple(
            (
                name,
                check_field_value(
                    connection, f"headers.{name}", resolve(connection, f"headers.{name}", ref)
                ),
            )
            for name, ref in self._headers
        )
        return Prepared(
            fields,
            frozenset(name.lower() for name, _ in fields),
            # The referenced secrets alone (``TOKEN``, not ``Bearer TOKEN``): a leak of the
            # token in any framing must be caught.
            _dedupe(secret for _, ref in self._headers for secret in resolve_secrets(ref)),
        )

    async def apply(self, req: Outgoing) -> Outgoing:
        return _with_fields(req, self._prepared.get())

    def apply_now(self, req: Outgoing) -> Outgoing:
        return _with_fields(req, self._prepared.get())

    def secret_values(self) -> tuple[str, ...]:
        try:
            return self._prepared.secret_values()
        except UpstreamAuthFailed:  # nothing sendable: whatever can be read now
            return _dedupe(s for _, ref in self._headers for s in resolve_secrets(ref))

    async def aclose(self) -> None:
        return None


# --- basic: Authorization: Basic ----------------------------------------------------------------


def basic_credentials(user: str, password: str) -> str:
    """The token of ``Authorization: Basic`` (RFC 7617 §2): base64 of ``user:password`` in UTF-8."""
    return base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


class BasicInjector:
    """``inject.basic``: ``Authorization: Basic`` with callgate's user and password."""

    needs_body = False

    def __init__(
        self,
        connection: str,
        user: SecretRef,
        password: SecretRef,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self._connection = connection
        self._user = user
        self._password = password
        self._prepared = _prepared(self._prepare, clock)

    def _prepare(self) -> Prepared:
        user = resolve(self._connection, "basic.user", self._user)
        password = resolve(self._connection, "basic.password", self._password)
        if ":" in user:
            # RFC 7617 §2: the user-id cannot contain a colon; the server would split it there.
            raise UpstreamAuthFailed(
                f"connection {self._connection!r}: inject.basic.user contains ':', which Basic "
                "authentication cannot carry"
            )
        check_field_value(self._connection, "basic.user", user)
        check_field_value(self._connection, "basic.password", password)
        encoded = basic_credentials(user, password)
        # The user name identifies callgate and may show up in an upstream's answers; the
        # password (a template's parts) and the encoded credential (what actually travels)
        # are the secrets.
        return Prepared(
            (("Authorization", f"Basic {encoded}"),),
            frozenset({"authorization"}),
            _dedupe([*resolve_secrets(self._password), encoded]),
        )

    async def apply(self, req: Outgoing) -> Outgoing:
        return _with_fields(req, self._prepared.get())

    def apply_now(self, req: Outgoing) -> Outgoing:
        return _with_fields(req, self._prepared.get())

    def secret_values(self) -> tuple[str, ...]:
        return _secrets_of(self._prepared, self._readable_secrets)

    def _readable_secrets(self) -> tuple[str, ...]:
        users = resolve_secrets(self._user)
        passwords = resolve_secrets(self._password)
        encoded = [basic_credentials(u, p) for u in users for p in passwords]
        return _dedupe([*passwords, *encoded])

    async def aclose(self) -> None:
        return None


# --- query: ?name=secret ------------------------------------------------------------------------


def encode_query_component(value: str) -> str:
    """Percent-encode ``value`` for a query (UTF-8, everything but unreserved characters)."""
    return quote(value, safe=_QUERY_SAFE)


def set_query_params(url: str, params: Sequence[tuple[str, str]]) -> str:
    """``url`` with ``params`` added and any parameter of the same name the caller sent removed.

    The caller's other parameters are kept byte for byte (re-encoding them could change what an
    upstream reads). Names are compared after decoding, as the upstream will (``api%5Fkey`` and
    ``api_key`` are one parameter to it), with ``+`` read as a space the way form decoding does.
    """
    parts = urlsplit(url)
    replaced = {name for name, _ in params}
    kept = [
        piece
        for piece in parts.query.split("&")
        if piece and unquote_plus(piece.partition("=")[0]) not in replaced
    ]
    added = [f"{encode_query_component(n)}={encode_query_component(v)}" for n, v in params]
    return urlunsplit(parts._replace(query="&".join(kept + added)))


class QueryInjector:
    """``inject.query``: query parameters with callgate's secrets, replacing the caller's."""

    needs_body = False

    def __init__(
        self, connection: str, params: dict[str, SecretRef], *, clock: Clock = time.monotonic
    ) -> None:
        self._connection = connection
        self._params = tuple(params.items())
        self._prepared = _prepared(self._prepare, clock)

    def _prepare(self) -> Prepared:
        values = tuple(
            (name, resolve(self._connection, f"query.{name}", ref)) for name, ref in self._params
        )
        return Prepared(values, frozenset(name for name, _ in values), self._readable_secrets())

    async def apply(self, req: Outgoing) -> Outgoing:
        return self.apply_now(req)

    def apply_now(self, req: Outgoing) -> Outgoing:
        prepared = self._prepared.get()
        return dataclasses.replace(req, url=set_query_params(req.url, prepared.fields))

    def secret_values(self) -> tuple[str, ...]:
        return _secrets_of(self._prepared, self._readable_secrets)

    def _readable_secrets(self) -> tuple[str, ...]:
        found: list[str] = []
        for _, ref in self._params:
            for value in resolve_secrets(ref):
                # Also the encoded form: that is what appears in the URL (and in any echo of it).
                found.extend((value, encode_query_component(value)))
        return _dedupe(found)

    async def aclose(self) -> None:
        return None


# --- choosing -----------------------------------------------------------------------------------


def build_injector(conn: ConnectionConfig, *, clock: Clock = time.monotonic) -> Injector | None:
    """The injector for ``conn``'s ``inject`` block, or ``None`` when it has none. ``clock``
    times the reuse of resolved secrets (and the OAuth2 token's lifetime).

    Nothing is resolved or fetched here: the first request does that, so a secret that is not
    there yet fails requests (502), not the gateway's start; ``callgate check`` resolves every
    reference ahead of time.
    """
    inject = conn.inject
    if inject is None:
        return None
    name = conn.name
    if inject.headers is not None:
        return HeaderInjector(name, inject.headers, clock=clock)
    if inject.basic is not None:
        return BasicInjector(name, inject.basic.user, inject.basic.password, clock=clock)
    if inject.query is not None:
        return QueryInjector(name, inject.query, clock=clock)
    # The two modules below import this one (Outgoing, the helpers): imported here, not on top.
    if inject.oauth2_client_credentials is not None:
        from callgate.engines.http.oauth2 import OAuth2ClientCredentialsInjector

        return OAuth2ClientCredentialsInjector(name, inject.oauth2_client_credentials, clock=clock)
    if inject.aws_sigv4 is not None:
        # Also keeps botocore (~0.2 s to import) out of gateways that sign nothing.
        from callgate.engines.http.sigv4 import AwsSigV4Injector

        return AwsSigV4Injector(name, inject.aws_sigv4, clock=clock)
    # InjectConfig validates that exactly one kind is set; a new kind must be added above.
    raise NotImplementedError(f"inject kind {inject.kind!r} has no injector")
