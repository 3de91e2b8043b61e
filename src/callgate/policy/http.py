"""Per-request policy decisions for HTTP connections (SPEC §2, issue 8).

Pure: no I/O. :class:`PolicyEngine.decide_http <callgate.policy.engine.PolicyEngine.decide_http>`
is the entry point; this module holds the matching. The semantics, with examples, are in
docs/policy.md ("HTTP requests"); in short:

- a rule with SQL conditions never matches a request; a rule without conditions matches every one;
- deny beats review beats allow; nothing matched is deny;
- what the caller sent is read every way an upstream might read it (percent-decoding, dot
  segments, method overrides, repeated parameters, repeated JSON members …), and a deny or review
  condition holds when **any** reading matches, an allow condition only when **every** one does;
- a rule with ``json`` conditions whose body cannot be read as JSON (not buffered, not JSON,
  not declared ``application/json``) counts as matched for deny and review rules and as not
  matched for allow rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import translate
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

from callgate.masking.jsonpath import loads_keeping_duplicates
from callgate.model import Decision, HttpRequest, Verdict
from callgate.policy.jsoncond import JsonCondition, parse_condition

if TYPE_CHECKING:
    from callgate.config.policies import ValueMatchConfig
    from callgate.policy.engine import CompiledRule

#: headers and a query parameter that some frameworks (Rails, Express method-override, Laravel,
#: ASP.NET) read as the real method of a POST: a request carrying one may be that method too
METHOD_OVERRIDE_HEADERS: Final = frozenset(
    {"x-http-method-override", "x-http-method", "x-method-override"}
)
METHOD_OVERRIDE_PARAM: Final = "_method"

#: bound on the per-caller caches of request decisions and body needs; a full cache is emptied
HTTP_DECISION_CACHE_ENTRIES: Final = 20_000

#: media types whose body a rule's ``json`` conditions may read (parameters such as charset aside)
_JSON_TYPE: Final = re.compile(r"(?:application/(?:[\w.+-]+\+)?json|text/json)")


# --- paths ------------------------------------------------------------------------------------


def compile_path_glob(glob: str) -> re.Pattern[str]:
    """A path glob as a regex: ``*`` and ``?`` stay inside one segment, ``**`` crosses them,
    ``/**`` at the end also matches the bare prefix and ``/**/`` zero or more segments."""
    out: list[str] = []
    i = 0
    n = len(glob)
    while i < n:
        if glob.startswith("/**/", i):
            out.append("/(?:.*/)?")
            i += 4
        elif glob.startswith("/**", i) and i + 3 == n:
            out.append("(?:/.*)?")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        elif glob[i] == "[" and (end := glob.find("]", i + 2)) > 0:
            body = glob[i + 1 : end]
            negate = body.startswith("!")
            body = body[1:] if negate else body
            # as in fnmatch: ``!`` negates, ``^`` is itself; a negated set never matches ``/``
            body = re.sub(r"([\\^\[&~|])", r"\\\1", body)  # literal inside the set
            # ``--`` would be a set difference to a future ``re`` (FutureWarning today): the
            # second hyphen is a literal, so ``x--`` is the range x to ``-`` (or not a set)
            body = body.replace("--", "-\\-")
            char_set = "[" + ("^/" if negate else "") + body + "]"
            try:
                re.compile(char_set)
            except re.error:
                # not a valid set (``[z-a]``): the ``[`` is an ordinary character, as in fnmatch
                out.append(re.escape("["))
                i += 1
                continue
            out.append(char_set)
            i = end + 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return re.compile("".join(out))


#: a path with nothing to decode and no ``;`` or ``\\``
_PLAIN_PATH: Final = re.compile(r"[A-Za-z0-9_.~:@!$&'()*+,=/-]*")


def _decode_keeping_slashes(segment: str) -> str:
    # %2F stays encoded: most servers route on the path with it as part of a segment
    parts = re.split("(%2[Ff])", segment)
    return "".join(
        part if i % 2 else unquote(part, errors="replace") for i, part in enumerate(parts)
    )


def _normalize(segments: Iterable[str], trailing: bool) -> str:
    """``segments`` with empty ones (``//``) and dot segments removed (RFC 3986 §5.2.4)."""
    out: list[str] = []
    for segment in segments:
        if segment in ("", "."):
            continue
        if segment == "..":
            if out:
                out.pop()
            continue
        out.append(segment)
    text = "/" + "/".join(out)
    return text + "/" if trailing and out else text


def path_forms(raw: str) -> tuple[str, ...]:
    """Every way an upstream might read the path ``raw`` (as sent, percent-encoded): as sent,
    decoded with ``%2F`` kept and dot segments and empty segments removed, and the most
    aggressive reading (decoded twice where ``%25`` hides an escape, ``%2F`` and ``\\`` as ``/``,
    ``;params`` dropped from each segment)."""
    if not raw:
        raw = "/"
    if raw.startswith("/") and _PLAIN_PATH.fullmatch(raw) and "//" not in raw and "/." not in raw:
        return (raw,)  # no escapes, no empty or dot segments: every reading is the path itself
    if not raw.startswith("/"):
        return (raw,)  # "*" (OPTIONS) or an absolute form: no glob (all start with /) matches
    trailing = raw.endswith("/")
    gentle = _normalize((_decode_keeping_slashes(s) for s in raw.split("/")), trailing)
    aggressive = unquote(raw, errors="replace")
    if "%" in aggressive:
        aggressive = unquote(aggressive, errors="replace")
    aggressive = aggressive.replace("\\", "/")
    segments = [s.split(";", 1)[0] for s in aggressive.split("/")]
    strict = _normalize(segments, aggressive.endswith("/"))
    return tuple(dict.fromkeys((raw, gentle, strict)))


# --- query strings ----------------------------------------------------------------------------


def _decodings(text: str) -> tuple[str, ...]:
    """``text`` decoded with ``+`` read as a space (forms) and as itself (RFC 3986)."""
    if "%" not in text and "+" not in text:
        return (text,)
    plus = unquote(text.replace("+", " "), errors="replace")
    kept = unquote(text, errors="replace")
    return (plus,) if plus == kept else (plus, kept)


def query_values(query: str) -> dict[str, list[str]]:
    """Lower-cased decoded name → every decoded value, for every way of reading ``query``.

    Parameters may be split at ``&`` and (by older servers) at ``;``; ``+`` may or may not be a
    space; names may be compared ignoring case. A name's list holds every value under every
    reading, so a condition can require that any, or every, reading matches."""
    out: dict[str, list[str]] = {}
    if not query:
        return out
    splits = [query.split("&")]
    if ";" in query:
        splits.append(re.split("[&;]", query))
    for pairs in splits:
        for pair in pairs:
            if not pair:
                continue
            name, _, value = pair.partition("=")
            values = _decodings(value)
            for decoded in _decodings(name):
                bucket = out.setdefault(decoded.lower(), [])
                bucket.extend(v for v in values if v not in bucket)
    return out


def _header_values(
    headers: Iterable[tuple[str, str]], names: frozenset[str]
) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in headers:
        lowered = name.lower()
        if lowered in names:
            out.setdefault(lowered, []).append(value.strip(" \t"))
    return out


# --- compiled rules ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ValueTest:
    """A compiled ``query`` or ``headers`` condition on one name."""

    name: str
    globs: tuple[re.Pattern[str], ...]
    present: bool

    @classmethod
    def compile(cls, name: str, spec: ValueMatchConfig) -> ValueTest:
        return cls(name.lower(), tuple(re.compile(translate(g)) for g in spec.values), spec.present)

    def holds(self, values: Sequence[str] | None, every: bool) -> bool:
        if not self.present:
            return not values
        if not values:
            return False
        globs = self.globs
        if not globs:
            return True
        if every:
            return all(any(g.match(v) for g in globs) for v in values)
        return any(g.match(v) for v in values for g in globs)


@dataclass(frozen=True, slots=True)
class HttpRule:
    """One rule that can match an HTTP request (no SQL conditions), compiled."""

    rule: CompiledRule
    methods: frozenset[str]
    paths: tuple[re.Pattern[str], ...]
    query: tuple[ValueTest, ...]
    headers: tuple[ValueTest, ...]
    json: tuple[JsonCondition, ...]

    @property
    def every(self) -> bool:
        """Allow rules hold only when every reading of the request satisfies them."""
        return self.rule.action == "allow"

    @classmethod
    def compile(cls, rule: CompiledRule) -> HttpRule:
        c = rule.conditions
        return cls(
            rule=rule,
            methods=frozenset(c.methods),
            paths=tuple(compile_path_glob(p) for p in c.paths),
            query=tuple(ValueTest.compile(k, v) for k, v in c.query.items()),
            headers=tuple(ValueTest.compile(k, v) for k, v in c.headers.items()),
            json=tuple(parse_condition(text) for text in c.json_conditions),
        )

    def method_holds(self, method: str, overrides: Sequence[str]) -> bool:
        methods = self.methods
        if not methods:
            return True
        if self.every:
            # exactly as sent, and every override the upstream might obey must be allowed too
            return method in methods and all(o.upper() in methods for o in overrides)
        candidates = {method.upper(), *(o.upper() for o in overrides)}
        if "HEAD" in candidates:
            candidates.add("GET")  # servers answer HEAD by running the GET handler
        return not methods.isdisjoint(candidates)

    def path_holds(self, forms: Sequence[str]) -> bool:
        paths = self.paths
        if not paths:
            return True
        if self.every:
            return all(any(p.fullmatch(f) for p in paths) for f in forms)
        return any(p.fullmatch(f) for f in forms for p in paths)


@dataclass(frozen=True, slots=True)
class _Partial:
    """What a request's method, path, query and headers decide: the rules that matched without
    looking at the body, those whose ``json`` conditions remain, and the decision when none do."""

    matched: tuple[HttpRule, ...]
    pending: tuple[HttpRule, ...]
    decision: Decision | None


class HttpRuleSet:
    """The HTTP-capable rules judging one caller on one connection, with their caches."""

    def __init__(self, rules: Sequence[HttpRule], review_possible: bool) -> None:
        self.rules: tuple[HttpRule, ...] = tuple(rules)
        #: a review can be approved by someone (otherwise review becomes deny)
        self.review_possible = review_possible
        self.uses_query = any(r.query for r in self.rules)
        self.uses_methods = any(r.methods for r in self.rules)
        condition_headers = {t.name for r in self.rules for t in r.headers}
        self.header_names: frozenset[str] = frozenset(
            condition_headers | (METHOD_OVERRIDE_HEADERS if self.uses_methods else set())
        )
        self.has_json = any(r.json for r in self.rules)
        self._partials: dict[tuple[str, str, str, tuple[tuple[str, str], ...]], _Partial] = {}
        self._body_needs: dict[tuple[str, str], bool] = {}

    # -- per request ----------------------------------------------------------------------------

    def decide(self, request: HttpRequest) -> Decision:
        if not self.rules:
            return _NOTHING_MATCHED
        query = request.query
        header_names = self.header_names
        relevant: tuple[tuple[str, str], ...] = ()
        if header_names and request.headers:
            relevant = tuple(
                (name.lower(), value)
                for name, value in request.headers
                if name.lower() in header_names
            )
        # The query is part of the key only when something reads it, so that unique query
        # strings (ids, timestamps) do not defeat the cache: a rule on parameters, or a rule on
        # methods when the query may hold a ``_method`` override (perhaps percent-encoded).
        qkey = ""
        if query and (
            self.uses_query or (self.uses_methods and ("%" in query or "method" in query.lower()))
        ):
            qkey = query
        key = (request.method, request.path, qkey, relevant)
        partial = self._partials.get(key)
        if partial is None:
            partial = self._partial(request.method, request.path, qkey, relevant)
            if len(self._partials) >= HTTP_DECISION_CACHE_ENTRIES:
                self._partials.clear()
            self._partials[key] = partial
        if partial.decision is not None:
            return partial.decision
        body = _read_body(request)
        matched = list(partial.matched)
        for rule in partial.pending:
            if body is _UNREADABLE:
                if not rule.every:
                    matched.append(rule)  # fail closed: a deny or review rule applies
            elif body is _NO_BODY:
                # nothing is selected by any path: only ``not exists`` holds
                if all(c.op == "not exists" for c in rule.json):
                    matched.append(rule)
            elif all(c.holds(body, every=rule.every) for c in rule.json):
                matched.append(rule)
        return _verdict(self._ordered(matched), self.review_possible)

    def _ordered(self, rules: Iterable[HttpRule]) -> list[HttpRule]:
        chosen = set(map(id, rules))
        return [r for r in self.rules if id(r) in chosen]

    def _partial(
        self, method: str, path: str, query: str, headers: tuple[tuple[str, str], ...]
    ) -> _Partial:
        forms = path_forms(path)
        params = query_values(query) if query else {}
        by_name = _header_values(headers, self.header_names)
        overrides = [v for name in METHOD_OVERRIDE_HEADERS for v in by_name.get(name, ())]
        overrides += params.get(METHOD_OVERRIDE_PARAM, ())
        matched: list[HttpRule] = []
        pending: list[HttpRule] = []
        for rule in self.rules:
            every = rule.every
            if not rule.method_holds(method, overrides) or not rule.path_holds(forms):
                continue
            if not all(t.holds(params.get(t.name), every) for t in rule.query):
                continue
            if not all(t.holds(by_name.get(t.name), every) for t in rule.headers):
                continue
            (pending if rule.json else matched).append(rule)
        if pending:
            return _Partial(tuple(matched), tuple(pending), None)
        return _Partial(tuple(matched), (), _verdict(matched, self.review_possible))

    def needs_body(self, method: str, path: str) -> bool:
        """True when a rule with ``json`` conditions may match a ``method`` request to ``path``
        (query and header conditions are not looked at: they only narrow)."""
        if not self.has_json:
            return False
        key = (method, path)
        found = self._body_needs.get(key)
        if found is None:
            forms = path_forms(path)
            # Read as a deny rule would (any reading), so that no rule that could apply is missed;
            # overrides are not known here, so any method condition might hold.
            found = any(
                rule.json
                and (not rule.methods or _loose_method(rule, method))
                and (not rule.paths or any(p.fullmatch(f) for f in forms for p in rule.paths))
                for rule in self.rules
            )
            if len(self._body_needs) >= HTTP_DECISION_CACHE_ENTRIES:
                self._body_needs.clear()
            self._body_needs[key] = found
        return found


def _loose_method(rule: HttpRule, method: str) -> bool:
    # A POST may carry a method override; HEAD runs GET.
    upper = method.upper()
    return upper == "POST" or upper in rule.methods or (upper == "HEAD" and "GET" in rule.methods)


# --- the body ---------------------------------------------------------------------------------

#: the body could not be read as JSON: json conditions fail closed
_UNREADABLE: Final = object()
#: no body at all: every path selects nothing
_NO_BODY: Final = object()


def _content_type(request: HttpRequest) -> str | None:
    if request.content_type is not None:
        return request.content_type
    for name, value in request.headers:
        if name.lower() == "content-type":
            return value
    return None


def _charset(content_type: str) -> str:
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "charset":
            return value.strip().strip('"') or "utf-8"
    return "utf-8"


def _read_body(request: HttpRequest) -> Any:
    """The parsed JSON body, :data:`_NO_BODY` when there is none, :data:`_UNREADABLE` when it
    exists but cannot be read as JSON (not buffered, not declared JSON, not valid JSON)."""
    body = request.body
    if body is None:
        return _NO_BODY if request.body_length == 0 else _UNREADABLE
    if not body.strip():
        return _NO_BODY
    content_type = _content_type(request)
    # Only a body declared JSON is read as JSON: an upstream reads a form body as a form, and a
    # text can be valid JSON and a form at once ({"a":"&amount=20000&"}).
    if content_type is None:
        return _UNREADABLE
    media = content_type.split(";", 1)[0].strip().lower()
    if not _JSON_TYPE.fullmatch(media):
        return _UNREADABLE
    try:
        text = body.decode(_charset(content_type))
        return loads_keeping_duplicates(text)
    except (ValueError, LookupError):
        return _UNREADABLE


# --- the verdict ------------------------------------------------------------------------------

_NOTHING_MATCHED: Final = Decision(Verdict.DENY, (), "denied: no rule allows this request")


def _verdict(matched: Sequence[HttpRule], review_possible: bool) -> Decision:
    if not matched:
        return _NOTHING_MATCHED
    rules = [m.rule for m in matched]
    labels = tuple(r.label for r in rules)
    denies = [r for r in rules if r.action == "deny"]
    if denies:
        return Decision(Verdict.DENY, labels, f"denied by {denies[0].phrase}")
    reviews = [r for r in rules if r.action == "review"]
    if reviews:
        if not review_possible:
            return Decision(
                Verdict.DENY,
                labels,
                f"denied: {reviews[0].phrase} asks for review, "
                "but no approvers are configured for this connection",
            )
        return Decision(Verdict.REVIEW, labels, f"needs approval: {reviews[0].phrase}")
    return Decision(Verdict.ALLOW, labels, f"allowed by {rules[0].phrase}")
