"""Real-shaped reports that land in a bounce mailbox, built as the servers write them.

Each builder returns the bytes an MTA would store. `to` is where the report was delivered
(our VERP address, or a plain one); `original_id` is the Message-ID of the issue mail the
report returns (None: the returned headers are left out); `message_id` is the report's own
("" makes a fresh one, None leaves the header out); `date` defaults to now.
"""

from __future__ import annotations

import datetime as dt
import email.header
import email.utils
import random

from mailmag import clock

ISSUE_SUBJECT = "=?UTF-8?B?44CQ56ysMeWPt+OAkeS8muitsOWgseWRig==?="  # 【第1号】会議報告


def _date(date: dt.datetime | None) -> str:
    return email.utils.format_datetime(date or clock.now())


def _id_header(message_id: str | None, domain: str) -> str:
    if message_id is None:
        return ""
    return f"Message-ID: {message_id or email.utils.make_msgid(domain=domain)}\n"


def original_headers(recipient: str, original_id: str | None, envelope: str = "bounces@example.jp") -> str:
    """The headers of the issue mail as a relay returns them (text/rfc822-headers)."""
    message_id = f"Message-ID: {original_id}\n" if original_id else ""
    return (
        f"Return-Path: <{envelope}>\n"
        "Received: from mail.example.jp (mail.example.jp [192.0.2.1])\n"
        "\tby mx.example.com (Postfix) with ESMTPS id 7A1B2C3D4E\n"
        f"\tfor <{recipient}>; Mon,  1 Dec 2025 09:00:01 +0900 (JST)\n"
        "From: =?UTF-8?B?5LqL5YuZ5bGA?= <news@example.jp>\n"
        f"To: {recipient}\n"
        f"Subject: {ISSUE_SUBJECT}\n"
        "Date: Mon, 01 Dec 2025 09:00:00 +0900\n"
        f"{message_id}"
        "List-Id: <news.example.jp>\n"
        "MIME-Version: 1.0\n"
    )


def postfix_dsn(
    recipient: str,
    *,
    to: str,
    original_id: str | None = None,
    status: str = "5.1.1",
    message_id: str | None = "",
    date: dt.datetime | None = None,
) -> bytes:
    """Postfix's bounce: a failed RCPT, with the returned headers."""
    reply = f"550 {status} <{recipient}>: Recipient address rejected: User unknown in virtual mailbox table"
    return _postfix(recipient, to=to, original_id=original_id, status=status, action="failed",
                    subject="Undelivered Mail Returned to Sender", reply=reply,
                    message_id=message_id, date=date)


def postfix_delayed(
    recipient: str,
    *,
    to: str,
    original_id: str | None = None,
    message_id: str | None = "",
    date: dt.datetime | None = None,
) -> bytes:
    """Postfix's delay warning for a full mailbox (a soft bounce: Action delayed, 4.2.2)."""
    reply = f"452 4.2.2 <{recipient}>: Mailbox full, try again later"
    return _postfix(recipient, to=to, original_id=original_id, status="4.2.2", action="delayed",
                    subject="Delayed Mail (still being retried)", reply=reply,
                    message_id=message_id, date=date)


def _postfix(recipient: str, *, to: str, original_id: str | None, status: str, action: str,
             subject: str, reply: str, message_id: str | None, date: dt.datetime | None) -> bytes:
    boundary = "4F1A2B3C4D.1733011205/mail.example.jp"
    headers_part = (
        f"--{boundary}\n"
        "Content-Description: Undelivered Message Headers\n"
        "Content-Type: text/rfc822-headers\n"
        "Content-Transfer-Encoding: 8bit\n\n"
        f"{original_headers(recipient, original_id, to)}\n"
    ) if original_id else ""
    text = (
        f"X-Original-To: {to}\n"
        f"Delivered-To: {to}\n"
        "Received: by mail.example.jp (Postfix) id 4F1A2B3C4D; Mon,  1 Dec 2025 09:00:05 +0900 (JST)\n"
        f"Date: {_date(date)}\n"
        "From: MAILER-DAEMON@mail.example.jp (Mail Delivery System)\n"
        f"Subject: {subject}\n"
        f"To: {to}\n"
        "Auto-Submitted: auto-replied\n"
        "MIME-Version: 1.0\n"
        "Content-Type: multipart/report; report-type=delivery-status;\n"
        f'\tboundary="{boundary}"\n'
        "Content-Transfer-Encoding: 8bit\n"
        f"{_id_header(message_id, 'mail.example.jp')}"
        "\n"
        "This is a MIME-encapsulated message.\n\n"
        f"--{boundary}\n"
        "Content-Description: Notification\n"
        "Content-Type: text/plain; charset=us-ascii\n\n"
        "This is the mail system at host mail.example.jp.\n\n"
        "I'm sorry to have to inform you that your message could not\n"
        "be delivered to one or more recipients. It's attached below.\n\n"
        "For further assistance, please send mail to postmaster.\n\n"
        "                   The mail system\n\n"
        f"<{recipient}>: host mx.example.com[192.0.2.10] said: {reply} (in reply to RCPT TO command)\n\n"
        f"--{boundary}\n"
        "Content-Description: Delivery report\n"
        "Content-Type: message/delivery-status\n\n"
        "Reporting-MTA: dns; mail.example.jp\n"
        "X-Postfix-Queue-ID: 4F1A2B3C4D\n"
        f"X-Postfix-Sender: rfc822; {to}\n"
        "Arrival-Date: Mon,  1 Dec 2025 09:00:01 +0900 (JST)\n\n"
        f"Final-Recipient: rfc822; {recipient}\n"
        f"Original-Recipient: rfc822;{recipient}\n"
        f"Action: {action}\n"
        f"Status: {status}\n"
        "Remote-MTA: dns; mx.example.com\n"
        f"Diagnostic-Code: smtp; {_fold(reply)}\n\n"
        f"{headers_part}"
        f"--{boundary}--\n"
    )
    return text.encode()


