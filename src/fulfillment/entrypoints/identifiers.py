"""The rules of the texts that requests name things with, in one place (docs/api.md,
Identifiers and text): the HTTP API's request models and path parameters
(`api_schemas`) and the CLI's SKUs and lot names apply them alike.

Ids, SKUs, lot names and the short free texts (names, address lines) are compared as
stored, so two spellings that look the same must be one text:

* they are normalised to Unicode NFC (``"Ame\\u0301lie"`` is ``"Am\\u00e9lie"``);
* they may not hold control characters (Cc), format characters (Cf: the right-to-left
  override, zero-width spaces and joiners, the byte order mark, ...), lone surrogates
  (Cs), line and paragraph separators (Zl, Zp) or any space but the ordinary one (Zs
  other than U+0020);
* they may not begin or end with a space (``"AMOX-500 "`` is not ``"AMOX-500"``, nor
  anything else).

Notes (a pharmacist's, a cancellation's) are free text over several lines: NFC, the same
characters refused except the line feed, any spaces where they like.

`IDENTIFIER_PATTERN` and `NOTE_PATTERN` say the same as regular expressions, for the
OpenAPI schema; the checks here are those expressions, so schema and server agree. (They
leave lone surrogates out: no UTF-8 text can hold one, and validators that read patterns
over Unicode scalar values refuse to name them; the checks refuse them besides.)
`COUNTRY_CODES` are the ISO 3166-1 alpha-2 codes.
"""

from __future__ import annotations

import re
import unicodedata

#: Characters refused in every text, as inclusive (first, last) code point ranges: every
#: code point of general category Cc, Cf, Zl, Zp or Zs, but U+0020 (SPACE), in Unicode
#: 14.0 (tests/unit/test_identifiers.py checks them against the running Python); and the
#: surrogates (Cs), refused on their own (`SURROGATES`).
REFUSED_RANGES: tuple[tuple[int, int], ...] = (
    (0x0000, 0x001F),  # C0 controls
    (0x007F, 0x00A0),  # DELETE, C1 controls, NO-BREAK SPACE
    (0x00AD, 0x00AD),  # SOFT HYPHEN
    (0x0600, 0x0605),  # Arabic number signs
    (0x061C, 0x061C),  # ARABIC LETTER MARK
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x1680, 0x1680),  # OGHAM SPACE MARK
    (0x180E, 0x180E),  # MONGOLIAN VOWEL SEPARATOR
    (0x2000, 0x200F),  # en quad .. thin and hair spaces, zero-width space/joiners, LRM, RLM
    (0x2028, 0x202F),  # line and paragraph separators, bidi embeddings and overrides, NNBSP
    (0x205F, 0x2064),  # MEDIUM MATHEMATICAL SPACE, word joiner, invisible operators
    (0x2066, 0x206F),  # bidi isolates, deprecated format characters
    (0x3000, 0x3000),  # IDEOGRAPHIC SPACE
    (0xFEFF, 0xFEFF),  # ZERO WIDTH NO-BREAK SPACE (byte order mark)
    (0xFFF9, 0xFFFB),  # interlinear annotation
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x13438),  # Egyptian hieroglyph format controls
    (0x1BCA0, 0x1BCA3),  # shorthand format controls
    (0x1D173, 0x1D17A),  # musical symbol format controls
    (0xE0001, 0xE0001),  # LANGUAGE TAG
    (0xE0020, 0xE007F),  # tag characters
)

#: Never a character on their own: a JSON escape (`"\ud800"`) is the only way in.
SURROGATES = (0xD800, 0xDFFF)
_LINE_FEED = 0x0A


def _class_body(ranges: tuple[tuple[int, int], ...]) -> str:
    """A character class's body for `ranges`: escapes in the Basic Multilingual Plane
    (read alike by Python and ECMAScript), the characters themselves above it."""

    def one(code: int) -> str:
        return f"\\u{code:04x}" if code <= 0xFFFF else chr(code)

    return "".join(one(a) if a == b else f"{one(a)}-{one(b)}" for a, b in ranges)


