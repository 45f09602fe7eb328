"""Item Markdown → HTML: what may reach a subscriber's mail reader, and what never does."""

from __future__ import annotations

import pytest

from mailmag.content.markup import to_html, to_text
from mailmag.content.render import markdown_to_text


@pytest.mark.parametrize("hostile", [
    "<script>alert(1)</script>",
    "<SCRIPT SRC=https://evil.example/x.js></SCRIPT>",
    '<img src="x" onerror="alert(1)">',
    '<p onclick="alert(1)">click</p>',
    '<a href="javascript:alert(1)">link</a>',
    '<a href="JaVaScRiPt:alert(1)">link</a>',
    '<a href="jav&#x61;script:alert(1)">link</a>',
    "[link](javascript:alert(1))",
    '<iframe src="https://evil.example/"></iframe>',
    '<object data="https://evil.example/x.swf"></object>',
    '<svg onload="alert(1)"></svg>',
    '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a>',
    '<style>body{background:url("javascript:alert(1)")}</style>',
    '<form action="https://evil.example/"><input name="password"></form>',
])
def test_nothing_executable_survives(hostile):
    html = to_html(f"お知らせ\n\n{hostile}\n")
    lowered = html.lower()
    # Markdown that is not a valid link stays visible as inert text; no attribute may carry a script.
    for forbidden in ("<script", "onerror", "onclick", "onload", 'href="javascript', "<iframe", "<object",
                      "<svg", 'href="data', "<style", "<form", "<input", "alert(1)</", "src="):
        assert forbidden not in lowered, html
    assert "<p>お知らせ</p>" in html


def test_links_keep_http_https_mailto_and_get_rel():
    html = to_html("[詳細](https://example.jp/a) [旧](http://example.jp/b) [連絡](mailto:office@example.jp) "
                   "[ftp](ftp://example.jp/c) [相対](/relative)")
    assert '<a href="https://example.jp/a" rel="noopener noreferrer">詳細</a>' in html
    assert '<a href="http://example.jp/b" rel="noopener noreferrer">旧</a>' in html
    assert '<a href="mailto:office@example.jp" rel="noopener noreferrer">連絡</a>' in html
    # A link that would not work in a mail keeps its words and loses its href.
    assert 'href="ftp:' not in html and 'href="/relative"' not in html
    assert "ftp" in html and "相対" in html


def test_allowed_structure_survives():
    markdown = (
        "# 協議事項\n\n## 報告\n\n**重要** と *強調*\n\n- 一\n- 二\n\n1. 第一\n\n> 引用\n\n---\n\n"
        "`code`\n\n```\npre\n```\n\n| 機関 | 予定 |\n|---|---:|\n| 広島大学 | 7月 |\n"
    )
    html = to_html(markdown)
    # Item headings sit below the and the item's own: # → h3, ## → h4.
    for fragment in ("<h3>協議事項</h3>", "<h4>報告</h4>", "<strong>重要</strong>", "<em>強調</em>",
                     "<ul>", "<li>一</li>", "<ol>", "<blockquote>", "<hr>", "<code>code</code>",
                     "<pre><code>pre\n</code></pre>", "<table>", "<th>機関</th>",
                     '<td style="text-align:right">7月</td>'):
        assert fragment in html, fragment


def test_images_and_unknown_tags_are_dropped_but_their_text_kept():
    html = to_html('<div class="x"><span style="color:red">本文</span><img src="https://example.jp/a.png"></div>')
    assert "本文" in html
    assert "<div" not in html and "<span" not in html and "<img" not in html and "style=" not in html


def test_line_breaks_inside_japanese_sentences_do_not_become_spaces():
    html = to_html("中国地域産学官コラボレーション会議の事務局として，参加機関の取り\n組みを支援する。\n"
                   "English words\nstay apart.")
    assert "取り組みを支援する。" in html
    assert "English words\nstay apart." in html


def assert_kept_as_written(lines: list[str]) -> None:
    """Every break between these lines is a line break in both editions."""
    source = "\n".join(lines)
    assert markdown_to_text(source).split("\n") == lines
    assert to_html(source).count("<br>") == len(lines) - 1


def broken_as(lines: list[str], pattern: str) -> str:
    """The lines with each break kept (K) or joined (J), as `pattern` says, one letter a break."""
    expected = lines[0]
    for sep, line in zip(pattern, lines[1:], strict=True):
        expected += ("\n" if sep == "K" else "") + line
    return expected


def assert_joined(lines: list[str]) -> None:
    """These lines are one line in both editions, joined with nothing between them."""
    source = "\n".join(lines)
    assert markdown_to_text(source) == "".join(lines)
    assert "<br>" not in to_html(source)


NOTICE = ("日時：2026年12月10日（木）13:30〜\n場所：広島国際会議場\n参加費：無料\n"
          "申込方法：下記のフォームから、所属、氏名、連絡先を添えてお申し込みください\n\n"
          "本シンポジウムは、産学官の連携を一層深めるため、毎年各県持ち回りで開催してい\n"
          "るものです。\n申込は下記のとおりです。\n・会員　無料\n・一般　1,000円\n\n"
          "広島大学 産学連携推進部\n山田 太郎\n\nSee you\nthere.")


