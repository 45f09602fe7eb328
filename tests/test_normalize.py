"""Normalization of pasted text, tried on the real article the council published."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path

import mailmag
from mailmag.text_ja import normalize, normalize_line

# Kangxi radicals, CJK radicals supplement, CJK compatibility ideographs (+ supplement).
LOOKALIKES = re.compile("[\u2e80-\u2eff\u2f00-\u2fdf\uf900-\ufaff\U0002f800-\U0002fa1f]")


def test_the_reference_article_comes_out_with_real_ideographs(reference_text):
    assert len(LOOKALIKES.findall(reference_text)) == 55  # what the PDF paste holds
    cleaned = normalize(reference_text)
    assert LOOKALIKES.findall(cleaned) == []
    for phrase in ("5月24日（木）", "HP・メルマガの発行などを行っており",
                   "中小企業基盤整備機構\u3000中国本部",
                   "テーマ：化学技術", "産学官金連携", "次世代自動車", "専門家", "農商工等連携"):
        assert phrase in cleaned, phrase


def test_the_reference_article_keeps_everything_else(reference_text):
    cleaned = normalize(reference_text)
    # Same length: every change is one character for one character.
    assert len(cleaned) == len(reference_text)
    changed = {(a, b) for a, b in zip(reference_text, cleaned, strict=True) if a != b}
    # Kangxi radicals, the vertical colon, and the EM SPACE indents (really 全角 spaces).
    lookalikes = {a for a in reference_text if LOOKALIKES.match(a)}
    assert {a for a, _ in changed} <= lookalikes | {"\ufe13", "\u2003"}
    assert ("\ufe13", "：") in changed and ("\u2003", "\u3000") in changed and ("⽉", "月") in changed
    # Full-width punctuation the author chose stays.
    assert cleaned.count("，") == reference_text.count("，") == 50
    assert cleaned.count("（") == reference_text.count("（")


def test_the_packaged_copy_is_byte_exact():
    # The SHA-256 of the council's original article as it was received, so an editor
    # that "fixes" the Kangxi radicals or the line endings is caught.
    packaged = Path(mailmag.__file__).parent / "data" / "reference_article.txt"
    assert hashlib.sha256(packaged.read_bytes()).hexdigest() == (
        "4d18a71fd12363e048f3471bf41e778a9c9fb9c5bcab60788ff512c5159780a1")


def test_zenkaku_letters_digits_and_hankaku_katakana_are_left_as_written():
    text = "ＪＩＳＭＥＥ　２０１２，ｶﾞｲﾄﾞﾌﾞｯｸ，ＳＣＯＰＥ（１２３）"
    assert normalize(text) == text


def test_compatibility_ideographs_become_unified_ones_but_real_characters_stay():
    assert normalize("\uf900\u2f00\u2eff") == "豈一\u2eff"
    assert normalize("﨑") == "﨑"  # U+FA11 has no decomposition: it is a character of its own


def test_invisible_characters_go_and_line_endings_are_unified():
    text = "会議\u200bの\ufeff概要\x07\r\n次回は\r6月末\u2028以上\x00"
    assert normalize(text) == "会議の概要\n次回は\n6月末\n以上"


def test_tabs_and_newlines_stay_in_bodies_but_not_in_one_line_fields():
    assert normalize("表\tの\n本文") == "表\tの\n本文"
    assert normalize_line("  中国経済連合会\n会議室\u200b ") == "中国経済連合会 会議室"


def test_normalize_is_idempotent(reference_text):
    once = normalize(reference_text)
    assert normalize(once) == once
    assert all(unicodedata.category(c) != "Cc" or c in "\n\t" for c in once)
