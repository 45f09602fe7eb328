"""The one rule for e-mail addresses: what is accepted, how it is stored, how it is written.

Every front (import, `subscribers add`, the subscribe form, `issues test --to`, org
contacts) and the message builder go through `parse_address`, so an address accepted
anywhere is sent everywhere. Japanese reality adds one case to RFC 5322: docomo and au
issued addresses until 2009 whose local part has dots in a row or just before the @
(`taro..yamada.@docomo.ne.jp`); they are still in use and the carriers deliver them. They
are accepted for the carriers' own domains only, stored as the subscriber typed them, and
written with the local part quoted (`"taro..yamada."@docomo.ne.jp`, RFC 5321 §4.1.2) in
the SMTP envelope and the To header, which is how RFC-abiding relays accept them.

mailmag's own addresses live here too: the sender's domain, the bounce address and its VERP
form, the mailto: unsubscribe address, and the Message-ID format; the message builder
writes them and the bounce reader reads them back with the same functions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets
import unicodedata

import idna
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

from mailmag import tokens
from mailmag.config import Config
from mailmag.errors import ConfigError, InvalidEmail, InvalidInput

# The plain ASCII addresses that are nearly every row of a list: these skip email-validator,
# whose IDNA checks cost ~40 µs an address (4 s for 100 000 rows). The pattern accepts only
# what email-validator accepts unchanged (tests/test_subscribers.py checks that); anything
# else (IDN, quoted local parts, "--" labels, special-use domains) goes the slow way.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = rf"((?:{_LABEL}\.)+[A-Za-z]{{2,63}})"
_PLAIN = re.compile(rf"({_ATEXT}(?:\.{_ATEXT})*)@{_DOMAIN}")
DOT_ATOM = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
# Legacy carrier local parts: atext and dots in any order (a quoted form is read too).
_LEGACY = re.compile(rf'"?([A-Za-z0-9!#$%&\'*+/=?^_`{{|}}~.-]{{1,64}})"?@{_DOMAIN}')
CARRIER_DOMAINS = ("docomo.ne.jp", "ezweb.ne.jp", "au.com")  # and their subdomains (biz.ezweb.ne.jp)
_SPECIAL_USE = frozenset(SPECIAL_USE_DOMAIN_NAMES)
_SPECIAL_USE_DEEP = any("." in name for name in _SPECIAL_USE)  # none today: the TLD test suffices
# C0 and C1 controls and DEL: never part of an address, a name or any other stored cell.
CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# "山田 太郎 <yamada@example.jp>", as a mail program copies an address: the address is the bracketed part.
_NAMED = re.compile(r"^(.*)<([^<>]*)>$", re.DOTALL)  # the last <…>: a name may hold < or >


@dataclasses.dataclass(frozen=True, slots=True)
class Address:
    """A validated address: `email` as stored (domain lower-cased), `key` for uniqueness."""

    email: str
    key: str

    @property
    def hash(self) -> str:
        return email_hash(self.key)

    @property
    def needs_smtputf8(self) -> bool:
        """A non-ASCII local part reaches its mailbox only through a relay that offers SMTPUTF8."""
        return needs_smtputf8(self.email)


def email_hash(key: str) -> str:
    """The hash that stands for an address in suppressions and forgotten consent records."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _bracketed(text: str) -> str:
    """The address of "山田 太郎 <yamada@example.jp>". A name that is itself another address
    ("a@example.jp <b@example.jp>", "a@example.jp, <b@example.jp>") leaves the address meant
    unknown: refused, not guessed."""
    named = _NAMED.match(text)
    if not named:
        return text.strip("<>").strip()
    name, address = named.group(1), named.group(2).strip()
    words = (word.strip("\"'()<>") for word in re.split(r"[\s,;]+", name))
    others = {word.lower() for word in words if _is_address(word)}
    if others - {address.lower()}:
        raise InvalidEmail(f"invalid e-mail address {text!r}: it names two addresses; give the one meant",
                           ja=f"メールアドレス「{text}」には二つのアドレスがあります。"
                              "送り先のアドレスだけを入力してください")
    return address


def _is_address(text: str) -> bool:
    """Whether a word of a name is itself an address (田中@営業 or @yamada is not)."""
    if "@" not in text:
        return False
    try:
        return bool(_plain_address(text) or _legacy_address(text) or validate_email(
            text, check_deliverability=False))
    except EmailNotValidError:
        return False