def test_lines_typed_one_by_one_stay_lines_in_both_editions():
    """helper-70: a notice typed line by line (日時：… / 場所：…) was joined into one run-on line,
    日時：2026年12月10日（木）13:30〜場所：広島国際会議場参加費：無料, in the mail and its text
    edition alike. A line ending a sentence, one before a list mark or a label, and the lines
    of a paragraph of short lines stay lines; a PDF's wrap mid-word is still joined."""
    html = to_html(NOTICE)
    assert "13:30〜<br>\n場所：広島国際会議場<br>\n参加費：無料<br>\n申込方法：" in html
    assert "開催しているものです。<br>\n申込は下記のとおりです。<br>\n・会員　無料<br>\n・一般　1,000円" \
        in html
    assert "産学連携推進部<br>\n山田 太郎" in html and "See you\nthere." in html
    text = markdown_to_text(NOTICE)
    assert text.splitlines()[:3] == ["日時：2026年12月10日（木）13:30〜", "場所：広島国際会議場",
                                     "参加費：無料"]
    assert "開催しているものです。\n申込は下記のとおりです。\n・会員　無料\n・一般　1,000円" in text
    assert "広島大学 産学連携推進部\n山田 太郎" in text and "See you there." in text


def test_the_line_after_a_short_item_stays_a_line_of_its_own_in_both_editions():
    """helper-87: the line after a ・ or ※ item was joined into it (・展示B詳しくは事務局まで。) in a
    paragraph with a long line, in the mail and its text edition alike. An item wrapped by a PDF
    (as wide as the paragraph's widest line) still takes its next line as its own continuation."""
    source = ("出展者を募集します。募集する区分は次のとおりで、いずれも先着順に受け付けます。\n"
              "・展示A\n・展示B\n詳しくは事務局までお問い合わせください。\n"
              "※先着順\n申込は事務局へ。\n"
              "・出展料は一区画につき三万円とし、請求書は会期の終了後に事務局から各出展者へ送\n"
              "付します。")
    html = to_html(source)
    assert "・展示B<br>\n詳しくは事務局まで" in html and "※先着順<br>\n申込は事務局へ。" in html
    assert "各出展者へ送付します。" in html
    text = markdown_to_text(source)
    assert "・展示B\n詳しくは事務局までお問い合わせください。\n※先着順\n申込は事務局へ。" in text
    assert "各出展者へ送付" in text.replace("\n", "")
    assert "送\n付" not in text


@pytest.mark.parametrize(("source", "lines"), [
    # a short block opening with a mark, its first line the widest: nothing shows a wrap width
    ("〒690-0826 島根県松江市学園南1-2-1\nくにびきメッセ",
     ["〒690-0826 島根県松江市学園南1-2-1", "くにびきメッセ"]),
    ("（1）開会挨拶\u3000中国経済連合会 会長\n山田 太郎",
     ["（1）開会挨拶\u3000中国経済連合会 会長", "山田 太郎"]),
    ("【講演1】「地域イノベーションの現在」\n広島大学 教授 山田太郎 氏\n【講演2】「産学連携の実践」\n"
     "島根大学 准教授 佐藤花子 氏",
     ["【講演1】「地域イノベーションの現在」", "広島大学 教授 山田太郎 氏", "【講演2】「産学連携の実践」",
      "島根大学 准教授 佐藤花子 氏"]),
    # short lines in a row under a wide one: an address's
    ("〒730-0011 広島県広島市中区基町10-52\n広島県商工労働局\nイノベーション推進チーム\n担当：山田",
     ["〒730-0011 広島県広島市中区基町10-52", "広島県商工労働局", "イノベーション推進チーム", "担当：山田"]),
    # a list indented by the PDF, its lines narrower than the body's: still wraps, joined
    ("本会議では、参加機関の皆様から提出いただいた提案をもとに、次\n年度の重点テーマについて検討を行いました。"
     "主な意見は次のとお\nりです。\n・地域企業の技術ニーズを把握するための調査を継続し、大\n"
     "学の研究シーズとのマッチングを強化すべきである。",
     ["本会議では、参加機関の皆様から提出いただいた提案をもとに、次年度の重点テーマについて検討を行いました。"
      "主な意見は次のとおりです。",
      "・地域企業の技術ニーズを把握するための調査を継続し、大学の研究シーズとのマッチングを強化すべきである。"]),
    # an item cut before its particle is a wrap, however wide the paragraph's other lines
    ("出展の申込みは、所定の申込書に必要事項をご記入の上、事務局まで提出してください。\n"
     "・出展料：1小間につき30,000円（税込）。ただし、会員企業\nは20,000円となります。",
     ["出展の申込みは、所定の申込書に必要事項をご記入の上、事務局まで提出してください。",
      "・出展料：1小間につき30,000円（税込）。ただし、会員企業は20,000円となります。"]),
    # an indented line is the writer's: aligned under a label, or a hanging indent
    ("場所：くにびきメッセ（島根県立産業交流会館）\n\u3000\u3000\u3000島根県松江市学園南1-2-1",
     ["場所：くにびきメッセ（島根県立産業交流会館）", "\u3000\u3000\u3000島根県松江市学園南1-2-1"]),
    # an English sentence's end, or a URL, then Japanese
    ("Please register at the website below.\n詳細はWebサイトをご覧ください。",
     ["Please register at the website below.", "詳細はWebサイトをご覧ください。"]),
    ("申込みは以下のURLからお願いします。\nhttps://example.jp/events/symposium-2027/registration?lang=ja\n"
     "締切は８月３１日です。",
     ["申込みは以下のURLからお願いします。", "https://example.jp/events/symposium-2027/registration?lang=ja",
      "締切は８月３１日です。"]),
])
def test_lines_of_their_own_and_wraps_come_out_as_a_reader_expects(source, lines):
    """helper-89: short blocks opening with 〒, （1）, 【…】 or ▼ ran together when their marked line
    was the widest; an address's lines under a wide one too; a PDF list indented by a character
    was cut mid-word (大 / 学); an aligned continuation's 全角 spaces landed mid-sentence; a line
    after an English sentence or a URL was joined to it. Both editions."""
    assert markdown_to_text(source).split("\n") == lines
    html = to_html(source)
    assert html.count("<br>") == len(lines) - 1, html


