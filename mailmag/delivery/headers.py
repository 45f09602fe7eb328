"""Header values written by hand: RFC 2047 encoded-words that CPython's folding cannot mangle.

`email.policy` folding drops spaces between Japanese encoded-words (gh-92081), glues
adjacent ones together (gh-144156) and writes 76-character words; `email.header.Header`
does too unless told otherwise. So mailmag writes every header value here: plain ASCII
stays as it is (folded at spaces), anything else becomes UTF-8 B-encoded words of at most
75 characters, holding whole characters, one per line, every line within 76 columns.
This is also the one place where data enters a header, so CR, LF and NUL stop here.
"""

from __future__ import annotations

import binascii
import re
import unicodedata

from mailmag.addresses import ascii_address, check
from mailmag.errors import InvalidInput

LINE_MAX = 76  # RFC 2045 body lines and RFC 2047 lines holding encoded-words
WORD_MAX = 75  # RFC 2047 encoded-word
FOLD = "\r\n "
_RAW_TEXT = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ATOM_PHRASE = re.compile(rf"{_ATEXT}(?: {_ATEXT})*")
_HEADERS_JA = {"From": "差出人", "To": "宛先", "Reply-To": "返信先", "Subject": "件名"}


def header_ja(header: str) -> str:
    """A header as a Japanese sentence names it (Subject → 件名; others ヘッダー「X-Name」)."""
    return _HEADERS_JA.get(header, f"ヘッダー「{header}」")


def is_plain(value: str) -> bool:
    """Printable ASCII words, single spaces, nothing a decoder could take for an encoded-word."""
    return bool(_RAW_TEXT.fullmatch(value)) and "=?" not in value


def encode_header(text: str, *, header: str = "Subject") -> str:
    """An unstructured header value: as is if plain ASCII, else RFC 2047 B-encoded words.

    Lines (counting `header` and ": " on the first) stay within 76 characters; words are
    at most 75, hold whole characters (and whole combining sequences where they fit), and
    are separated by CRLF SP. CR, LF or NUL in `text` raise InvalidInput.
    """
    check(text, header, header_ja(header))
    if not text:
        return ""
    room = LINE_MAX - len(header) - 2
    folded = _fold_ascii(text, room) if is_plain(text) else None
    return folded if folded is not None else FOLD.join(_encoded_words(text, room))


def format_address(name: str, address: str, *, header: str = "To", utf8: bool = False) -> str:
    """'name <address>' with the name as an atom, a quoted string or encoded-words.

    utf8=True lets a non-ASCII local part through as UTF-8 (RFC 6532; sent only with SMTPUTF8).
    """
    address = ascii_address(address, f"{header} address", utf8=utf8, what_ja=f"{header_ja(header)}のアドレス")
    return angle(phrase(name, header), address, header) if name else address


def phrase(name: str, header: str) -> str:
    """A display name (RFC 5322 phrase) on the first line of `header`, encoded if it must be."""
    check(name, f"{header} name", f"{header_ja(header)}の名前")
    room = LINE_MAX - len(header) - 2
    if is_plain(name) and _ATOM_PHRASE.fullmatch(name) and len(name) <= room:
        return name
    if is_plain(name) and len(name) + 2 <= room:
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return FOLD.join(_encoded_words(name, room))


def angle(phrase: str, inner: str, header: str) -> str:
    """'phrase <inner>', folded before '<' when the last line would pass 76 columns."""
    last = len(phrase) - phrase.rfind("\n") - 1 if "\n" in phrase else len(header) + 2 + len(phrase)
    return f"{phrase}{' ' if last + len(inner) + 3 <= LINE_MAX else FOLD}<{inner}>"


def _fold_ascii(text: str, room: int) -> str | None:
    """Fold at spaces into lines within 76 columns; None if one word is too long for that."""
    lines: list[str] = []
    line = ""
    for word in text.split(" "):
        if len(word) > room:
            return None
        if line and len(line) + 1 + len(word) > room:
            lines.append(line)
            line, room = word, LINE_MAX - 1
        else:
            line = f"{line} {word}" if line else word
    return FOLD.join([*lines, line])


def _encoded_words(text: str, room: int) -> list[str]:
    """=?UTF-8?B?…?= words: the first fits in `room` columns, later ones after CRLF SP."""
    if room < 20:
        raise ValueError("header name too long for an encoded-word on its first line")
    limit = (room - 12) // 4 * 3  # UTF-8 bytes whose base64 fits beside =?UTF-8?B? and ?=
    if len(text) * 4 <= limit:  # surely one word (most names): no need to count bytes
        return [_word(text)]
    words: list[str] = []
    start, size = 0, 0
    for i, ch in enumerate(text):
        n = _utf8_len(ch)
        if size + n > limit and i > start:
            cut = _cluster_start(text, start, i)
            words.append(_word(text[start:cut]))
            start, size = cut, sum(map(_utf8_len, text[cut:i]))
            limit = (WORD_MAX - 12) // 4 * 3
        size += n
    words.append(_word(text[start:]))
    return words


def _utf8_len(ch: str) -> int:
    code = ord(ch)
    return 1 if code < 0x80 else 2 if code < 0x800 else 3 if code < 0x10000 else 4


def _cluster_start(text: str, start: int, cut: int) -> int:
    """Move a cut back so a combining mark, variation selector or ZWJ sequence stays whole."""
    i = cut
    while i > start and _extends(text, i):
        i -= 1
    return i if i > start else cut


def _extends(text: str, i: int) -> bool:
    """Whether text[i] belongs to the character before it (cutting there is legal but ugly)."""
    ch = text[i]
    return (
        unicodedata.category(ch) in ("Mn", "Mc", "Me")
        or ch == "\u200d" or text[i - 1] == "\u200d"
        or "\ufe00" <= ch <= "\ufe0f" or "\U000e0100" <= ch <= "\U000e01ef"
        or "\U0001f3fb" <= ch <= "\U0001f3ff"  # emoji skin tones
    )


def _word(chunk: str) -> str:
    try:
        data = chunk.encode()
    except UnicodeEncodeError as exc:
        raise InvalidInput("a header value holds a broken character (a lone surrogate); retype it",
                           ja="ヘッダーの値に壊れた文字（対になっていないサロゲート）が含まれています。"
                              "入力し直してください") from exc
    return "=?UTF-8?B?" + binascii.b2a_base64(data, newline=False).decode() + "?="
