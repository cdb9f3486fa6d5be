"""The rules of request texts (entrypoints/identifiers.py): what is refused, and why it
says; NFC; the table of refused characters against the running Python's Unicode data;
the country codes."""

from __future__ import annotations

import re
import sys
import unicodedata

import pytest

from fulfillment.entrypoints import identifiers
from fulfillment.entrypoints.identifiers import InvalidText

REFUSED_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Zs"}


def refused_code_points() -> set[int]:
    return {code for first, last in identifiers.REFUSED_RANGES for code in range(first, last + 1)}


def test_the_table_names_every_refused_character_of_this_unicode_and_no_other() -> None:
    in_categories = {
        code
        for code in range(sys.maxunicode + 1)
        if unicodedata.category(chr(code)) in REFUSED_CATEGORIES and code != 0x20
    }
    table = refused_code_points()
    # A newer Unicode may add format characters: then the table (Unicode 14.0) needs them.
    assert in_categories - table == set(), f"Unicode {unicodedata.unidata_version}"
    assert table - in_categories == set()


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("\u202eabc", "U+202E RIGHT-TO-LEFT OVERRIDE (an invisible format character), character 1"),
        ("a\u200bb", "U+200B ZERO WIDTH SPACE"),
        ("a\u200db", "U+200D ZERO WIDTH JOINER"),
        ("a\u2028b", "U+2028 LINE SEPARATOR (a line separator)"),
        ("a\u2029b", "U+2029 PARAGRAPH SEPARATOR (a paragraph separator)"),
        ("\ufeffabc", "U+FEFF ZERO WIDTH NO-BREAK SPACE"),
        ("a\xa0b", "U+00A0 NO-BREAK SPACE (a space other than U+0020)"),
        ("a\u3000b", "U+3000 IDEOGRAPHIC SPACE"),
        ("a\tb", "U+0009 (a control character), character 2"),
        ("a\nb", "U+000A (a control character)"),
        ("a\x85b", "U+0085 (a control character)"),
        ("a\U000e0041", "U+E0041 TAG LATIN CAPITAL LETTER A"),
        ("a\ud800", "U+D800 (a lone surrogate), character 2"),
        ("AMOX-500 ", "must not begin or end with a space"),
        (" AMOX-500", "must not begin or end with a space"),
        ("", "must not be empty"),
    ],
)
def test_a_refused_identifier_says_why(value: str, why: str) -> None:
    with pytest.raises(InvalidText, match=re.escape(why)):
        identifiers.identifier(value, 200)
    if "\ud800" not in value:  # the pattern leaves lone surrogates to the check
        assert not re.search(identifiers.IDENTIFIER_PATTERN, value)


@pytest.mark.parametrize("value", ["AMOX-500", "B 2291", "Am\u00e9lie", "\u6f22\u5b57", "a  b"])
def test_an_identifier_may_hold_any_letter_and_inner_spaces(value: str) -> None:
    assert identifiers.identifier(value, 200) == value
    assert re.search(identifiers.IDENTIFIER_PATTERN, value)


def test_identifiers_and_notes_are_normalised_to_nfc() -> None:
    assert identifiers.identifier("Ame\u0301lie", 200) == "Am\u00e9lie"
    assert identifiers.note("caf\u0065\u0301 ", 2000) == "caf\u00e9 "


def test_the_length_counts_once_normalised() -> None:
    # U+0958 DEVANAGARI LETTER QA is excluded from composition: NFC writes it in two.
    assert len(unicodedata.normalize("NFC", "\u0958")) == 2
    with pytest.raises(InvalidText, match="at most 3 characters once normalised"):
        identifiers.identifier("\u0958\u0958", 3)


def test_a_note_may_span_lines_but_holds_no_other_refused_character() -> None:
    assert identifiers.note("dose checked\nsee chart\n", 2000) == "dose checked\nsee chart\n"
    assert identifiers.note("", 2000) == ""
    assert re.search(identifiers.NOTE_PATTERN, "a\nb")
    for refused in ("a\r\nb", "a\u202eb", "a\u2028b", "a\x00b"):
        with pytest.raises(InvalidText):
            identifiers.note(refused, 2000)
        assert not re.search(identifiers.NOTE_PATTERN, refused)


def test_the_countries_are_the_249_iso_3166_1_alpha_2_codes() -> None:
    assert len(identifiers.COUNTRY_CODES) == 249
    assert {"US", "GB", "DE", "JP", "BR", "AX", "SS", "XK"} - identifiers.COUNTRY_CODES == {"XK"}
    for code in ("XX", "ZZ", "UK", "EU", "gb", "G"):
        with pytest.raises(InvalidText, match="ISO 3166-1 alpha-2"):
            identifiers.country(code)
    assert identifiers.country("GB") == "GB"