@pytest.mark.parametrize("lines", [
    # a wrap that puts 【別紙】 or （1） at a line's start, mid-sentence
    ["本会議では、参加機関の皆様から提出いただいた提案について協議を行",
     "いました。主な論点と今後の進め方についての検討結果については、",
     "【別紙】の方針案が示され、参加機関の間で意見交換を行いました。次", "回は来年一月に開催する予定です。"],
    ["本会議では、参加機関の皆様から提出いただいた提案について協議を行",
     "いました。その際に事務局から示された資料として、次年度の計画案と",
     "（1）から（3）の様式が挙げられました。"],
    # names (佐藤　次郎) and the 全角 space between them, at a wrap
    ["本会議に出席したのは、中国経済連合会の山田　太郎、広島大学の理事",
     "佐藤　次郎、産業技術総合研究所の所長　鈴木　花子、経済産業局の局長", "　高橋　一郎の各氏です。"],
    # a URL or an English sentence's end, then the particle that goes on with it
    ["本会議の資料は、事務局のウェブサイト https://example.jp/",
     "に掲載しておりますので、ご確認いただきますようお願いいたします。"],
    ['本シンポジウムの基調講演の演題は"Open Innovation."', "です。多くの皆様のご参加をお待ちしております。"],
])
def test_a_pdfs_wrap_mid_sentence_is_joined_whatever_starts_the_next_line(lines):
    """helper-91: breaks kept mid-sentence where a PDF's wrap put a list mark, a name with its
    全角 space, or a particle after a URL or an English sentence at a line's start."""
    assert_joined(lines)


@pytest.mark.parametrize("lines", [
    # lists of full-width items: a 全角 space after ア, 一, 第１; ①; （ア）; after an intro line without 。
    ["本日の企画会議では、次の事項について協議を行いました。主な議題は以下のとおり",
     "ア　地域イノベーション創出に向けた産学官連携の推進体制の強化について",
     "イ　中国地域における研究開発拠点の整備と人材育成プログラムの展開について",
     "ウ　次年度の重点テーマと予算配分に関する検討及び意見交換の実施について"],
    ["一　地域イノベーション創出に向けた産学官連携の推進体制の強化について",
     "二　中国地域における研究開発拠点の整備と人材育成プログラムの展開について",
     "三　次年度の重点テーマと予算配分に関する検討及び意見交換の実施について"],
    ["①地域イノベーション創出に向けた産学官連携の推進体制の強化について",
     "②中国地域における研究開発拠点の整備と人材育成プログラムの展開", "③次年度の重点テーマ"],
    ["（ア）地域イノベーション創出に向けた産学官連携の推進体制の強化について",
     "（イ）中国地域における研究開発拠点の整備と人材育成プログラムの展開", "（ウ）次年度の重点テーマ"],
    ["本会議では以下の事項について協議を行い、いずれも原案のとおり承認されました",
     "・令和8年度事業計画案及び中国地域産学官連携推進ビジョンの改定について",
     "・令和8年度収支予算案及び会費の改定に関する事務局案の取扱いについて",
     "・次期シンポジウムの開催地及び開催時期並びに重点テーマの選定について"],
    # labels with a 全角 space for the colon, after intro lines without 。
    ["中国地域産学官コラボレーション会議の第３回企画会議を下記のとおり開催します",
     "なお、今回は会場とオンラインを併用したハイブリッド形式での開催となります",
     "日時　令和8年12月10日（木）14:00～16:00", "場所　中国経済連合会 会議室"],
    # a URL, then a sentence that begins in hiragana
    ["本シンポジウムの申込フォームは次のURLです https://example.jp/events/symposium-2027",
     "なお、定員に達し次第締め切りますので、お早めにお申し込みください。"],
    # helper-93: the last of a two-item list or label block (no next line to show it), 〇 and ⑴
    # items, a URL on a line of its own after a short intro, a signature's name under its 〒 line
    ["総会の議事は次のとおり進行し、いずれの議案も原案のとおり承認可決されました。",
     "第１号議案\u3000令和５年度事業報告及び収支決算承認の件について、監事の監査報告を受けて",
     "第２号議案\u3000令和６年度事業計画及び収支予算決定の件について、原案どおり承認された"],
    ["募集する出展者は、次のいずれにも該当する者とし、１社につき１小間までとします。",
     "１\u3000県内に本社又は主たる事業所を有する中小企業者で、自社製品を出展できるもの",
     "２\u3000県税等の滞納がなく、暴力団等の反社会的勢力と関係を有しないもの"],
    ["募集する出展者は、次のいずれにも該当する者とし、１社につき１小間までとします",
     "〇県内に本社又は主たる事業所を有する中小企業者で、自社製品を出展できるもの",
     "〇県税等の滞納がなく、暴力団等の反社会的勢力と関係を有しないもの"],
    ["⑴県内に本社又は主たる事業所を有する中小企業者で、自社製品を出展できるもの",
     "⑵県税等の滞納がなく、暴力団等の反社会的勢力と関係を有しないもの"],
    ["お申込みはこちら", "https://forms.example.jp/seminar/2024/entry?id=12345"],
    ["株式会社山陰テクノロジーソリューションズ\u3000経営企画部",
     "〒690-0887\u3000島根県松江市殿町8番地3\u3000島根県産業会館4階", "山田\u3000太郎"],
])
def test_lists_and_labels_after_a_wide_line_stay_lines_of_their_own(lines):
    """helper-92: 0cd061c read ア　/ イ　/ ウ　 items and 日時　 labels after a wide line as names
    and ran them together; ①, Ⅰ． and （ア） were no list marks; a list's first ・ item and a
    なお、 sentence after a URL were joined to the line before."""
    assert_kept_as_written(lines)


