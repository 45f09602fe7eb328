"""A peer for benchmarks/dispatch.py: django-newsletter 1.2.1 sending the same issue to the same sink.

    .venv/bin/python benchmarks/peer_django_newsletter.py --port PORT --html ISSUE.html -n 2000

django-newsletter is the Python application a council would otherwise pick. Run with mailmag's
interpreter, this script installs django-newsletter 1.2.1 (with the Django it requires) into a
venv of its own, kept in ~/.cache/mailmag-bench/ (nothing of it enters mailmag's venv), and runs
itself again inside it. There it sets up a Django project (SQLite, the SMTP backend to the
sink), N subscriptions, one message whose only article is the issue's HTML, and times
`manage.py submit_newsletter` as its documentation runs it. It prints one JSON line:
{"sent": N, "seconds": …, "cpu": …} (the sink counts what really arrived), or {"skipped": why}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path
from typing import Any

VERSION = "1.2.1"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
VENV = CACHE / "mailmag-bench" / f"django-newsletter-{VERSION}"
urlpatterns: list[Any] = []  # ROOT_URLCONF is this module: the unsubscribe link in each message is reversed


def ensure_venv() -> Path | str:
    """The venv's python, installing django-newsletter first if needed; or why it cannot be installed."""
    python = VENV / "bin" / "python"
    check = [str(python), "-c", "import importlib.metadata as m, sorl; "
             f"assert m.version('django-newsletter') == '{VERSION}'"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    try:
        venv.create(VENV, with_pip=True, clear=True)
        # sorl-thumbnail: its first migration imports it, and it is the thumbnailer it documents.
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"django-newsletter=={VERSION}",
                        "sorl-thumbnail"],
                       check=True, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        return f"pip could not install django-newsletter {VERSION}: {detail.strip().splitlines()[-1:]}"
    return python


def run_inside(port: int, html: str, subject: str, count: int) -> dict[str, Any]:
    """In the peer's venv: a Django project, its subscriptions and message, then submit_newsletter timed."""
    import django
    from django.conf import settings
    from django.urls import include, path

    folder = Path(tempfile.mkdtemp(prefix="mailmag-peer-"))
    settings.configure(
        SECRET_KEY="benchmark", USE_TZ=True, TIME_ZONE="Asia/Tokyo", SITE_ID=1, ROOT_URLCONF=__name__,
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "django.contrib.sites",
                        "django.contrib.messages", "sorl.thumbnail", "newsletter"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(folder / "db.sqlite3")}},
        TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}],
        EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend", EMAIL_HOST="127.0.0.1", EMAIL_PORT=port,
        DEFAULT_FROM_EMAIL="magazine@example.jp", NEWSLETTER_THUMBNAIL="sorl-thumbnail", LOGGING_CONFIG=None,
    )
    django.setup()
    urlpatterns.append(path("newsletter/", include("newsletter.urls")))
    from django.contrib.sites.models import Site
    from django.core.management import call_command
    from django.utils import timezone
    from newsletter.models import Article, Message, Newsletter, Submission, Subscription

    call_command("migrate", verbosity=0)
    Site.objects.filter(id=1).update(domain="news.example.jp", name="news")
    newsletter = Newsletter.objects.create(title="メールマガジン", slug="news", email="magazine@example.jp",
                                           sender="事務局")
    for i in range(count):
        Subscription.objects.create(newsletter=newsletter, name_field=f"会員 {i}",
                                    email_field=f"r{i}@example.jp", subscribed=True)
    message = Message.objects.create(title=subject, slug="issue-1", newsletter=newsletter)
    Article.objects.create(post=message, title=subject, text=html, sortorder=10)
    submission = Submission.from_message(message)
    submission.publish_date = timezone.now() - timezone.timedelta(minutes=1)
    submission.prepared = True
    submission.save()

    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    call_command("submit_newsletter", verbosity=0)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"sent": count, "seconds": seconds, "cpu": cpu, "version": VERSION,
            "django": django.get_version()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True, help="the SMTP sink's port on 127.0.0.1")
    parser.add_argument("--html", type=Path, required=True, help="the issue's HTML (one article)")
    parser.add_argument("--subject", default="メールマガジン")
    parser.add_argument("-n", "--subscriptions", type=int, default=2000)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        html = args.html.read_text(encoding="utf-8")
        print(json.dumps(run_inside(args.port, html, args.subject, args.subscriptions)), flush=True)
        return
    python = ensure_venv()
    if isinstance(python, str):
        print(json.dumps({"skipped": python}), flush=True)
        return
    done = subprocess.run([str(python), __file__, "--inside", *sys.argv[1:]], capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        why = (done.stderr.strip().splitlines() or ["no output"])[-1]
        print(json.dumps({"skipped": f"django-newsletter {VERSION} failed to run: {why}"}), flush=True)
        return
    print(lines[-1], flush=True)


if __name__ == "__main__":
    main()