def _without(ranges: tuple[tuple[int, int], ...], code: int) -> tuple[tuple[int, int], ...]:
    kept: list[tuple[int, int]] = []
    for a, b in ranges:
        if a <= code <= b:
            kept += [r for r in ((a, code - 1), (code + 1, b)) if r[0] <= r[1]]
        else:
            kept.append((a, b))
    return tuple(kept)


_REFUSED = _class_body(REFUSED_RANGES)
_EDGE = f"[^ {_REFUSED}]"
#: An identifier or short free text: refused characters nowhere, no space at either end.
IDENTIFIER_PATTERN = f"^{_EDGE}(?:[^{_REFUSED}]*{_EDGE})?$"
#: A note: refused characters nowhere, but line feeds.
NOTE_PATTERN = f"^[^{_class_body(_without(REFUSED_RANGES, _LINE_FEED))}]*$"
_IDENTIFIER = re.compile(IDENTIFIER_PATTERN.removeprefix("^").removesuffix("$"))
_NOTE = re.compile(NOTE_PATTERN.removeprefix("^").removesuffix("$"))
_REFUSED_CHARACTER = re.compile(f"[{_REFUSED}{_class_body((SURROGATES,))}]")
_SURROGATE = re.compile(f"[{_class_body((SURROGATES,))}]")

#: The ISO 3166-1 alpha-2 codes officially assigned, 249 (the ISO 3166 Maintenance
#: Agency's list, as the iso-codes project and the IANA time zone database's
#: iso3166.tab publish it), upper case.
_COUNTRY_TABLE = """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI
    BJ BL BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN
    CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK
    FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM
    HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN
    KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK
    ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP
    NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW
    SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF
    TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI
    VN VU WF WS YE YT ZA ZM ZW
    """
COUNTRY_CODES = frozenset(_COUNTRY_TABLE.split())
assert len(COUNTRY_CODES) == 249

_KINDS = {
    "Cc": "a control character",
    "Cf": "an invisible format character",
    "Cs": "a lone surrogate",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
    "Zs": "a space other than U+0020",
}


class InvalidText(ValueError):
    """A text that breaks the rules; the message says why (never repeating the text)."""


def _character(char: str) -> str:
    """`U+202E RIGHT-TO-LEFT OVERRIDE (an invisible format character)`."""
    name = unicodedata.name(char, "")
    kind = _KINDS.get(unicodedata.category(char), "a character refused in text")
    return f"U+{ord(char):04X}{' ' + name if name else ''} ({kind})"


def _refused(value: str, line_feeds: bool) -> InvalidText:
    """Why `value`, which broke the rules, is refused: its first refused character."""
    for position, char in enumerate(value, start=1):
        if _REFUSED_CHARACTER.match(char) and not (line_feeds and char == "\n"):
            return InvalidText(f"must not contain {_character(char)}, character {position}")
    return InvalidText("must not be empty")


def _normalised(value: str, max_length: int) -> str:
    normal = unicodedata.normalize("NFC", value)
    if len(normal) > max_length:
        raise InvalidText(f"must be at most {max_length} characters once normalised (NFC)")
    return normal


def identifier(value: str, max_length: int) -> str:
    """`value` in NFC if it is a valid identifier (or short free text), else InvalidText."""
    if not _IDENTIFIER.fullmatch(value) or _SURROGATE.search(value):
        if value[:1] == " " or value[-1:] == " ":
            raise InvalidText("must not begin or end with a space")
        raise _refused(value, line_feeds=False)
    return _normalised(value, max_length)


def note(value: str, max_length: int) -> str:
    """`value` in NFC if it is a valid note (line feeds allowed), else InvalidText."""
    if not _NOTE.fullmatch(value) or _SURROGATE.search(value):
        raise _refused(value, line_feeds=True)
    return _normalised(value, max_length)


def country(value: str) -> str:
    """`value` if it is an ISO 3166-1 alpha-2 code (upper case), else InvalidText."""
    if value not in COUNTRY_CODES:
        raise InvalidText("must be an ISO 3166-1 alpha-2 country code in capitals (US, GB)")
    return value