@pytest.mark.parametrize("lines", [
    # a label longer than six characters after a sentence whose 。 was left off
    ["会場には駐車場がありませんので、公共交通機関をご利用いただきますようご注意ください",
     "お問い合わせ先\u3000中国地域産学官コラボレーション会議事務局"],
    # a schedule's lines, led by a date or a time and a space
    ["今後の開催予定は次のとおりです", "7月24日（水）\u3000第２回企画会議（広島市）",
     "9月11日（水）\u3000第３回企画会議（松江市）", "11月20日（水）\u3000産学官連携シンポジウム（岡山市）"],
    ["本年度の企画会議は、各県持ち回りで次の日程により開催することとなりました",
     "７月２４日（水）\u3000第２回企画会議", "９月１１日（水）\u3000第３回企画会議"],
    ["当日のプログラムは以下のとおりです。", "13:30～13:40\u3000開会挨拶",
     "13:40～14:40\u3000基調講演「地域イノベーションの現在」", "14:50～16:00\u3000パネルディスカッション"],
    # a signature: its first line the widest, or two of its lines as wide as a wrap
    ["中国地域産学官コラボレーション会議事務局", "島根県松江市殿町１番地\u3000島根県商工労働部内",
     "担当\u3000山田"],
    ["中国地域産学官コラボレーション会議事務局（中国経済連合会内）", "島根県松江市殿町１番地",
     "担当\u3000山田"],
    ["島根県商工労働部産業振興課（産学官連携推進室内）", "島根県松江市殿町１番地", "TEL 0852-22-0000"],
])
def test_a_signature_a_schedule_and_a_long_label_keep_their_lines(lines):
    """helper-93: each of these ran into the line before it, in both editions."""
    assert_kept_as_written(lines)


@pytest.mark.parametrize("lines", [
    ["本会議で示された資料は、次年度の事業計画案のうち（1）から",
     "（3）までの様式であり、各機関で確認することとされた。"],
    ["会議の終了後、事務局から", "【別紙】のとおり今後の日程が示された。"],
    ["７月２４日（水）に開催された企画会議では、次年度の計画について", "13:30 から協議を行いました。"],
    # prose that mentions a phone number is no signature
    ["お問い合わせは中国地域産学官コラボレーション会議事務局（電話 082-000-0000）ま", "でお願いいたします。"],
])
def test_a_reference_to_an_item_or_a_time_at_a_wrap_is_joined(lines):
    """helper-93: a two-line paragraph shows no wrap width, and its break before （3）までの… was
    kept as if a list began there."""
    assert_joined(lines)


@pytest.mark.parametrize("lines", [
    # an address, a date, a time or a polite end inside a wrapped sentence (today's rules read them
    # as a signature, a schedule, a label)
    ["参加を希望される方は7月10日（水）までに所定の申込書に必要事",
     "項を記入のうえ事務局（kikaku@example.jp）あて電子メールにて", "お申し込みください"],
    ["本研究会では地域経済の現状について報告を行った．詳細は報告書を参照され",
     "たい．問合せ先は研究会事務局（ken@example.ac.jp）までとする．次回の研", "究会は秋に開催予定である"],
    ["本年度の総会につきましては、下記のとおり開催いたしますので、会員の皆様には",
     "7月24日（水） 午後1時30分から市民会館大ホールにお集まりいただきますようお願い", "申し上げます。"],
    ["当日の受付は正面玄関横の総合案内にて行いますので、開演の三十分前となる午後",
     "13:30 頃までにお越しいただき、受付にて参加証をお受け取りくださいますようお願", "いいたします。"],
    ["当日は会長が所用により欠席となり、開会の挨拶は副会長が代理で行う予定です",
     "ので当日は副会長\u3000佐藤次郎よりご挨拶申し上げます。"],
    ["本研修会は会員団体の職員を対象としておりますが、会員以外の方でも参加できます",
     "ので、関心のある方はぜひお誘い合わせの上ご参加ください。"],
    ["本年度の事業計画については、理事会において審議した結果、重点事業である",
     "①から③までの事業を中心に予算を配分することとし、総会に諮ることとした。"],
    ["本年度の事業計画については、理事会において審議した結果、重点事業である",
     "（1）及び（2）の事業を中心に予算を配分することとし、総会に諮ることとした。"],
])
def test_an_address_a_date_or_a_polite_end_inside_a_wrapped_sentence_is_joined(lines):
    """helper-96: 0467ebf's rules kept these breaks (必要事 / 項を記入…), and ので、 after a
    polite end was read as a new sentence's conjunction."""
    assert_joined(lines)


