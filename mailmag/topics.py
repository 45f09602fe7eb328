"""Topics: the codes `[web] topics` offers, an issue goes to, and subscribers choose; checked here only.

A subscriber with no topic receives every issue; one with topics receives the issues of
those topics and the issues sent to everyone. A code that is not configured is refused
wherever it enters (the command line, an import, the web forms, the configuration).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Sequence

from sqlalchemy import Text, cast, func, select
from sqlalchemy.orm import Session

from mailmag.errors import ConfigError, InvalidInput
from mailmag.models import AutoSchedule, Issue, Subscriber

_CODE = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclasses.dataclass(frozen=True)
class Topic:
    """A topic offered on the forms: its code (Issue.topic, Subscriber.topics) and its names."""

    code: str
    ja: str
    en: str

    def label(self, lang: str) -> str:
        return self.en if lang == "en" else self.ja


def parse_setting(entries: Sequence[str]) -> list[Topic]:
    """[web] topics entries "code|日本語|English" → Topics; ConfigError naming the bad one."""
    topics: list[Topic] = []
    for entry in entries:
        code, _, rest = entry.partition("|")
        ja, _, en = rest.partition("|")
        code = code.strip()
        if not _CODE.fullmatch(code):
            raise ConfigError(
                f"[web] topics entry {entry!r}: the code must be letters, digits, - or _, "
                'as in "events|イベント案内|Events"'
            )
        if any(t.code == code for t in topics):
            raise ConfigError(f"[web] topics names the code {code!r} twice: keep one entry per topic")
        ja = ja.strip() or code
        topics.append(Topic(code, ja, en.strip() or ja))
    return topics


def known(offered: Sequence[Topic]) -> str:
    """The configured codes, for messages: 'events, news' (or a note that there are none)."""
    return ", ".join(t.code for t in offered) or "none are configured ([web] topics)"


def known_ja(offered: Sequence[Topic]) -> str:
    """known() for Japanese sentences: '設定されているテーマ：イベント案内（events）、news', or that
    there are none."""
    named = [t.code if t.ja == t.code else f"{t.ja}（{t.code}）" for t in offered]
    return f"設定されているテーマ：{'、'.join(named)}" if named else "テーマはまだ設定されていません"


def check_codes(codes: Iterable[str], offered: Sequence[Topic]) -> list[str]:
    """The codes, sorted without duplicates; InvalidInput naming an unknown one and the known ones."""
    wanted = list(codes)
    codes_offered = {t.code for t in offered}
    unknown = [code for code in wanted if code not in codes_offered]
    if unknown:
        raise InvalidInput(f"unknown topic {unknown[0]!r}: the topics are {known(offered)}",
                           ja=f"テーマ「{unknown[0]}」はありません（{known_ja(offered)}）")
    return sorted(set(wanted))


def codes_of(words: Iterable[str], offered: Sequence[Topic]) -> list[str]:
    """Each word as a code: a code itself, or a topic's name as the forms show it (イベント案内,
    Events), which an office's spreadsheet is more likely to hold; then check_codes."""
    named = {name.casefold(): t.code for t in offered for name in (t.ja, t.en)}
    return check_codes([word if word in {t.code for t in offered} else named.get(word.casefold(), word)
                        for word in words], offered)


def check_code(code: str | None, offered: Sequence[Topic]) -> str | None:
    """One topic (an issue's), or None for every subscriber."""
    if code is None:
        return None
    return check_codes([code.strip()], offered)[0]


def unknown_in_use(session: Session, offered: Sequence[Topic]) -> dict[str, int]:
    """Codes stored on subscribers (how many each) or on issues and automatic issues that
    [web] topics does not offer: data from before the codes were checked, or a removed topic."""
    codes = {t.code for t in offered}
    found: dict[str, int] = {}
    stored_text = cast(Subscriber.topics, Text)
    combos = session.execute(select(stored_text, func.count()).group_by(stored_text))
    for stored, count in combos:
        for code in json.loads(stored or "[]"):
            if code not in codes:
                found[code] = found.get(code, 0) + count
    for model in (Issue, AutoSchedule):
        for code in session.scalars(select(model.topic).where(model.topic.is_not(None)).distinct()):
            if code is not None and code not in codes:
                found.setdefault(code, 0)
    return found


def describe_ja(code: str | None, offered: Sequence[Topic]) -> str:
    """`describe` in Japanese sentences: 'テーマ events（イベント案内）' or 'すべての読者'."""
    if code is None:
        return "すべての読者"
    label = next((t.label("ja") for t in offered if t.code == code), "")
    return f"テーマ {code}（{label}）" if label else f"テーマ {code}"


def describe(code: str | None, offered: Sequence[Topic], lang: str = "ja") -> str:
    """'topic events (イベント案内)' or 'every subscriber', for questions and listings."""
    if code is None:
        return "every subscriber"
    label = next((t.label(lang) for t in offered if t.code == code), "")
    return f"topic {code} ({label})" if label else f"topic {code}"