def parse_address(raw: str) -> Address:
    """Validate an address; repair full-width ＠, letters and surrounding spaces first."""
    _refuse_other_readings(raw or "")
    # NFKC turns ＠ and full-width ASCII into their plain forms; 全角 spaces become spaces.
    cleaned = unicodedata.normalize("NFKC", raw or "").strip()
    if CONTROL.search(cleaned):  # in the name too: a paste gone wrong
        raise InvalidEmail(f"invalid e-mail address {cleaned!r}: it holds a control character; retype it",
                           ja=f"メールアドレス「{cleaned}」に制御文字が含まれています。入力し直してください")
    cleaned = _bracketed(cleaned)
    if not cleaned:
        raise InvalidEmail("the e-mail address is empty",
                           ja="メールアドレスが空です")
    found = _plain_address(cleaned) or _legacy_address(cleaned)
    if found is not None:
        return found
    try:
        result = validate_email(cleaned, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidEmail(f"invalid e-mail address {cleaned!r}: {exc}",
                           ja=f"メールアドレス「{cleaned}」が正しくありません（{_why_ja(str(exc))}）",
                           ) from exc
    return _stored(result.local_part, result.domain)


# The address of "name <address>" as typed, its brackets full-width or not.
_TYPED_ADDRESS = re.compile(r"^.*[<＜]([^<>＜＞]*)[>＞]\s*$", re.DOTALL)


def _refuse_other_readings(raw: str) -> None:
    """NFKC reads ＡＢＣ＠ as ABC@ (the same keys in full-width mode) and that is all it should do
    to an address: ① → 1, ﬁ → fi or ² → 2 make another address, another person's mail
    (helper-81: ①@example.jp was stored as 1@example.jp without a word). Those are refused."""
    if raw.isascii():  # NFKC leaves ASCII as it is: the usual address, checked for every message's To
        return
    match = _TYPED_ADDRESS.match(raw)
    typed = match[1] if match else raw
    other = sorted({c for c in typed if unicodedata.normalize("NFKC", c) != c
                    and not (0xFF00 <= ord(c) <= 0xFFEF or c.isspace())})  # full- and half-width forms
    if other:
        shown = ", ".join(f"{c} (read as {unicodedata.normalize('NFKC', c)})" for c in other)
        shown_ja = "、".join(f"「{c}」" for c in other)
        raise InvalidEmail(f"invalid e-mail address {raw.strip()!r}: {shown} would make another address; "
                           "type the address as it is written",
                           ja=f"メールアドレス「{raw.strip()}」の{shown_ja}はアドレスに使えない文字です"
                              "（別のアドレスになるため読み替えません）。正しいアドレスを入力してください")


# email_validator's reasons (English only) as a Japanese page says them, by how each begins;
# a reason not listed here is said as "the form is wrong".
_WHY_JA = (
    ("An email address must have an @-sign", "「@」がありません"),
    ("There must be something before the @-sign", "「@」の前が空です"),
    ("There must be something after the @-sign", "「@」の後が空です"),
    ("The part after the @-sign is not valid. It should have a period", "「@」の後に「.」がありません"),
    ("The part after the @-sign is not valid. It is not within a valid top-level domain",
     "「@」の後のドメインが正しくありません"),
    ("The part after the @-sign is a special-use or reserved name", "「@」の後が使えないドメインです"),
    ("The part after the @-sign contains invalid characters", "「@」の後に使えない文字があります"),
    ("The email address contains invalid characters before the @-sign", "「@」の前に使えない文字があります"),
    ("Internationalized characters before the @-sign", "「@」の前に全角文字などがあります"),
    ("An email address cannot have two periods in a row", "「.」が2つ続いています"),
    ("An email address cannot have a period immediately before the @-sign", "「@」の直前が「.」です"),
    ("An email address cannot start with a period", "最初が「.」です"),
    ("The email address is too long", "長すぎます"),
)


def _why_ja(reason: str) -> str:
    return next((ja for start, ja in _WHY_JA if reason.startswith(start)), "形式が正しくありません")


def _stored(local: str, domain: str) -> Address:
    email = f"{local}@{domain.lower()}"
    return Address(email=email, key=email.lower())


def _plain_address(cleaned: str) -> Address | None:
    match = _PLAIN.fullmatch(cleaned)
    if match is None or len(cleaned) > 254 or len(match[1]) > 64 or "--" in match[2]:
        return None
    domain = match[2].lower()
    if domain.rpartition(".")[2] in _SPECIAL_USE or (_SPECIAL_USE_DEEP and _special_use(domain)):
        return None
    return _stored(match[1], match[2])


def _legacy_address(cleaned: str) -> Address | None:
    """A pre-2009 docomo/au address whose dots break the dot-atom rule, or None."""
    match = _LEGACY.fullmatch(cleaned)
    if match is None or cleaned.startswith('"') != cleaned.partition("@")[0].endswith('"'):
        return None
    domain = match[2].lower()
    if not any(domain == d or domain.endswith("." + d) for d in CARRIER_DOMAINS):
        return None
    return _stored(match[1], domain)


def _special_use(domain: str) -> bool:
    labels = domain.split(".")
    return any(".".join(labels[i:]) in _SPECIAL_USE for i in range(len(labels)))


def is_legacy(email: str) -> bool:
    """True for a local part that is not a dot-atom (it must be quoted when written)."""
    local = email.rpartition("@")[0]
    return local.isascii() and not DOT_ATOM.fullmatch(local)


def needs_smtputf8(email: str) -> bool:
    return not email.rpartition("@")[0].isascii()


def smtputf8_note(email: str) -> str:
    """What the secretariat is told when such an address is added or imported."""
    return (f"{email} has non-ASCII characters before the @: it can be delivered only through a relay "
            "that offers SMTPUTF8 (other relays fail this recipient alone)")


def addr_spec(email: str) -> str:
    """A stored address as written in SMTP commands and headers.

    A local part that is not a dot-atom is quoted; an internationalized domain becomes
    A-labels (xn--…); a non-ASCII local part stays UTF-8 (it needs SMTPUTF8).
    """
    local, _, domain = email.rpartition("@")
    if not domain.isascii():
        try:
            domain = idna.encode(domain, uts46=True).decode()
        except idna.IDNAError as exc:
            raise InvalidEmail(f"the address {email!r} has a domain that cannot be encoded",
                               ja=f"メールアドレス「{email}」のドメインを変換できません") from exc
    if is_legacy(email):
        local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{local}@{domain}"


# --- written in headers and envelopes ----------------------------------------------------------

# An address as stored: no spaces, brackets or quotes around it (parse_address decides the rest).
_STORED = re.compile(r'[^\s<>()\[\],;:"@\\]+@[^\s<>()\[\],;:"@\\]+')
_UNSAFE = re.compile("[\r\n\0]")


def check(value: str, what: str, what_ja: str = "") -> None:
    """Data may never end a header line early: CR, LF or NUL raise InvalidInput. `what_ja` names
    `what` in a Japanese sentence (件名, 宛先の名前)."""
    if _UNSAFE.search(value):
        raise InvalidInput(f"{what} contains a line break or NUL character; remove it",
                           ja=f"{what_ja or f'「{what}」'}に改行または NUL 文字が含まれています。"
                              "取り除いてください")


def ascii_address(address: str, what: str, *, utf8: bool = False, what_ja: str = "") -> str:
    """The addr-spec to write for a stored address, valid by mailmag.addresses' one rule.

    An internationalized domain becomes A-labels; a legacy carrier local part is quoted
    ("taro..yamada."@docomo.ne.jp); a non-ASCII local part is refused unless `utf8`.
    """
    what_ja = what_ja or f"「{what}」"
    check(address, what, what_ja)
    kind = "valid" if utf8 else "plain ASCII"
    address = address.strip()
    def not_one() -> InvalidInput:  # (made only when refusing: this runs for every message's To)
        return InvalidInput(f"{what} {address!r} is not a {kind} e-mail address",
                            ja=f"{what_ja}「{address}」は{'正しい' if utf8 else '半角英数字（ASCII）の'}"
                               "メールアドレスではありません")

    if not _STORED.fullmatch(address):
        raise not_one()
    try:
        parsed = parse_address(address)
    except InvalidEmail as exc:  # the rule's own reason: a reserved .test domain read "not plain ASCII"
        raise InvalidInput(f"{what}: {exc}", ja=f"{what_ja}：{exc.ja}") from exc
    if parsed.needs_smtputf8 and not utf8:
        raise not_one()
    return addr_spec(parsed.email)


def check_sender_addresses(config: Config) -> None:
    """[sender] from and the addresses made from it, by the one rule, before an issue is
    composed: with news@council.test an issue was composed and every message then failed."""
    sender_domain(config)  # (news: "not an address like news@example.jp")
    ascii_address(config.sender.from_, "[sender] from", what_ja="設定の [sender] from")
    unsubscribe_address(config)
    bounce_address(config)


# --- mailmag's own addresses and Message-IDs: the sender writes them, the bounce reader reads them

MESSAGE_ID_START = "<mm."
# What a Message-ID may be (RFC 5322 msg-id, dot-atom-text both sides: no '<', '>' or '@').
MESSAGE_ID = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]+@[\x21-\x3b\x3d\x3f-\x7e]+>")
# (mailmag before 2026-12-04 wrote no KEY: any reader of an issue could write those of the others,
# so they are not read as a delivery's)
_DELIVERY_MESSAGE_ID = re.compile(r"^<mm\.(\d+)\.(\d+)\.[0-9a-f]+\.[A-Za-z0-9_-]{8}@[^>\s]+>$")


