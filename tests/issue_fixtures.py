"""An issue built from the reference article: its meeting summary, the symposium and workshop
notices and the call for exhibitors it mentions, as a secretariat would enter them."""

from __future__ import annotations

import datetime as dt
import re

from sqlalchemy.orm import Session

from mailmag import text_ja
from mailmag.models import Item, Org

# The article is from May 2012: composing "on" 2012-06-01 keeps its events in the future.
TODAY = dt.date(2012, 6, 1)
_BLOCK_START = re.compile(r"^(?:[ \u3000]|＜|（\d）|・)")


def article_markdown(reference_text: str) -> str:
    """The article as Markdown: PDF line breaks joined, ・ lines as a list, ＜…＞ as headings."""
    blocks: list[str] = []
    for line in text_ja.normalize(reference_text).split("\n"):
        if not line.strip():
            continue
        if blocks and not _BLOCK_START.match(line):
            blocks[-1] += line.strip()  # a line the PDF wrapped
        else:
            blocks.append(line.strip())
    out: list[str] = []
    for block in blocks:
        if block.startswith("・"):
            out.append("- " + block[1:])
        elif block.startswith("→"):
            out[-1] += "\\"  # a hard line break inside the list item above
            out.append("  " + block)
        elif re.fullmatch("＜.+＞", block):
            out.append(f"\n**{block}**\n")
        else:
            out.append(f"\n{block}\n")
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip() + "\n"


def _sentence(article: str, start: str, end: str) -> str:
    joined = "".join(line.strip() for line in text_ja.normalize(article).split("\n"))
    match = re.search(re.escape(start) + ".*?" + re.escape(end), joined)
    assert match, start
    return match.group(0)


def add_reference_items(session: Session, reference_text: str) -> list[Item]:
    """Four approved items from the article (ids in this order: meeting, 2 events, exhibitors)."""
    orgs = {
        code: Org(code=code, name=name)
        for code, name in (("chukeiren", "中国経済連合会"), ("aist", "産業技術総合研究所中国センター"),
                           ("meti", "中国経済産業局"), ("collabo", "中国地域産学官コラボレーションセンター"))
    }
    session.add_all(orgs.values())
    items = [
        Item(org=orgs["chukeiren"], kind="meeting", title="『企画会議』（5月24日）の概要",
             date=dt.date(2012, 5, 24), venue="中国経済連合会 会議室",
             body=article_markdown(reference_text)),
        Item(org=orgs["collabo"], kind="event", title="シンポジウム「地域イノベーション創出2012」のご案内",
             date=dt.date(2012, 9, 7), time_text="13:30〜17:00",
             venue="島根県松江市（会場は決まり次第ご案内します）",
             fee="無料", url="https://www.example.jp/symposium2012/",
             body=_sentence(reference_text, "中国地域産学官コラボレーション会議では", "開催しています。")
             + "\n\n" + _sentence(reference_text, "今年度は", "お願いいたします。")),
        Item(org=orgs["aist"], kind="event", title="本格研究ワークショップ（広島市）",
             date=dt.date(2012, 11, 15), venue="広島市内", url="https://www.example.jp/aist/workshop/",
             body="産業技術総合研究所中国センターでは，今年度も本格研究ワークショップを開催します"
                  "（今年度は11月頃に広島市内で開催する予定）。詳細は決まり次第ご案内いたします。"),
        Item(org=orgs["meti"], kind="exhibitors",
             title="「エコ・イノベーションメッセ2012inひろしま」出展企業の募集",
             event_name="エコ・イノベーションメッセ2012inひろしま", date=dt.date(2012, 11, 22),
             end_date=dt.date(2012, 11, 23), venue="広島県立広島産業会館", deadline=dt.date(2012, 8, 31),
             fee="1小間 5,000円", url="https://www.example.jp/eco-messe2012/",
             how_to_apply="申込書に必要事項をご記入のうえ，中国経済産業局までお送りください。",
             body="環境・エネルギー分野の技術や製品を紹介する展示会です。出展企業を募集しています。"),
    ]
    for item in items:
        item.status = "approved"
    session.add_all(items)
    session.flush()
    return items
