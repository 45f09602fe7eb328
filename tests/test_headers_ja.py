"""Japanese subjects and display names survive the header encoder byte for byte.

Checked on the raw bytes, the way a strict receiver (Yahoo! JAPAN, old mobile carriers)
sees them, and decoded with email.header's decode_header/make_header: the modern parser
inserts spaces into Japanese display names, so it cannot be the oracle.
"""

from __future__ import annotations

import base64
import re
from email.header import decode_header, make_header

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailmag.delivery.headers import encode_header, format_address
from mailmag.errors import InvalidInput

SUBJECTS = [
    "中国地域産学官コラボレーション会議 メールマガジン 第12号",
    "【お知らせ】令和8年度 産学官連携フォーラムの開催について",
    "第3回 技術交流会（2026年12月1日（火）13:30〜17:00）のご案内",
    "【出展者募集】ビジネスマッチングフェア2026 in 広島 ― 締切は11月20日です",
    "Re: 【至急】会場変更のお知らせ",
    "メルマガ",
    "産",
    "ｶﾞｲﾀﾞﾝｽ 半角カナの件名 ﾃｽﾄ",
    "全角　スペース　入り　の　件名",
    "  前後に空白がある件名  ",
    "英数字ＡＢＣ１２３と全角記号！？＆＃",
    "絵文字入り🎉イベント開催🎊のお知らせ👍🏻",
    "家族絵文字👨‍👩‍👧‍👦が割れない件名👨‍👩‍👧‍👦👨‍👩‍👧‍👦👨‍👩‍👧‍👦👨‍👩‍👧‍👦",
    "結合文字のか\u3099き\u3099く\u3099け\u3099こ\u3099が分かれない" * 2,
    "異体字セレクタ 葛\U000e0100城市と辻\U000e0100堂の件名を長くしてみる" * 2,
    "康熙部首⽉⽇が残った件名",
    "件名に=?UTF-8?B?を含むが本物ではない",
    "括弧()<>@,;:\\\"/[]?=記号入り",
    "タブ\tを含む件名",
    "①②③ 丸数字と㈱㈲ 機種依存文字",
    "𠮷野家と𩸽（ほっけ）— サロゲートペア文字",
    "𠮷" * 40,
    "あ" * 200,
    "a" + "あ" * 20 + "b" * 30 + "い" * 20,
    "ASCII words then 日本語 then ASCII again with a long tail of words to fold",
    "～〜－−―‐ ダッシュ類とチルダ類",
    "「」『』【】〔〕《》〈〉 括弧類ばかり",
    "ー長音ーで始まる件名ー",
    "、。で始まり終わる件名、。",
    "改行なしで非常に長い件名を書くとどうなるかを確認するための件名です。" * 3,
    "第１２号　２０２６年１２月号",
    "令和８年１２月１日（火）開催「中国地域オープンイノベーションフォーラム」",
    "広島大学・産業技術総合研究所中国センター・中国経済産業局 合同セミナー",
    "中国経済連合会からのお知らせ（会員限定）",
    "イベントカレンダー：12月〜1月",
    "¥1,000（税込）参加費のお知らせ",
    "Ünïcödé Läťïñ mixed with 日本語",
    "한국어와 日本語와 中文的 混在件名",
    "ภาษาไทย และ ภาษาญี่ปุ่น",
    "عربي وياباني",
    "x",
    "ア",
    "アイ",
    "アイウ",
    "アイウエオカキクケコサシスセソタチツテト",
    "アイウエオカキクケコサシス",
    "アイウエオカキクケコサシスセ",
    "アイウエオカキクケコサシスセソ",
    "ABCアイウエオカキクケコサシスセソ",
    "ABアイウエオカキクケコサシスセソ",
    "Aアイウエオカキクケコサシスセソ",
    "🎉" * 30,
]