def _fold(value: str, width: int = 60) -> str:
    """Fold a long field value at a space, as MTAs do."""
    cut = value.rfind(" ", 0, width)
    return value if cut < 0 or len(value) <= width else f"{value[:cut]}\n   {value[cut:]}"


def exchange_ndr(
    recipient: str,
    *,
    to: str,
    original_id: str | None = None,
    message_id: str | None = "",
    date: dt.datetime | None = None,
) -> bytes:
    """Exchange Online's NDR: HTML + text notification, 5.1.10 RecipientNotFound."""
    boundary = "_000_b0a1c2d3e4f5_"
    alt = "_001_b0a1c2d3e4f5_"
    text = (
        "Received: from TYCPR01MB1234.jpnprd01.prod.outlook.com ([::1]) by\n"
        " TYCPR01MB1234.jpnprd01.prod.outlook.com with mapi id 15.20.7000.000; "
        "Mon, 1 Dec 2025 00:00:05 +0000\n"
        "MIME-Version: 1.0\n"
        "From: Microsoft Outlook\n"
        "\t<MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@contoso.onmicrosoft.com>\n"
        f"To: <{to}>\n"
        f"Date: {_date(date)}\n"
        "Content-Type: multipart/report; report-type=delivery-status;\n"
        f'\tboundary="{boundary}"\n'
        "X-MS-Exchange-Message-Is-Ndr:\n"
        "Content-Language: ja-JP\n"
        f"{_id_header(message_id, 'TYCPR01MB1234.jpnprd01.prod.outlook.com')}"
        f"Subject: Undeliverable: {ISSUE_SUBJECT}\n\n"
        f"--{boundary}\n"
        f'Content-Type: multipart/alternative; differences=Content-Type;\n\tboundary="{alt}"\n\n'
        f"--{alt}\n"
        "Content-Type: text/plain; charset=\"us-ascii\"\n"
        "Content-Transfer-Encoding: quoted-printable\n\n"
        "Your message to " + recipient + " couldn't be delivered.\n"
        "The email address wasn't found at the destination domain. It might be misspelled or it=\n"
        " might not exist.\n\n"
        "Diagnostic information for administrators:\n"
        "Generating server: TYCPR01MB1234.jpnprd01.prod.outlook.com\n"
        f"{recipient}\n"
        "Remote Server returned '550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by "
        "SMTP address lookup'\n\n"
        f"--{alt}\n"
        "Content-Type: text/html; charset=\"us-ascii\"\n\n"
        "<html><body><p><b>Your message to " + recipient + " couldn't be delivered.</b></p>"
        "</body></html>\n\n"
        f"--{alt}--\n\n"
        f"--{boundary}\n"
        "Content-Type: message/delivery-status\n\n"
        "Reporting-MTA: dns;TYCPR01MB1234.jpnprd01.prod.outlook.com\n"
        "Received-From-MTA: dns;mail.example.jp\n"
        "Arrival-Date: Mon, 1 Dec 2025 00:00:02 +0000\n\n"
        f"Final-recipient: RFC822; {recipient}\n"
        "Action: failed\n"
        "Status: 5.1.10\n"
        "Diagnostic-code: smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP\n"
        " address lookup\n"
        f"X-Display-Name: {recipient.split('@')[0]}\n\n"
        f"--{boundary}\n"
        "Content-Type: text/rfc822-headers\n\n"
        f"{original_headers(recipient, original_id, to)}\n"
        f"--{boundary}--\n"
    )
    return text.encode()


