"""Every error mailmag raises on purpose, one line each; messages name the fix.

    MailmagError                  base: the CLI prints it as one sentence, the web as a page
    ├── ConfigError               a configuration file or environment value is wrong
    ├── DatabaseError             the database cannot be reached or is not initialised
    ├── NotFound                  an org, item, issue, subscriber or schedule that does not exist
    ├── InvalidInput              a value a person typed or a file held is not acceptable
    │   └── InvalidEmail          an address that is not a deliverable address's syntax
    ├── StateError                the operation does not fit the object's state
    ├── LimitExceeded             a submission link or form was used more than its limits allow
    ├── ComplianceError           an issue would break 特定電子メール法 (missing sender data)
    ├── TokenError                a signed link was tampered with, foreign or expired
    ├── AccessDenied              a console login refused, or an action the account's role lacks
    └── TransportError            the relay refuses us (connect, MAIL FROM, AUTH): stop the run
"""

from __future__ import annotations


class MailmagError(Exception):
    """Base class: str(error) is the one sentence shown to the user."""


class ConfigError(MailmagError):
    """The configuration is malformed or names an unknown key."""


class DatabaseError(MailmagError):
    """The database cannot be reached or is not initialised."""


class NotFound(MailmagError):
    """The named object does not exist."""


class InvalidInput(MailmagError):
    """A value is not acceptable."""


class InvalidEmail(InvalidInput):
    """An e-mail address is not valid."""


class StateError(MailmagError):
    """The object's state does not allow the operation."""


class LimitExceeded(MailmagError):
    """More requests or bytes than a configured limit allows; try again later."""


class ComplianceError(MailmagError):
    """An issue lacks what 特定電子メール法 requires."""


class TokenError(MailmagError):
    """A signed token is invalid, foreign or expired."""


class AccessDenied(MailmagError):
    """A console login is refused, or the account's role does not allow the action."""


class TransportError(MailmagError):
    """The mail relay refused the connection or the sender."""
