"""Member organizations: who may submit items, and each one's private submission link."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailmag import links, text_ja, tokens
from mailmag.addresses import parse_address
from mailmag.errors import Fix, InvalidInput, NotFound, TokenError
from mailmag.models import Item, Org

_CODE = re.compile("[a-z0-9][a-z0-9-]{0,31}")


def parse_code(raw: str) -> str:
    """An org code as typed: lower-cased; ASCII letters, digits and hyphens, up to 32."""
    code = (raw or "").strip().lower()
    if not _CODE.fullmatch(code):
        raise InvalidInput(
            f"invalid org code {raw!r}: use up to 32 ASCII letters, digits and hyphens, e.g. hiroshima-u",
            ja=f"団体コード「{raw}」は使えません。半角の英数字とハイフンで32文字まで（例：hiroshima-u）にしてください",
        )
    return code


def _one_line(label: str, raw: str, limit: int) -> str:
    value = text_ja.normalize_line(raw or "")
    if len(value) > limit:
        raise InvalidInput(f"the org's {label} is longer than {limit} characters",
                           ja=f"団体の{'名称' if label == 'name' else '略称'}が長すぎます（{limit}文字まで）")
    return value


def add(session: Session, code: str, name: str, short_name: str = "", contact: str = "") -> Org:
    """Register a member organization; InvalidInput if the code is taken or a value is bad."""
    code = parse_code(code)
    name = _one_line("name", name, 200)
    if not name:
        raise InvalidInput("the org's name is empty: give its name, e.g. 広島大学",
                           ja="団体の名称が空です。名称を入力してください（例：広島大学）")
    short_name = _one_line("short name", short_name, 100)
    contact = parse_address(contact).email if contact and contact.strip() else ""
    if session.scalar(select(Org.id).where(Org.code == code)) is not None:
        raise InvalidInput(f"the org code {code} is already taken; choose another or use the existing org",
                           ja=f"団体コード「{code}」はすでに使われています。別のコードにするか、登録済みの団体を使ってください")
    org = Org(code=code, name=name, short_name=short_name, contact=contact)
    session.add(org)
    session.flush()
    return org


def get(session: Session, code: str) -> Org:
    """The org with this code, or NotFound naming the codes that exist."""
    wanted = (code or "").strip().lower()
    org = session.scalar(select(Org).where(Org.code == wanted))
    if org is None:
        known = session.scalars(select(Org.code).order_by(Org.code)).all()
        if not known:
            raise NotFound(f"no org with the code {code!r}; no org is registered yet", fixes=[Fix("add_org")],
                           ja=f"団体コード「{code}」の団体はありません（団体はまだ登録されていません）")
        raise NotFound(f"no org with the code {code!r}; known codes: {', '.join(known)}",
                       ja=f"団体コード「{code}」の団体はありません（登録済み：{'、'.join(known)}）")
    return org


def listing(session: Session) -> list[Org]:
    return list(session.scalars(select(Org).order_by(Org.code)))


def item_counts(session: Session) -> dict[int, int]:
    """Items per org id (orgs without items are absent)."""
    rows = session.execute(select(Item.org_id, func.count()).group_by(Item.org_id))
    return {org_id: count for org_id, count in rows}


def rotate_token(session: Session, org: Org) -> Org:
    """Invalidate the org's current submission link; the next link made is the new one."""
    org.token_version += 1
    session.flush()
    return org


def submission_link(base_url: str, secret: str, org: Org) -> str:
    """The org's private submission form URL: every link made stays valid until the next rotation."""
    return links.submit_url(base_url, secret, org.id, org.token_version)


def from_submission_token(session: Session, secret: tokens.Keys, token: str) -> Org:
    """The org a submission link belongs to; NotFound for a wrong, foreign or rotated token."""
    try:
        org_id, version = tokens.read_submit(secret, token)
    except TokenError:
        raise NotFound("this submission link is not valid", ja="この投稿用リンクは正しくありません") from None
    org = session.get(Org, org_id)
    if org is None or version != org.token_version:
        # A rotated link says the same as a forged one: nothing about the org leaks.
        raise NotFound("this submission link is not valid", ja="この投稿用リンクは正しくありません")
    return org


def add_file(session: Session, path: str | Path) -> list[Org]:
    """Register the orgs listed in a TOML file (`[[orgs]]` tables: code, name, short_name, contact)."""
    try:
        document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InvalidInput(f"cannot read the org list {path}: {exc}",
                           ja=f"団体の一覧「{path}」を読めません（{exc}）") from exc
    entries = document.get("orgs")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise InvalidInput(f"{path}: expected [[orgs]] tables with code, name, short_name, contact",
                           ja=f"「{path}」：code・name・short_name・contact を書いた "
                              "[[orgs]] の表がありません")
    added = []
    for entry in entries:
        unknown = set(entry) - {"code", "name", "short_name", "contact"}
        if unknown:
            raise InvalidInput(f"{path}: unknown key {sorted(unknown)[0]!r} in [[orgs]]",
                               ja=f"「{path}」：[[orgs]] の「{sorted(unknown)[0]}」は使えない項目です"
                                  "（使える項目：code・name・short_name・contact）")
        added.append(add(session, str(entry.get("code", "")), str(entry.get("name", "")),
                         str(entry.get("short_name", "")), str(entry.get("contact", ""))))
    return added