NAMES = [
    "山田 太郎", "山田太郎", "髙橋 一郎", "𠮷田 花子", "渡邊 さくら", "齋藤 健", "辻\U000e0100 次郎",
    "ヤマダ タロウ", "ﾔﾏﾀﾞ ﾀﾛｳ", "やまだ たろう", "山田　太郎（広島大学）", "株式会社テスト 代表取締役 山田",
    "中国地域産学官コラボレーション会議 事務局", "中国地域産学官コラボレーションセンター 広報担当 山田 太郎",
    "国立研究開発法人 産業技術総合研究所 中国センター 産学官連携推進室 室長 山田 太郎",
    "山田, 太郎", "山田 <太郎>", "\"山田\" 太郎", "山田\\太郎", "田中 (営業)", "佐藤;鈴木",
    "Yamada Taro", "Taro Yamada, Ph.D.", "O'Brien", "John \"JJ\" Smith", "Hiroshima Univ. (Office)",
    "José García", "Müller Jürgen", "김철수", "王小明", "🙂 スマイル", "か\u3099くか\u3099く",
    "=?UTF-8?B?偽?=",
    "  前後空白  ", "山田\t太郎", "ｱｲｳｴｵ", "①山田", "㈱テスト", "広島県広島市中区 事務局", "a",
    "あ", "あい" * 30, "Ａｂｃ全角英字", "ー", "山田 太郎 様", "営業部 第一課 課長代理 兼 広報担当",
    "Organization Name That Is Rather Long For An ASCII Display Name Field",
    "x" * 80, "事務局（代表）", "中国経済産業局 地域経済部", "広島大学 学術・社会連携室",
]

_WORD = re.compile(rb"=\?([^?]+)\?([bBqQ])\?([^?]*)\?=")


def _check_raw(header: str, value: str) -> None:
    """What a strict receiver checks on the wire for one header field."""
    raw = f"{header}: {value}".encode()
    lines = raw.split(b"\r\n")
    assert all(len(line) <= 76 for line in lines), lines
    assert all(line.startswith(b" ") for line in lines[1:])
    assert not any(line.strip() == b"" for line in lines)
    for match in _WORD.finditer(raw):
        assert len(match.group(0)) <= 75
        assert match.group(1) == b"UTF-8" and match.group(2) == b"B"
        base64.b64decode(match.group(3)).decode("utf-8")  # raises if a character was cut
    assert b"?==?" not in raw  # gh-144156: encoded-words glued together
    assert re.search(rb"\?=[^\s]", raw.replace(b"?= <", b"")) is None


def _decoded(value: str) -> str:
    return str(make_header(decode_header(value.replace("\r\n", ""))))


def test_fifty_and_more_japanese_subjects_round_trip_on_the_raw_bytes():
    assert len(SUBJECTS) >= 50
    for subject in SUBJECTS:
        value = encode_header(subject)
        _check_raw("Subject", value)
        assert _decoded(value) == subject, subject


def test_fifty_and_more_display_names_round_trip_with_their_address():
    assert len(NAMES) >= 50
    for name in NAMES:
        value = format_address(name, "taro.yamada@example.jp")
        _check_raw("To", value)
        decoded = _decoded(value)
        assert decoded.endswith(" <taro.yamada@example.jp>")
        phrase = decoded.removesuffix(" <taro.yamada@example.jp>")
        if value.startswith('"'):  # a quoted string: only ASCII names with specials
            phrase = re.sub(r"\\(.)", r"\1", phrase[1:-1])
        assert phrase == name, name


def test_article_lines_as_subjects_and_names(reference_text):
    """Real text pasted from a PDF: full-width punctuation, 全角 spaces, Kangxi radicals."""
    lines = [line for line in reference_text.splitlines() if line.strip()]
    assert len(lines) > 30
    for line in lines:
        for text in (line, line * 3):
            _check_raw("Subject", encode_header(text))
            assert _decoded(encode_header(text)) == text
            assert _decoded(format_address(text, "a@example.jp")) == f"{text} <a@example.jp>"


def test_every_word_is_full_but_never_over_75_characters():
    value = encode_header("あ" * 200)
    words = value.split("\r\n ")
    assert len(words[0]) == 64  # 'Subject: ' leaves 67 columns: 13 characters
    assert {len(w) for w in words[1:-1]} == {72}  # 15 characters = 45 bytes = 60 base64
    assert all(len(w) <= 75 for w in words)