@pytest.mark.parametrize("lines", [
    ["（1）地域づくり活動の担い手の育成に関する事業として研修会を年三回開催する",
     "（2）にぎわい創出のための商店街連携イベントを各地域において年二回開催する",
     "（3）情報発信のためのメールマガジンを毎月発行し、会員団体の活動を紹介する"],
    ["7/24（水）\u3000第2回企画会議（市役所本庁舎3階第1会議室にて午後開催予定）",
     "8/21（水）\u3000第3回企画会議（市役所本庁舎3階第1会議室にて午後開催予定）",
     "9/18（水）\u3000第4回企画会議（市役所本庁舎3階第1会議室にて午後開催予定）"],
    ["7月24日（水）～26日（金）\u3000夏季研修会（県立青少年の家にて二泊三日で実施）",
     "8月21日（水）～23日（金）\u3000秋季研修会（県立青少年の家にて二泊三日で実施）"],
    ["午前10時～\u3000受付開始（市民会館1階ロビーにて参加証をお渡しします）",
     "午前10時30分～\u3000開会式（市民会館大ホールにて会長挨拶、来賓祝辞）",
     "午後1時～\u3000分科会（市民会館各会議室にてテーマ別に意見交換を行います）"],
    ["8月3日（土） ふるさと夏祭り（松江市総合運動公園多目的広場ほか市内三会場）",
     "8月4日（日） ふれあいコンサート（松江市総合文化センター大ホールにて開催）",
     "8月5日（月） まちあるきツアー（松江城周辺の城下町を地元ガイドと歩きます）"],
    ["13:30 あいさつ（島根県地域づくり推進協議会会長\u3000佐藤次郎、島根県知事）",
     "13:40 基調講演「人口減少時代の地域づくり」島根大学教授\u3000山田太郎氏",
     "15:00 おわりに（島根県地域づくり推進協議会副会長\u3000鈴木一郎より閉会挨拶）"],
    # a contact block after the paragraph's sentence; a signature line that starts in hiragana
    ["本件に関する詳細につきましては、下記の担当までお気軽にお問い合わせください。",
     "島根県地域振興部地域振興課\u3000地域づくり推進スタッフ\u3000担当\u3000山田太郎",
     "島根県松江市殿町1番地\u3000島根県庁南庁舎3階\u3000電話番号0852-22-1234",
     "電子メール\u3000chiiki@pref.shimane.example.jp"],
    ["お問い合わせ先", "しまね地域づくり推進協議会事務局", "〒690-0826\u3000松江市学園南1丁目2-1",
     "くにびきメッセ3階", "TEL：0852-22-1234", "E-mail：info@example.jp"],
])
def test_items_schedules_and_contact_blocks_as_members_write_them_keep_their_lines(lines):
    """helper-96: an item starting in hiragana (（2）にぎわい…) was read as a reference and the list
    ran together; slash dates, date ranges, 午前/午後 times and a half-width space before a word in
    hiragana were no schedule; a contact block after a sentence, and a signature line in hiragana
    under a short one, were joined."""
    assert_kept_as_written(lines)


@pytest.mark.parametrize(("lines", "pattern"), [
    # a date or a time alone in a paragraph is a sentence's, not a schedule's (K: kept, J: joined)
    (["7月24日（水）\u3000第２回企画委員会を開催し、次年度の事業計画（案）について協",
      "議しました。"], "J"),
    (["13:30～\u3000受付開始（会場１階ロビーにて、参加者名簿の確認と資料の配",
      "布を行います）"], "J"),
    (["第２回企画委員会は、次のとおり開催いたします。会議は",
      "7月24日（水） 13時30分から松江市内で開催の予定です。"], "J"),
    (["今後の開催予定は次のとおりです", "7月24日（水）\u3000第２回企画会議（広島市）"], "K"),
    # prose without 。 before a signature, and a signature line in hiragana after a polite end
    (["当日の資料につきましては、協議会ホームページに掲載しておりますので、各自",
      "印刷の上ご持参くださいますよう、よろしくお願いいたします", "事務局\u3000担当：山田",
      "TEL：0852-22-1234"],
     "JKK"),
    (["参加を希望される方は、所定の申込書に必要事項をご記入のうえ、7月10日",
      "（水）までに、下記の事務局あてに電子メールまたはＦＡＸでお申し込み", "ください",
      "しまね地域づくり協議会事務局", "担当：山田", "E-mail：info@shimane-chiiki.jp"], "JJKKK"),
    (["出欠については、同封の返信用はがき又は電子メールにより、7月10日（水）",
      "までに事務局あてにご回答いただきますよう、よろしくお願いいたします",
      "（担当：地域づくり推進課\u3000山田）", "E-mail：info@shimane-chiiki.jp"], "JKK"),
    (["ご不明な点がございましたら、お気軽にお問い合わせください", "しまね地域づくり協議会事務局",
      "担当：山田、佐藤", "TEL：0852-22-1234"], "KKK"),
    # lines of minutes that each open with a reference to an item are a list
    (["（1）地域資源を生かした交流人口の拡大に向けた取組の在り方について",
      "（2）より一層の連携強化に向けた会員相互の情報共有の在り方について",
      "（3）次年度の事業計画（案）及び予算（案）の策定スケジュールについて"], "KK"),
    (["①の事業については、事務局から説明があり、原案どおり承認された",
      "②の事業については、委員から修正意見が出され、再度検討することとした",
      "③の事業については、次回の委員会で改めて協議することとした"], "KK"),
    (["【Ａ委員】から、空き店舗の活用について具体的な事例を示してほしいとの意見があった",
      "【事務局】から、次回の委員会で県内外の事例を紹介する旨の回答があった",
      "【Ｂ委員】より、若者の参画を促す仕組みが必要ではないかとの意見があった"], "KK"),
])
def test_dates_references_and_signatures_are_read_with_the_rest_of_their_paragraph(lines, pattern):
    """helper-98: 8e78dfc's date and reference rules read a two-line paragraph's date as a
    schedule (…協 / 議しました。 kept its break) and a list of ①の事業… lines as references run
    together; a signature after prose without 。 took the prose with it (各自 / 印刷の上…)."""
    expected = broken_as(lines, pattern)
    assert markdown_to_text("\n".join(lines)) == expected
    assert to_html("\n".join(lines)).count("<br>") == pattern.count("K")


@pytest.mark.parametrize(("lines", "pattern"), [
    (["会員の皆様におかれましては、本総会の趣旨をご理解のうえ、ご協力ください",
      "ますよう、お願い申し上げます。なお、当日は駐車場に限りがありますので",
      "、公共交通機関をご利用いただきますようお願いいたします。"], "JJ"),
    (["先般、会員の皆様に本年度の研修会について参加希望調査を行いました",
      "ところ、多数のお申し込みをいただき、誠にありがとうございました。つきま",
      "しては、下記のとおり開催いたしますのでお知らせします。"], "JJ"),
    (["本年度の総会は、会員の皆様のご協力により無事に終えることができました",
      "つきましては、総会の議事録を別添のとおり送付いたしますので、ご確認の",
      "ほどよろしくお願いいたします。"], "KJ"),
    (["当日は、地域の特産品を使った軽食コーナーも設ける予定です",
      "ぜひ多くの皆様のご参加をお待ちしております。"], "K"),
])
def test_a_polite_end_goes_on_in_hiragana_or_a_new_sentence_begins(lines, pattern):
    """helper-98: any four hiragana and a 、 after a polite end were read as a sentence's opening
    conjunction (…ください / ますよう、 kept its break), and つきましては or ぜひ were not."""
    expected = broken_as(lines, pattern)
    assert markdown_to_text("\n".join(lines)) == expected