def sender_domain(config: Config) -> str:
    """The From address's domain: Message-IDs, DKIM d= and the default bounce address use it."""
    local, _, domain = config.sender.from_.rpartition("@")
    if not local or not re.fullmatch(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+", domain):
        raise ConfigError(f"[sender] from {config.sender.from_!r} is not an address like news@example.jp")
    return domain.lower()


def unsubscribe_address(config: Config) -> str:
    """Where mailto: unsubscribe requests go: [sender] unsubscribe_mailto (a written 'mailto:' and
    '?subject=…' are dropped), else unsubscribe@<from domain>. Bounce processing reads the same."""
    value = config.sender.unsubscribe_mailto.removeprefix("mailto:").partition("?")[0]
    return ascii_address(value or f"unsubscribe@{sender_domain(config)}", "[sender] unsubscribe_mailto",
                         what_ja="設定の [sender] unsubscribe_mailto")


def unsubscribe_mailto(address: str, secret: str, subscriber_id: int, link_key: str) -> str:
    """<mailto:unsubscribe@domain?subject=unsubscribe%20TAG>: the request names its subscriber
    by the signed tag, never by its From, which an alias changes and anyone can forge.

    The tag is carried once, in the subject, which survives relays that drop '+' parts (an
    address tag, as in older mail, would also push the line past 78 columns)."""
    tag = tokens.unsubscribe_tag(secret, subscriber_id, link_key)
    return f"<mailto:{address}?subject=unsubscribe%20{tag}>"


def bounce_address(config: Config) -> str:
    """The plain envelope sender ([sender] bounce_address, default bounces@<from domain>)."""
    address = config.sender.bounce_address or f"bounces@{sender_domain(config)}"
    try:
        ascii_address(address, "[sender] bounce_address", what_ja="設定の [sender] bounce_address")
    except InvalidInput as exc:
        raise ConfigError(f"[sender] bounce_address {address!r} must look like bounces@example.jp") from exc
    return address


def make_message_id(config: Config) -> str:
    """A one-off mail's '<mm.NONCE@from-domain>' (confirmations, `issues test`)."""
    return f"{MESSAGE_ID_START}{secrets.token_hex(12)}@{sender_domain(config)}>"


def delivery_message_id(issue_number: int, nonce: str, domain: str) -> tuple[str, str, str]:
    """A delivery's '<mm.ISSUE.SUBSCRIBER.NONCE.KEY@domain>', as the text around the subscriber id
    and the start of its link key, which the outbox writes in SQL; made once, reused on every
    retry. KEY (8 characters of the subscriber's random link key, 48 bits) makes the Message-ID
    of one reader's copy unguessable from another's: a bounce report that returns it proves it
    saw that mail (the issue's NONCE and the ids alone could be read off any copy)."""
    return f"{MESSAGE_ID_START}{issue_number}.", f".{nonce}.", f"@{domain}>"


def read_delivery_message_id(message_id: str) -> tuple[int, int] | None:
    """(issue number, subscriber id) of a delivery's Message-ID, None if not of that form."""
    parsed = _DELIVERY_MESSAGE_ID.match(message_id)
    return (int(parsed.group(1)), int(parsed.group(2))) if parsed else None


def verp(bounce_local: str, bounce_domain: str, secret: str, delivery_id: int) -> str:
    """bounces+<id>-<hmac>@domain: a bounce to it names its delivery, unforgeably. The message
    builder calls this per recipient with the bounce address split once per issue."""
    return f"{bounce_local}+{tokens.verp_tag(secret, delivery_id)}@{bounce_domain}"



def parse_verp(config: Config, secret: tokens.Keys, address: str) -> int | None:
    """The delivery id in a bounce's recipient address, or None if foreign or forged."""
    local, _, domain = bounce_address(config).rpartition("@")
    got_local, _, got_domain = address.strip().strip("<>").rpartition("@")
    prefix = f"{local}+".lower()
    if got_domain.lower() != domain.lower() or not got_local.lower().startswith(prefix):
        return None
    return tokens.read_verp_tag(secret, got_local[len(prefix) :].lower())


def verp_delivery_id(config: Config, secret: tokens.Keys, address: str) -> int | bool | None:
    """The delivery a VERP address names; None if the address is not a VERP address of ours;
    False if it looks like one but its tag is forged (never trusted)."""
    delivery_id = parse_verp(config, secret, address)
    if delivery_id is not None:
        return delivery_id
    local, _, domain = bounce_address(config).lower().rpartition("@")
    ours = address.lower().endswith(f"@{domain}") and address.lower().startswith(f"{local}+")
    return False if ours else None
