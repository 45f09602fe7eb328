"""The one rule for e-mail addresses: what is accepted, how it is stored, how it is written.

Every front (import, `subscribers add`, the subscribe form, `issues test --to`, org
contacts) and the message builder go through `parse_address`, so an address accepted
anywhere is sent everywhere. Japanese reality adds one case to RFC 5322: docomo and au
issued addresses until 2009 whose local part has dots in a row or just before the @
(`taro..yamada.@docomo.ne.jp`); they are still in use and the carriers deliver them. They
are accepted for the carriers' own domains only, stored as the subscriber typed them, and
written with the local part quoted (`"taro..yamada."@docomo.ne.jp`, RFC 5321 §4.1.2) in
the SMTP envelope and the To header, which is how RFC-abiding relays accept them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import unicodedata

import idna
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

from mailmag.errors import InvalidEmail

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


def parse_address(raw: str) -> Address:
    """Validate an address; repair full-width ＠, letters and surrounding spaces first."""
    # NFKC turns ＠ and full-width ASCII into their plain forms; 全角 spaces become spaces.
    cleaned = unicodedata.normalize("NFKC", raw or "").strip().strip("<>").strip()
    if not cleaned:
        raise InvalidEmail("the e-mail address is empty")
    if CONTROL.search(cleaned):
        raise InvalidEmail(f"invalid e-mail address {cleaned!r}: it holds a control character; retype it")
    found = _plain_address(cleaned) or _legacy_address(cleaned)
    if found is not None:
        return found
    try:
        result = validate_email(cleaned, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidEmail(f"invalid e-mail address {cleaned!r}: {exc}") from exc
    return _stored(result.local_part, result.domain)


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
            raise InvalidEmail(f"the address {email!r} has a domain that cannot be encoded") from exc
    if is_legacy(email):
        local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{local}@{domain}"