@pytest.mark.parametrize("lines", [
    ["13時30分～13時40分\u3000開会挨拶（しまね地域づくり協議会会長）",
     "13時40分～14時40分\u3000基調講演「地域とともに歩む協議会の未来」", "16時00分\u3000閉会"],
    ["7月24日（水）13:30～\u3000第２回企画委員会（くにびきメッセ3階小会議室）",
     "8月 7日（水）10:00～\u3000現地視察研修会（雲南市木次町周辺を予定）"],
    ["7月24日（水）第２回企画委員会（くにびきメッセ3階小会議室にて開催）",
     "8月7日（水）現地視察研修会（雲南市木次町周辺を予定しています）"],
    ["午前10時～正午\u3000分科会（第１分科会から第３分科会まで同時に開催します）",
     "正午～午後1時\u3000昼食・休憩（会場内のレストランをご利用いただけます）"],
])
def test_programs_and_schedules_in_the_other_ways_they_are_written_keep_their_lines(lines):
    """helper-98: 13時30分～, a date and a time together, a date and its text with no space, 8月 7日
    aligned with a space, and 正午 were no schedule, and their lines ran together."""
    assert_kept_as_written(lines)


def test_english_wrapped_before_a_time_is_joined_with_a_space():
    """helper-96: "…starting at" / "10:00 AM on…" kept its break as if a program's line began."""
    lines = ["The general assembly of the council will be held at the city hall, starting at",
             "10:00 AM on Wednesday, July 24, and all members are welcome to attend."]
    assert markdown_to_text("\n".join(lines)) == " ".join(lines)
    assert "<br>" not in to_html("\n".join(lines))


def test_a_long_url_line_does_not_set_the_width_the_wraps_below_it_are_read_at():
    """helper-92: a line holding a long URL was the widest, so the PDF's wraps under it looked
    short and were kept (取り / 組んできた)."""
    source = ("プログラムの詳細は https://www.example.jp/events/2027/symposium/program-detail.html "
              "をご覧ください。\n"
              "本シンポジウムでは、中国地域の大学、高等専門学校、公設試験研究機関が連携して取り\n"
              "組んできた共同研究の成果を紹介するとともに、企業の皆さまとの意見交換の場を設けま\n"
              "す。多くの皆さまのご参加をお待ちしております。")
    text = markdown_to_text(source)
    assert text.split("\n")[1] == (
        "本シンポジウムでは、中国地域の大学、高等専門学校、公設試験研究機関が連携して取り組んできた"
        "共同研究の成果を紹介するとともに、企業の皆さまとの意見交換の場を設けます。"
        "多くの皆さまのご参加をお待ちしております。")
    assert to_html(source).count("<br>") == 1


def test_a_written_out_url_is_a_link_in_the_html_edition_without_the_japanese_around_it():
    """helper-89: a URL in an item's body was no link in the HTML edition; a mail program that
    links it itself may take 「をご覧ください。」 into it."""
    html = to_html("詳細はhttps://example.jp/sympo?a=1&b=2をご覧ください。\n\n"
                   "（https://example.jp/x）と (see https://example.jp/y). `https://example.jp/code`\n\n"
                   "[案内](https://example.jp/z) <a href=\"https://example.jp/w\">https://example.jp/w</a>")
    assert ('詳細は<a href="https://example.jp/sympo?a=1&amp;b=2" rel="noopener noreferrer">'
            "https://example.jp/sympo?a=1&amp;b=2</a>をご覧ください。") in html
    assert '（<a href="https://example.jp/x" rel="noopener noreferrer">https://example.jp/x</a>）' in html
    assert '(see <a href="https://example.jp/y" rel="noopener noreferrer">https://example.jp/y</a>).' in html
    assert "<code>https://example.jp/code</code>" in html  # code is shown as written
    assert html.count("<a ") == 5 and "<a href=\"https://example.jp/z\"" in html  # no link inside a link
    assert markdown_to_text("詳細はhttps://example.jp/sympoをご覧ください。") == \
        "詳細はhttps://example.jp/sympoをご覧ください。"
    # helper-91: a run of ')' after a URL was trimmed one count at a time (100 000: 5 s a render)
    assert to_html("http://a" + ")" * 100_000).startswith('<p><a href="http://a" rel="noopener noreferrer">'
                                                        "http://a</a>)))")


def test_an_indented_list_keeps_the_indent_of_its_first_line_too():
    """helper-89: Markdown strips a paragraph's leading 全角 spaces on its first line only, so an
    indented list came out uneven in both editions (and a 字下げ stayed on later lines only)."""
    source = "\u3000・出展料：1小間30,000円\n\u3000・申込締切：8月31日\n\u3000※会員企業は20,000円"
    assert markdown_to_text(source).split("\n") == source.split("\n")
    assert to_html(source).startswith("<p>\u3000・出展料：1小間30,000円<br>\n\u3000・申込締切")
    assert markdown_to_text("> \u3000引用\n\n- 項目") == "> 引用\n\n・項目"  # a quote's and a list's own


def test_a_link_pasted_as_html_shows_where_it_points_in_the_plain_edition():
    """helper-90: <a href="https://evil.example/">公式</a> from an organization showed 公式 alone in
    text/plain (a Markdown link shows its address); the HTML edition kept the link."""
    source = '詳細は<a href="https://evil.example/">公式</a>、<a href=\'javascript:alert(1)\'>x</a>まで。'
    assert markdown_to_text(source) == "詳細は公式 (https://evil.example/)、xまで。"  # as the HTML keeps it
    assert '<a href="https://evil.example/"' in to_html(source) and "javascript" not in to_html(source)