def test_combining_marks_and_emoji_sequences_are_not_cut_between_words():
    family = "👨‍👩‍👧‍👦"
    for text in ["か\u3099" * 40, family * 12, "葛\U000e0100" * 30, "👍🏻" * 30]:
        value = encode_header(text)
        for word in value.split("\r\n "):
            chunk = base64.b64decode(word[10:-2]).decode()
            first = chunk[0]
            assert first not in "\u3099\u200d\U000e0100\U0001f3fb", (text, chunk)


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Newsletter No. 12", "Newsletter No. 12"),
        ("Mail magazine of the Chugoku region council, issue 12 of 2026: events, news and calls "
         "for exhibitors",
         "Mail magazine of the Chugoku region council, issue 12 of 2026:\r\n events, news and "
         "calls for exhibitors"),
    ],
)
def test_plain_ascii_subjects_stay_readable_and_fold_at_spaces(subject, expected):
    assert encode_header(subject) == expected
    _check_raw("Subject", expected)


def test_ascii_that_would_be_mistaken_for_encoding_is_encoded():
    for text in ["=?UTF-8?B?5bGx?=", "  leading spaces", "two  spaces", "tab\there", "x" * 80]:
        value = encode_header(text)
        assert value.startswith("=?UTF-8?B?")
        assert _decoded(value) == text


def test_display_names_choose_atom_quoted_or_encoded():
    assert format_address("Yamada Taro", "t@example.jp") == "Yamada Taro <t@example.jp>"
    assert format_address("Yamada, Taro", "t@example.jp") == '"Yamada, Taro" <t@example.jp>'
    assert format_address("", "t@example.jp") == "t@example.jp"
    assert format_address("山田 太郎", "t@example.jp") == "=?UTF-8?B?5bGx55SwIOWkqumDjg==?= <t@example.jp>"


def test_long_address_moves_to_its_own_line():
    address = "a-very-long-local-part-for-testing." * 2 + "x@example.jp"
    value = format_address("中国地域産学官コラボレーション会議", address)
    assert value.endswith(f"\r\n <{address}>")
    _check_raw("To", value.removesuffix(f"\r\n <{address}>"))  # an address alone may pass 76


def test_addresses_japanese_carriers_idn_and_refusals():
    # Pre-2009 docomo/au local parts break the dot-atom rule: written quoted (RFC 5322 §3.4.1).
    assert format_address("", "taro..yamada.@docomo.ne.jp") == '"taro..yamada."@docomo.ne.jp'
    assert format_address("太郎", ".taro@ezweb.ne.jp") == '=?UTF-8?B?5aSq6YOO?= <".taro"@ezweb.ne.jp>'
    assert format_address("", "info@例え.jp") == "info@xn--r8jz45g.jp"
    assert format_address("", "ユーザー@example.jp", utf8=True) == "ユーザー@example.jp"  # RFC 6532
    bad = ["山田@example.jp", "no-at-sign", "a b@example.jp", "<a@example.jp>", "a@exa mple.jp",
           "taro..yamada@example.jp"]  # the relaxed dot rule is for the carriers' domains only
    for address in bad:
        # (refused by the address rule, its reason is said: helper-92)
        refused = "is not a plain ASCII e-mail address|^To address: invalid e-mail"
        with pytest.raises(InvalidInput, match=refused):
            format_address("山田", address)


@pytest.mark.parametrize("evil", ["件名\r\nBcc: victim@example.com", "件名\nX: y", "件名\rX", "件名\x00"])
def test_line_breaks_and_nul_never_reach_a_header(evil):
    with pytest.raises(InvalidInput, match=r"^Subject contains a line break or NUL character; remove it$"):
        encode_header(evil)
    with pytest.raises(InvalidInput, match=r"^To name contains a line break or NUL character"):
        format_address(evil, "a@example.jp")
    with pytest.raises(InvalidInput, match=r"^To address contains a line break or NUL character"):
        format_address("山田", "a@example.jp" + evil[2:])


_HEADER_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"), min_size=1, max_size=120
)


@settings(max_examples=300, deadline=None)
@given(_HEADER_TEXT)
def test_any_text_round_trips_within_the_limits(text):
    value = encode_header(text)
    _check_raw("Subject", value)
    assert _decoded(value) == text
    _check_raw("From", format_address(text, "news@example.jp", header="From"))
