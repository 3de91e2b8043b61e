"""Content detectors: find sensitive values (emails, card numbers, keys, …) inside any text.

Each detector is a candidate regular expression plus, where the format has one, a check that
rejects look-alikes (Luhn for card numbers, ISO 7064 mod-97 for IBANs, ``ipaddress`` for IP
addresses, ``phonenumbers`` for phone numbers). :class:`DetectorSet` compiles the chosen detectors
into

* one *prefilter* (a bytes pattern) that every hit of every chosen detector must contain, used on
  whole DataRow bodies so that rows without anything suspicious cost one regex scan, and
* one combined candidate pattern, used on a single decoded value.

What counts as a hit, precisely (docs/masking.md lists the same):

- ``email``: ``local@domain.tld`` (ASCII, dot-atom local part, a domain with a dot and a
  2+-letter top-level label).
- ``credit_card``: 13-19 digits, Luhn-valid, not touching other digits: written together, in
  groups of four (``4111 1111 1111 1111``, the last group shorter) or 4-6-5/4-6-4 (American
  Express, Diners), with one kind of separator (space or dash).
- ``iban``: a two-letter country code, two check digits and 11-30 letters/digits (groups of four
  separated by single spaces allowed), valid under mod-97.
- ``us_ssn``: ``AAA-GG-SSSS`` (dashes or single spaces), excluding the never-issued area numbers
  000, 666 and 900-999, group 00 and serial 0000.
- ``phone``: only numbers written the way phone numbers are written, because a bare run of digits
  is as likely an id or an amount: either with a ``+`` country code (``+44 20 7946 0958``,
  ``+14155552671``), or in the North American ``(415) 555-2671`` / ``415-555-2671`` /
  ``415.555.2671`` forms. Each candidate must be a valid number for ``phonenumbers``.
- ``ipv4``: dotted quad with every octet ≤ 255, not part of a longer dotted sequence.
- ``ipv6``: anything ``ipaddress.IPv6Address`` accepts that has at least one hex digit.
- ``jwt``: three base64url segments, the first two starting ``eyJ`` (a JSON object).
- ``aws_access_key``: ``AKIA…``/``ASIA…`` (and the other AWS id prefixes) + 16 characters; a
  40-character secret-looking string in the same value as an access key id is a hit too.
- ``private_key``: a PEM ``-----BEGIN … PRIVATE KEY-----`` block up to its END line (or the end
  of the text when the END line is missing).
- ``api_key``: Stripe ``sk_live_``/``sk_test_``/``rk_live_``, GitHub ``ghp_``/``gho_``/``ghu_``/
  ``ghs_``/``ghr_``/``github_pat_``, Slack ``xoxb-``/``xoxp-``/``xoxa-``/``xoxr-``/``xoxs-``,
  Google ``AIza…``, OpenAI ``sk-…``, GitLab ``glpat-``, npm ``npm_``, SendGrid ``SG.…``, and
  callgate's own ``cgk_``/``cgt_``.

Digits are ASCII digits: a card number written in other scripts' digits is not detected.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

import phonenumbers

#: (start, end, detector name): a half-open span of the text
Hit = tuple[int, int, str]


def luhn_valid(digits: str) -> bool:
    """True when ``digits`` (ASCII digits only) passes the Luhn check."""
    total = 0
    parity = len(digits) % 2
    for index, char in enumerate(digits):
        value = ord(char) - 48
        if index % 2 == parity:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    """ISO 13616 / ISO 7064 mod-97-10 check of an IBAN (spaces ignored)."""
    compact = text.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34 or not compact[:2].isalpha() or not compact[2:4].isdigit():
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def _card(text: str) -> bool:
    digits = text.replace(" ", "").replace("-", "")
    # One digit repeated (0000000000000, a common placeholder) passes Luhn but is no card.
    return 13 <= len(digits) <= 19 and len(set(digits)) > 1 and luhn_valid(digits)


def _ssn(text: str) -> bool:
    area, group, serial = text[0:3], text[4:6], text[7:11]
    if area in ("000", "666") or area[0] == "9":
        return False
    return group != "00" and serial != "0000"


def _ipv4(text: str) -> bool:
    return all(len(part) == 1 or part[0] != "0" or part == "0" for part in text.split(".")) and all(
        int(part) <= 255 for part in text.split(".")
    )


def _ipv6(text: str) -> bool:
    if not any(ch.isalnum() for ch in text):
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _phone(text: str) -> bool:
    region = None if text.startswith("+") else "US"
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return False
    return bool(phonenumbers.is_valid_number(number))


def _always(text: str) -> bool:
    return True


# --- triggers ------------------------------------------------------------------------------------
#
# Python's regular expressions cost tens of nanoseconds per character scanned, too slow to run
# over every value of every row. Each detector therefore has a *trigger*: a test made only of
# C-speed operations (bytes.find, bytes.translate) that every hit of the detector passes, and
# that reports byte positions lying inside the would-be hits. The trigger runs on raw UTF-8 bytes
# (a whole DataRow body, or one value) and on two translations of them:
#
# - ``c1``: every ASCII digit becomes ``0``, upper-case letter ``A``, lower-case letter ``a``,
#   space and ``-`` both ``-``; other bytes stay. Same length, so positions carry over.
# - ``c2``: ``c1`` with spaces and dashes removed (card numbers written in groups become one run
#   of digits); positions do not carry over, so its triggers locate with a regex afterwards.
#
# A trigger may fire on text without a hit (the detector's own pattern and check decide); it
# must never stay silent on text with one.

_C1: Final = bytes(
    ord("0")
    if chr(b).isdigit() and b < 128
    else ord("A")
    if 65 <= b <= 90
    else ord("a")
    if 97 <= b <= 122
    else ord("-")
    if b in (32, 45)
    else b
    for b in range(256)
)
_SEPARATORS: Final = b" -"


#: a flag is ``position << TAG_BITS | detector index``: one int, cheap to sort and compare
TAG_BITS: Final = 5
TAG_MASK: Final = (1 << TAG_BITS) - 1
#: flags kept per needle in one value (:meth:`DetectorSet.flag`): one is enough to send the value
#: to its detector. Text holding many values (a batch of DataRows) is flagged without a limit, so
#: that every value with a hit keeps a flag of its own.
MAX_FLAGS: Final = 64
NO_LIMIT: Final = 1 << 62

# Every trigger is *monotone*: a flag for a hit inside a value is found, inside that value, in any
# longer text that contains the value between bytes outside the detectors' alphabets (the high
# byte of a length field, a NUL): triggers test no context outside the hit. That is what lets the
# row rewriter flag a whole batch of DataRows at once (callgate.masking.rows).


def _all(data: bytes, needle: bytes, out: list[int], cap: int) -> None:
    """Every position of ``needle`` in ``data`` (at most ``cap``)."""
    pos = data.find(needle)
    count = 0
    while pos >= 0 and count < cap:
        out.append(pos)
        count += 1
        pos = data.find(needle, pos + 1)


#: ``locate(raw, out, cap)`` appends every position inside a possible hit it finds (at most
#: ``cap`` per needle; with ``cap`` 1, at least one when there is any)
Locate = Callable[[bytes, list[int], int], None]


_LOCAL_END_RAW: Final = frozenset(
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.!#$%&'*+/=?^_`{|}~-"
)


#: an ``@`` between the last character of a local part and the first of a domain
_EMAIL_AT: Final = re.compile(
    rb"@(?<=[" + re.escape(bytes(sorted(_LOCAL_END_RAW))) + rb"]@)(?=[A-Za-z0-9])"
)


def _locate_email(raw: bytes, out: list[int], cap: int) -> None:
    _matches(_EMAIL_AT, raw, out, cap)


def _literals(*needles: bytes) -> Locate:
    def locate(raw: bytes, out: list[int], cap: int) -> None:
        for needle in needles:
            if needle in raw:
                _all(raw, needle, out, cap)

    return locate


def _c1_literals(*needles: bytes) -> Locate:
    def locate(raw: bytes, out: list[int], cap: int) -> None:
        c1 = raw.translate(_C1)
        for needle in needles:
            if needle in c1:
                _all(c1, needle, out, cap)

    return locate


def _matches(pattern: re.Pattern[bytes], raw: bytes, out: list[int], cap: int) -> None:
    if cap >= NO_LIMIT:
        out += [m.start() for m in pattern.finditer(raw)]
        return
    for count, m in enumerate(pattern.finditer(raw)):
        if count >= cap:
            break
        out.append(m.start())


def _locate_card(raw: bytes, out: list[int], cap: int) -> None:
    if b"0000000000000" in raw.translate(_C1, _SEPARATORS):
        _matches(_CARD_BYTES, raw, out, cap)


def _locate_ipv6(raw: bytes, out: list[int], cap: int) -> None:
    if b"::" in raw:
        _all(raw, b"::", out, cap)
    if raw.count(b":") >= 7:
        _matches(_IPV6_FULL_BYTES, raw, out, cap)


def _locate_api_key(raw: bytes, out: list[int], cap: int) -> None:
    if b"_" in raw:
        for needle in (b"k_live_", b"k_test_", b"gh", b"npm_", b"cgk_", b"cgt_"):
            if needle in raw:
                _all(raw, needle, out, cap)
    if b"-" in raw:
        for needle in (b"xox", b"sk-", b"glpat-"):
            if needle in raw:
                _all(raw, needle, out, cap)
    for needle in (b"AIza", b"SG."):
        if needle in raw:
            _all(raw, needle, out, cap)


#: 13 or more digits (single spaces or dashes between them allowed). No lookaround: a digit just
#: before or after a value (a length byte such as ``0x31``) must not hide a card inside it, so a
#: longer run is flagged too and the detector's own pattern decides.
_CARD_BYTES: Final = re.compile(rb"[0-9](?:[ -]?[0-9]){12,}")
_IPV6_FULL_BYTES: Final = re.compile(rb"(?:[0-9A-Fa-f]{1,4}:){7}")


@dataclass(frozen=True, slots=True)
class Detector:
    """One detector: ``locate`` triggers, ``pattern`` finds candidates, ``check`` accepts them."""

    name: str
    #: candidate pattern (str); groups inside must be non-capturing
    pattern: str
    locate: Locate
    check: Callable[[str], bool] = _always


#: an email from the first character of its local part
_EMAIL: Final = (
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}(?![A-Za-z0-9-])"
)
_B64URL: Final = r"[A-Za-z0-9_-]"
_NANP: Final = (b"000-000-0000", b"000.000.0000", b"000-000.0000", b"000.000-0000", b"(000)")

DETECTORS: Final[dict[str, Detector]] = {
    d.name: d
    for d in (
        Detector(
            "email",
            r"(?<![A-Za-z0-9.!#$%&'*+/=?^_`{|}~-])" + _EMAIL,
            _locate_email,
        ),
        Detector(
            "credit_card",
            r"(?<![0-9])(?:[0-9]{13,19}"
            r"|[0-9]{4}(?P<g>[ -])[0-9]{4}(?P=g)[0-9]{4}(?P=g)[0-9]{1,4}(?:(?P=g)[0-9]{1,3})?"
            r"|[0-9]{4}(?P<a>[ -])[0-9]{6}(?P=a)[0-9]{4,5})(?![0-9])",
            _locate_card,
            _card,
        ),
        Detector(
            "iban",
            r"(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])",
            _c1_literals(b"AA00"),
            iban_valid,
        ),
        Detector(
            "us_ssn",
            r"(?<![0-9])[0-9]{3}(?:-[0-9]{2}-| [0-9]{2} )[0-9]{4}(?![0-9])",
            _c1_literals(b"000-00-0000"),
            _ssn,
        ),
        Detector(
            "phone",
            r"(?<![\w+])\+[0-9](?:[ .()-]{0,2}[0-9]){6,16}(?![0-9])|"
            r"(?<![\w(])(?:\([0-9]{3}\) ?|[0-9]{3}[-.])[0-9]{3}[-.][0-9]{4}(?![0-9])",
            _c1_literals(b"+0", *_NANP),
            _phone,
        ),
        Detector(
            "ipv4",
            r"(?<![0-9.])[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?![0-9]|\.[0-9])",
            _c1_literals(b"0.0"),
            _ipv4,
        ),
        Detector(
            "ipv6",
            r"(?<![0-9A-Za-z:.])(?=[0-9A-Fa-f:]*::|(?:[0-9A-Fa-f]{1,4}:){7})"
            r"[0-9A-Fa-f:]{2,39}(?:(?<=:)[0-9]{1,3}(?:\.[0-9]{1,3}){3})?(?![0-9A-Za-z:])",
            _locate_ipv6,
            _ipv6,
        ),
        Detector(
            "jwt",
            r"(?<![A-Za-z0-9_-])eyJ" + _B64URL + r"+\.eyJ" + _B64URL + r"*\." + _B64URL + r"*",
            _literals(b"eyJ"),
        ),
        Detector(
            "aws_access_key",
            r"(?<![A-Z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ABIA|ACCA|A3T[A-Z0-9])"
            r"[A-Z0-9]{16}(?![A-Z0-9])",
            _literals(
                b"AKIA",
                b"ASIA",
                b"AGPA",
                b"AIDA",
                b"AROA",
                b"AIPA",
                b"ANPA",
                b"ANVA",
                b"ABIA",
                b"ACCA",
                b"A3T",
            ),
        ),
        Detector(
            "private_key",
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
            r"(?:.*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|.*)",
            _literals(b"-----BEGIN "),
        ),
        Detector(
            "api_key",
            r"(?<![A-Za-z0-9_-])(?:"
            r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"
            r"|gh[pousr]_[A-Za-z0-9]{30,}"
            r"|github_pat_[A-Za-z0-9_]{30,}"
            r"|xox[abposr]-[A-Za-z0-9-]{10,}"
            r"|AIza[0-9A-Za-z_-]{35}"
            r"|sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"
            r"|glpat-[A-Za-z0-9_-]{20,}"
            r"|npm_[A-Za-z0-9]{36}"
            r"|SG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}"
            r"|cg[kt]_[A-Za-z0-9_-]{16,}"
            r")",
            _locate_api_key,
        ),
    )
}

#: a secret access key: 40 base64 characters, reported only in a value that also holds a key id
_AWS_SECRET: Final = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")


def _shorter(
    pattern: re.Pattern[str], check: Callable[[str], bool], text: str, match: re.Match[str]
) -> int | None:
    """The end of a shorter candidate at the same start that passes ``check`` (``4111 1111 1111
    1111 2`` read greedily is a Luhn-invalid 17-digit number; without the `` 2`` it is a card)."""
    start = match.start()
    end = match.end()
    while True:
        end = max(text.rfind(" ", start, end), text.rfind("-", start, end))
        if end <= start:
            return None
        if text[end - 1].isdigit() and (
            (shorter := pattern.fullmatch(text, start, end)) is not None and check(shorter.group())
        ):
            return end


def _resolve(hits: list[Hit]) -> list[Hit]:
    """Non-overlapping hits, in order; of two overlapping hits the longer one (then the earlier)."""
    if len(hits) < 2:
        return hits
    chosen: list[Hit] = []
    for hit in sorted(hits, key=lambda h: (h[0] - h[1], h[0])):
        if not any(hit[0] < other[1] and other[0] < hit[1] for other in chosen):
            chosen.append(hit)
    chosen.sort()
    return chosen


@dataclass(frozen=True, slots=True)
class DetectorSet:
    """Some detectors, compiled together. Build with :meth:`compile`."""

    names: tuple[str, ...]
    compiled: tuple[tuple[Detector, re.Pattern[str]], ...]
    locators: tuple[Locate, ...]

    @classmethod
    def compile(cls, names: Iterable[str]) -> DetectorSet:
        chosen = tuple(dict.fromkeys(names))
        unknown = [name for name in chosen if name not in DETECTORS]
        if unknown:
            raise ValueError(f"unknown detector {unknown[0]!r}")
        if not chosen:
            raise ValueError("a detector set needs at least one detector")
        if len(chosen) > TAG_MASK + 1:
            raise ValueError("too many detectors")
        compiled = tuple(
            (DETECTORS[name], re.compile(DETECTORS[name].pattern, re.DOTALL)) for name in chosen
        )
        return cls(chosen, compiled, tuple(d.locate for d, _ in compiled))

    def flag(self, data: bytes, cap: int = MAX_FLAGS) -> list[int]:
        """Flags (``position << TAG_BITS | detector index``, sorted) for positions in ``data``
        (UTF-8) inside possible hits. Empty when no detector can have a hit anywhere in
        ``data``; every hit contains at least one flag of its detector, unless more than ``cap``
        flags of one needle come before it (:data:`NO_LIMIT` when ``data`` holds many values
        whose flags must all be kept)."""
        out: list[int] = []
        for tag, locate in enumerate(self.locators):
            found: list[int] = []
            locate(data, found, cap)
            if found:
                out += [position << TAG_BITS | tag for position in found]
        if len(out) > 1:
            out.sort()
        return out

    def positions(self, data: bytes) -> list[int]:
        """For a set of one detector: :meth:`flag` without a limit, as plain positions."""
        if len(self.locators) != 1:
            raise ValueError("positions() is for a set of one detector")
        found: list[int] = []
        self.locators[0](data, found, NO_LIMIT)
        if len(found) > 1:
            found.sort()
        return found

    def may_match(self, data: bytes) -> bool:
        return bool(self.flag(data, 1))

    def find(self, text: str) -> list[Hit]:
        """Every hit in ``text``: sorted, non-overlapping ``(start, end, detector)`` spans."""
        flags = self.flag(text.encode("utf-8", "surrogatepass"))
        if not flags:
            return []
        return self.find_only(text, {flag & TAG_MASK for flag in flags})

    def find_only(self, text: str, which: Iterable[int]) -> list[Hit]:
        """Like :meth:`find`, with only the detectors at these indexes, which flagged ``text``
        already (their triggers are not run again)."""
        hits: list[Hit] = []
        for index in which:
            detector, pattern = self.compiled[index]
            if detector.name == "email":
                hits.extend(_find_emails(text))
                continue
            pos = 0
            check = detector.check
            while True:
                match = pattern.search(text, pos)
                if match is None:
                    break
                if check is _always or check(match.group()):
                    hits.append((match.start(), match.end(), detector.name))
                    pos = match.end()
                    continue
                shorter = _shorter(pattern, check, text, match)
                if shorter is not None:
                    hits.append((match.start(), shorter, detector.name))
                    pos = shorter
                else:
                    pos = match.start() + 1  # a shorter candidate may start just after
            if detector.name == "aws_access_key" and any(h[2] == detector.name for h in hits):
                hits += [(m.start(), m.end(), "aws_access_key") for m in _AWS_SECRET.finditer(text)]
        return _resolve(hits)


#: the local part of an email read backwards from its ``@`` (at most 256 characters)
_LOCAL_BACKWARDS: Final = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,256}")
_DOMAIN: Final = re.compile(_EMAIL.split("@", 1)[1])


def _find_emails(text: str) -> list[Hit]:
    """Emails, found from their ``@``: the local part is read backwards with a regex anchored at
    the ``@``, the domain forwards (a regex search over the whole text is much slower)."""
    hits: list[Hit] = []
    at = text.find("@")
    last_end = 0
    while at >= 0:
        lo = max(last_end, at - 256)
        local = _LOCAL_BACKWARDS.match(text[lo:at][::-1])
        domain = _DOMAIN.match(text, at + 1) if local is not None else None
        if local is not None and domain is not None:
            start = at - local.end()
            part = text[start:at]
            cut = part.rfind("..")  # dot-atom: no empty labels; keep what follows the last one
            if cut >= 0:
                start += cut + 2
                part = text[start:at]
            stripped = len(part) - len(part.lstrip("."))
            start += stripped
            if start < at:
                hits.append((start, domain.end(), "email"))
                last_end = domain.end()
                at = text.find("@", last_end)
                continue
        at = text.find("@", at + 1)
    return hits


#: Text translated for finding emails from their ``@``s (once for a whole batch of values): a
#: letter becomes ``a``, a digit ``0``, ``-`` and ``.`` stay, the other characters a local part
#: may hold become ``!`` and anything else (``@``, every byte of a multi-byte character) NUL. The
#: local part before an ``@`` starts after the last NUL; what the domain pattern matches after
#: it depends only on the translation up to the next NUL (these are the only distinctions the
#: pattern makes, and it stops at ``!``).
EMAIL_CLASSES: Final = bytes(
    97
    if 65 <= b <= 90 or 97 <= b <= 122
    else 48
    if 48 <= b <= 57
    else b
    if b in (45, 46)
    else 33
    if b in _LOCAL_END_RAW
    else 0
    for b in range(256)
)
#: the length of what :data:`_DOMAIN` matches after an ``@``, by the :data:`EMAIL_CLASSES`
#: translation of what follows it up to the next NUL (a shape: label lengths, no letters); bounded
_DOMAIN_SHAPES: Final[dict[bytes, int]] = {}
_DOMAIN_SHAPES_MAX: Final = 4096
_SHAPE_MAX: Final = 255
_DOMAIN_BYTES: Final = re.compile(_DOMAIN.pattern.encode("ascii"))


def email_spans(raw: bytes) -> list[tuple[int, int]]:
    """The emails :func:`_find_emails` finds in ``raw.decode()``, as byte spans of ``raw``."""
    ats = [m.start() for m in _EMAIL_AT.finditer(raw)]
    if not ats:
        return []
    return email_spans_in(raw.translate(EMAIL_CLASSES), 0, len(raw), ats)


def email_spans_in(
    classes: bytes, start: int, end: int, ats: Iterable[int]
) -> list[tuple[int, int]]:
    """The emails :func:`_find_emails` finds in the value ``data[start:end].decode()``, as byte
    spans of ``data``, where ``classes`` is ``data`` translated by :data:`EMAIL_CLASSES` (one
    translation serves every value of a batch of rows); ``ats``: in
    order, the positions of ``@`` in ``data[start:end]`` to look at, at least those the email
    trigger flags (an ``@`` it does not flag has no local part or no domain).

    The same walk as :func:`_find_emails`, on the UTF-8 bytes: every character an email is made
    of is ASCII (one byte), and no byte of a multi-byte character is in any of the classes, so
    the spans are the same characters. The value need not be valid UTF-8 (callers check that
    where it matters)."""
    spans: list[tuple[int, int]] = []
    last_end = start
    for at in ats:
        if last_end <= at < end:
            span = email_at(classes, last_end, end, at)
            if span is not None:
                spans.append(span)
                last_end = span[1]
    return spans


def email_at(classes: bytes, start: int, end: int, at: int) -> tuple[int, int] | None:
    """The email around the ``@`` at ``at``, if there is one, in a value that ends at ``end``,
    whose local part starts at ``start`` at the earliest (the value's start, or the end of the
    email before); ``classes``: the translation, as for :func:`email_spans_in`."""
    lo = at - 256
    if lo < start:
        lo = start
    first = classes.rfind(b"\0", lo, at) + 1  # the local part: the run of its bytes before @
    if first < lo:
        first = lo
    if first >= at:
        return None
    cut = classes.rfind(b"..", first, at)  # dot-atom: keep what follows the last ".."
    if cut >= 0:
        first = cut + 2
    while first < at and classes[first] == 46:  # and no leading dot
        first += 1
    if first >= at:
        return None
    stop = classes.find(b"\0", at + 1, end)  # what the domain pattern may look at
    if stop < 0:
        stop = end
    shape = classes[at + 1 : stop]
    length = _DOMAIN_SHAPES.get(shape)
    if length is None:
        found = _DOMAIN_BYTES.match(shape)
        length = found.end() if found is not None else 0
        if len(shape) <= _SHAPE_MAX:
            if len(_DOMAIN_SHAPES) >= _DOMAIN_SHAPES_MAX:
                _DOMAIN_SHAPES.clear()
            _DOMAIN_SHAPES[shape] = length
    if not length:
        return None
    return first, at + 1 + length