def test_the_reference_articles_headings_stay_above_their_paragraphs(reference_text):
    """The same rule on the council's real article: （1）… and ＜報告・情報提供＞ head the paragraph
    under them, and ran into its first sentence."""
    text = markdown_to_text(reference_text)
    assert "（1）シンポジウム「地域イノベーション創出2012」の開催について\n" in text
    assert "＜報告・情報提供＞\n" in text


def test_a_time_or_a_cut_url_at_a_wrap_is_not_a_label():
    """helper-73: a second _LABEL in text_ja took the place of the line-break rule's, and a time
    (13:30) or a URL cut by a wrap (ttps://) read as a label, so a PDF's wrap was kept mid-word."""
    wide = "参加をご希望の方はお早めにお申し込みください。受付は正午より開"
    assert "開始し" in to_html(f"{wide}\n始し、13:00から開会、閉会は17:00を予定しております")
    assert "<br>" not in to_html("当日は混雑が予想されますので、時間に余裕をもって会場までお越しください\n"
                                 "13:30までにお越しください")
    assert "<br>" not in to_html("総会の資料と当日の議事次第につきましては、詳細はh\n"
                                                "ttps://example.jp/をご覧ください")
    assert "<br>" in to_html(f"{wide}\n申込締切日（必着）：12月1日")


def test_a_wrapped_paragraph_that_opens_with_a_label_is_joined():
    """helper-72 F5: a PDF paragraph whose first line began 概要： kept every later wrap (the line
    after a labelled line stayed a line, and the one after that ...); 3.5倍 at a wrap read as a
    list's number 3."""
    paragraph = ("概要：本会議では、中国地域における産学官連携の現状と課題について報告が\n"
                 "あり、参加機関の間で今後の取り組みの方向性について活発な意見交換が行わ\n"
                 "れました。なお、昨年度と比べて参加者数は大きく増え、申込はおよそ前年の\n"
                 "3.5倍となりました。")
    html, text = to_html(paragraph), markdown_to_text(paragraph)
    for edition in (html, text):
        assert "報告があり、参加機関" in edition and "行われました。なお" in edition
    assert "<br>" not in html and "前年の3.5倍" in html  # a wrap, joined
    assert text.splitlines() == [paragraph.replace("\n", "")]
    typed = "講師：山田 太郎\n中国経済連合会 会長\n\n1.はじめに\n2.報告"
    assert "講師：山田 太郎<br>\n中国経済連合会 会長" in to_html(typed)
    assert "1.はじめに<br>\n2.報告" in to_html(typed)


def test_a_code_span_across_lines_keeps_the_breaks_around_it():
    """helper-73 F3: the lines were read from the source, and a code span (or a link title)
    holding a newline made one line more than the breaks: every kept break was then dropped."""
    source = "日時：12月10日\n会場：`広島\n国際会議場`\n参加費：無料"
    html = to_html(source)
    assert "日時：12月10日<br>\n会場：" in html and "</code><br>\n参加費：無料" in html
    assert markdown_to_text(source).splitlines() == ["日時：12月10日", "会場：広島 国際会議場",
                                                     "参加費：無料"]


def test_a_pasted_br_at_a_lines_end_is_one_break():
    """helper-73 F4: '<br>' then a newline, as pasted from a web page, became two breaks."""
    html = to_html("日時：12月10日<br>\n会場：広島")
    assert "12月10日<br>\n会場：広島" in html and "<br><br>" not in html


def test_quotes_and_dashes_between_english_words_are_not_japanese():
    """helper-73 F5: “ ” — … are ambiguous-width; in a paragraph of short English lines they
    made the break between two words a kept line."""
    assert "<br>" not in to_html("He said “yes”\nand left…\nfor good")
    assert "中国地域<br>\n産業振興会議" in to_html("中国地域\n産業振興会議")


def test_a_wrap_after_bold_or_a_link_between_japanese_leaves_no_space():
    """helper-73 F7: the HTML edition kept a space where a wrap followed **bold** or a link (it
    looked only at the tokens right beside the break), while the text edition joined them."""
    wrapped = ("参加申込の締切は、例年より早く**十二月一日（火）正午**\nとなっておりますので、"
               "お早めにお申し込みください。詳しくは事務局のウェブサイトの[開催案内](https://a.jp)\n"
               "をご覧ください。")
    html = to_html(wrapped)
    assert "正午</strong>となって" in html and "開催案内</a>をご覧" in html


def test_notice_labels_as_secretariats_write_them_keep_their_lines():
    """helper-74: 日　時： (a 全角 space inside), a long label, and 日時　… (a 全角 space for the
    colon) were not labels, so a notice with one wide line became one run-on line; 午後1:30 in a
    PDF's wrapped line read as a label and kept the wrap; （…のとおり。） and ．did not end a sentence."""
    spaced = ("日　時：2027年9月9日（木）13:00〜17:30（受付開始 12:30）\n会　場：くにびきメッセ 国際会議場\n"
              "参加費：無料")
    long_label = ("日時：2027年9月9日（木）13:00〜17:30\n"
                  "会場：くにびきメッセ 国際会議場（島根県松江市学園南1-2-1）\n"
                  "お問い合わせ・お申し込み先：中国経済連合会 産業振興部")
    no_colon = "日時　2027年9月9日（木）13:00〜17:30（受付開始 12:30）\n会場　くにびきメッセ\n定員　先着100名"
    for source in (spaced, long_label, no_colon):
        lines = source.split("\n")
        assert markdown_to_text(source).splitlines() == lines
        assert "<br>\n".join(lines) in to_html(source)
    wrapped = ("本研究会は、中国地域の企業と大学が共同で運営しており、本年度の活動についてご報告いたしま\n"
               "す。本年度は午後1:30から広島国際会議場にて成果報告会を開催いたしますので、ご参加くださ\n"
               "い。")
    assert "<br>" not in to_html(wrapped) and len(markdown_to_text(wrapped).splitlines()) == 1
    ends = "詳細は別紙のとおりです（資料1を参照のこと。）\n次に，今後の予定を示す．\n以上．"
    assert markdown_to_text(ends).splitlines() == ends.split("\n")