def gmail_dsn(
    recipient: str,
    *,
    to: str,
    original_id: str | None = None,
    message_id: str | None = "",
    date: dt.datetime | None = None,
) -> bytes:
    """Gmail's "Address not found": the original comes back whole, as message/rfc822."""
    boundary = "000000000000a1b2c3d4e5f60718"
    original = original_headers(recipient, original_id, to) + (
        "Content-Type: text/plain; charset=\"UTF-8\"\n"
        "Content-Transfer-Encoding: base64\n\n"
        "5Lya6K2w5aCx5ZGK44Gn44GZ44CC\n"
    )
    text = (
        f"Delivered-To: {to}\n"
        "Return-Path: <>\n"
        "Received: by 2002:a05:6000:1a8d:b0:33a:1234:5678 with SMTP id a13csp123456wrq;\n"
        "        Sun, 30 Nov 2025 16:00:05 -0800 (PST)\n"
        "From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>\n"
        f"To: {to}\n"
        "Auto-Submitted: auto-replied\n"
        "Subject: Delivery Status Notification (Failure)\n"
        "References: <mm.ref@example.jp>\n"
        f"Date: {_date(date)}\n"
        f"{_id_header(message_id, 'mx.google.com')}"
        "MIME-Version: 1.0\n"
        f'Content-Type: multipart/report; boundary="{boundary}"; report-type=delivery-status\n\n'
        f"--{boundary}\n"
        'Content-Type: text/plain; charset="UTF-8"\n\n'
        "\n** Address not found **\n\n"
        f"Your message wasn't delivered to {recipient} because the address couldn't be found, or is "
        "unable to receive mail.\n\n"
        "The response from the remote server was:\n"
        f"550 5.1.1 The email account that you tried to reach does not exist. - gsmtp\n\n"
        f"--{boundary}\n"
        "Content-Type: message/delivery-status\n\n"
        "Reporting-MTA: dns; googlemail.com\n"
        "Received-From-MTA: dns; news@example.jp\n"
        "Arrival-Date: Sun, 30 Nov 2025 16:00:04 -0800 (PST)\n"
        "X-Original-Message-ID: " + (original_id or "<unknown@example.jp>") + "\n\n"
        f"Final-Recipient: rfc822; {recipient}\n"
        "Action: failed\n"
        "Status: 5.1.1\n"
        "Remote-MTA: dns; gmail-smtp-in.l.google.com. (2607:f8b0:4864:20::a2d, the server for the domain "
        "gmail.com.)\n"
        "Diagnostic-Code: smtp; 550-5.1.1 The email account that you tried to reach does not exist.\n"
        " Please try 550-5.1.1 double-checking the recipient's email address for typos or 550-5.1.1\n"
        " unnecessary spaces. 550 5.1.1  https://support.google.com/mail/?p=NoSuchUser - gsmtp\n"
        "Last-Attempt-Date: Sun, 30 Nov 2025 16:00:05 -0800 (PST)\n\n"
        f"--{boundary}\n"
        "Content-Type: message/rfc822\n\n"
        f"{original}\n"
        f"--{boundary}--\n"
    )
    return text.encode()


def qmail_bounce(
    recipient: str,
    *,
    to: str,
    original_id: str | None = None,
    message_id: str | None = "",
    date: dt.datetime | None = None,
) -> bytes:
    """qmail's QSBMF bounce: plain text, no DSN part, only flufl.bounce's heuristics read it."""
    text = (
        "Return-Path: <>\n"
        f"Delivered-To: {to}\n"
        f"Date: {_date(date)}\n"
        "From: MAILER-DAEMON@mail.example.net\n"
        f"To: {to}\n"
        "Subject: failure notice\n"
        f"{_id_header(message_id, 'mail.example.net')}"
        "\n"
        "Hi. This is the qmail-send program at mail.example.net.\n"
        "I'm afraid I wasn't able to deliver your message to the following addresses.\n"
        "This is a permanent error; I've given up. Sorry it didn't work out.\n\n"
        f"<{recipient}>:\n"
        "192.0.2.25 does not like recipient.\n"
        f"Remote host said: 550 5.1.1 <{recipient}>... User unknown\n"
        "Giving up on 192.0.2.25.\n\n"
        "--- Below this line is a copy of the message.\n\n"
        f"{original_headers(recipient, original_id, to)}\n"
        "会議報告です。\n"
    )
    return text.encode()


def arf_complaint(
    recipient: str,
    *,
    to: str = "fbl@example.jp",
    mail_from: str = "bounces@example.jp",
    original_id: str | None = None,
    message_id: str | None = "",
    date: dt.datetime | None = None,
) -> bytes:
    """An RFC 5965 feedback report ("this is spam") from a mailbox provider's feedback loop."""
    boundary = "----=_Part_12345_67890.1733011205000"
    text = (
        "From: Mail Feedback Loop <feedbackloop@fbl.example-isp.jp>\n"
        f"To: {to}\n"
        f"Date: {_date(date)}\n"
        "Subject: FW: complaint about message from 192.0.2.1\n"
        f"{_id_header(message_id, 'fbl.example-isp.jp')}"
        "MIME-Version: 1.0\n"
        f'Content-Type: multipart/report; report-type=feedback-report;\n\tboundary="{boundary}"\n\n'
        f"--{boundary}\n"
        'Content-Type: text/plain; charset="US-ASCII"\n'
        "Content-Transfer-Encoding: 7bit\n\n"
        "This is an email abuse report for an email message received from IP\n"
        "192.0.2.1 on Mon, 01 Dec 2025 09:00:02 +0900.\n\n"
        f"--{boundary}\n"
        "Content-Type: message/feedback-report\n\n"
        "Feedback-Type: abuse\n"
        "User-Agent: ExampleISP-FBL/1.0\n"
        "Version: 1\n"
        f"Original-Mail-From: <{mail_from}>\n"
        f"Original-Rcpt-To: <{recipient}>\n"
        "Arrival-Date: Mon, 01 Dec 2025 09:00:02 +0900\n"
        "Reported-Domain: example.jp\n"
        "Source-IP: 192.0.2.1\n\n"
        f"--{boundary}\n"
        "Content-Type: message/rfc822\n"
        "Content-Disposition: inline\n\n"
        f"{original_headers(recipient, original_id, mail_from)}"
        "Content-Type: text/plain; charset=\"UTF-8\"\n\n"
        "(body removed)\n\n"
        f"--{boundary}--\n"
    )
    return text.encode()


def mailto_unsubscribe(
    sender: str,
    *,
    to: str = "unsubscribe@example.jp",
    subject: str = "unsubscribe",
    message_id: str | None = "",
    date: dt.datetime | None = None,
) -> bytes:
    """What a mail client sends for List-Unsubscribe: <mailto:unsubscribe@…?subject=unsubscribe>."""
    subject = email.header.Header(subject, "utf-8").encode() if not subject.isascii() else subject
    text = (
        f"From: =?UTF-8?B?5bGx55SwIOWkqumDjg==?= <{sender}>\n"
        f"To: {to}\n"
        f"Subject: {subject}\n"
        f"Date: {_date(date)}\n"
        f"{_id_header(message_id, 'mail.example.com')}"
        "MIME-Version: 1.0\n"
        'Content-Type: text/plain; charset="UTF-8"\n'
        "Content-Transfer-Encoding: 8bit\n\n"
        "This message was automatically generated by the mail client to unsubscribe.\n"
    )
    return text.encode()


def human_reply(sender: str, *, to: str = "bounces@example.jp", message_id: str | None = "") -> bytes:
    """Not a bounce at all: a reader thanking the secretariat (sent to the wrong address)."""
    body = "事務局 御中\n\n会議報告をありがとうございました。\n"
    text = (
        f"From: {sender}\n"
        f"To: {to}\n"
        "Subject: =?UTF-8?B?UmU6IOOAkOesrDHlj7fjgJE=?=\n"
        f"Date: {_date(None)}\n"
        f"{_id_header(message_id, 'mail.example.com')}"
        "MIME-Version: 1.0\n"
        'Content-Type: text/plain; charset="UTF-8"\n'
        "Content-Transfer-Encoding: 8bit\n\n"
    )
    return text.encode() + body.encode()


def garbage(size: int = 600) -> bytes:
    """Bytes that are not a mail at all (a corrupted file in the mailbox)."""
    data = random.Random(7).randbytes(size)
    # No line may look like a header or an mbox "From " separator.
    return b"\x00\x01" + data.replace(b"\n", b"\x00").replace(b":", b"\x00") + b"\n"


def truncated(recipient: str, *, to: str) -> bytes:
    """A DSN cut off inside its delivery-status part (the disk filled up while it was stored)."""
    whole = postfix_dsn(recipient, to=to)
    return whole[: whole.index(b"Final-Recipient")]