def test_labels_spaced_before_the_colon_and_contact_lines_keep_their_lines():
    """helper-76: 日時 : … (a space before the colon) and TEL 082-… lines were run together."""
    notice = ("下記のとおりセミナーを開催します。\n日時 : 2026年12月10日（木）13:30～16:00\n"
              "場所 : 広島県立産業会館 西展示館2階 第1会議室（広島市南区比治山本町12-18）\n参加費 : 無料\n\n"
              "お問い合わせ先：中国経済連合会 産業振興部 山田\nTEL 082-000-0000\nFAX 082-000-0001")
    assert markdown_to_text(notice).split("\n") == [line for line in notice.split("\n")]
    assert to_html(notice).count("<br>") == 5


def test_a_wrapped_line_that_starts_like_a_label_stays_joined():
    """helper-77: a3de4a7 broke 携帯 / 電話 3台 (a word split by the wrap), は次のとおり : … and
    Email … at the start of a PDF's wrapped line."""
    first = "中国地域の産学官連携を推進するために設立された協議会の事務局として、参加機関を支援しており、"
    for wrapped in ("…通信機器と、携帯\n電話 3台を用いた実証実験を行い、その結果について報告がありました",
                    "本会議における主な論点\nは次のとおり : 第一に、産学連携の推進体制の強化が挙げられます。",
                    "…担当者まで電子メール\nEmail info@example.jp にてお申し込みください。締切は一日です",
                    "…スマートフォンやタブレット、\n携帯 (ガラケー) を対象とした調査を実施しました。結果は"):
        # (the wrapped line as wide as a wrap: two short lines in a row are a writer's, helper-89)
        source = f"{first}\n{first}{wrapped.lstrip('…')}"
        assert "<br>" not in to_html(source), wrapped
        assert len(markdown_to_text(source).splitlines()) == 1, wrapped
    assert to_html("お問い合わせ先\nFAX (082) 000-0001").count("<br>") == 1


def test_br_in_any_form_and_inline_tags_agree_in_both_editions():
    """helper-76: <br clear="all"> and </br> (a <br> to the sanitizer) broke the HTML line only;
    an inline tag beside a wrap left a space in the HTML; a space after a <br> began the text line."""
    for source, lines in (("日時：12月10日<br clear=\"all\">場所：広島", ["日時：12月10日", "場所：広島"]),
                          ("一行目です</br>二行目です", ["一行目です", "二行目です"]),
                          ("あいう<br/> えお", ["あいう", "えお"])):
        assert markdown_to_text(source).splitlines() == lines
        assert to_html(source).count("<br>") == 1
    wrapped = ("皆様におかれましては、ますますご清栄のこととお喜び申し上げます。皆様には\n"
               "<span>事前</span>の登録をお願いいたします。")
    assert "皆様には事前の登録" in to_html(wrapped) and "皆様には事前の登録" in markdown_to_text(wrapped)


def test_a_pasted_br_breaks_the_line_in_the_text_edition_too():
    """helper-74: the HTML kept the pasted <br>, the text edition joined the two lines."""
    source = ("〒730-0000 広島県広島市中区サンプル町1-2-3 サンプルビル5階<br>\n"
              "中国地域産学官コラボレーション会議 事務局（産業振興部）")
    assert markdown_to_text(source).splitlines() == [
        "〒730-0000 広島県広島市中区サンプル町1-2-3 サンプルビル5階",
        "中国地域産学官コラボレーション会議 事務局（産業振興部）"]


def test_a_wrap_next_to_japanese_is_joined_without_a_space_in_both_editions():
    """helper-74: 対象とした / DX推進 became 対象とした DX推進: only a wrap between two Japanese
    characters was joined tight."""
    source = ("中国地域の中堅・中小企業を対象とした\nDX推進のための支援事業を実施しており、これまでに延べ\n"
              "120社から相談を受けています。")
    assert "対象としたDX推進" in to_html(source) and "延べ120社" in to_html(source)
    assert markdown_to_text(source).startswith("中国地域の中堅・中小企業を対象としたDX推進のための")


def test_preview_text():
    text = to_text("# 協議事項\n\n- 一\n- [二](https://example.jp) &amp; 三\n\n本文<script>x()</script>")
    assert text == "協議事項\n\n・一\n・二 & 三\n\n本文"


def test_the_plain_edition_drops_what_the_html_edition_drops_with_its_content():
    """A script or a stylesheet pasted into an item vanished from the HTML edition, but its code
    ('alert(2)', 'body{display:none}') was printed in every plain-text mail."""
    from mailmag.content.render import markdown_to_text

    source = ("前の段落\n\n<script>alert(2)</script>\n<style>body{display:none}</style>\n\n"
              "本文 <SCRIPT type=\"x\">alert(3)</SCRIPT>の続き<style>p{}</style>。\n\n"
              "```\n<script>コード例</script>\n```\n")
    text = markdown_to_text(source)
    for code in ("alert(2)", "alert(3)", "display:none", "p{}"):
        assert code not in text and code not in to_html(source), code
    assert "前の段落" in text and "本文 の続き。" in text
    assert "<script>コード例</script>" in text  # shown as code, as in the HTML edition
