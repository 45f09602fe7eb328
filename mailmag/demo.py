"""`mailmag demo`: a sample council built through the domain functions, issue 1 sent into .eml files.

Everything lives in one folder (default ./mailmag-demo): its own mailmag.toml (demo mode,
SQLite, file transport), database, outbox and previews. Each run starts over: the demo's
own files in the folder are removed first, so running it twice gives the same result.
A folder whose mailmag.toml is not a demo's is refused, so a real installation is never
touched.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
import tomllib
from pathlib import Path

from mailmag import db
from mailmag.audience import imports
from mailmag.audience.subscribers import Consent
from mailmag.config import ENV_SECRET_KEY, Config, load_config
from mailmag.content import issues, items, orgs
from mailmag.delivery.transports import make_transport
from mailmag.errors import InvalidInput, Sentence
from mailmag.scheduling.sending import make_dispatcher
from mailmag.services import Services

DATA = Path(__file__).resolve().parent / "data"
DEFAULT_DIR = "mailmag-demo"
# The planning meeting was on 2026-11-19 and the events follow in 2027: the issue is dated between,
# so the demo shows no "already past" warnings whenever it is run.
ISSUE_DATE = dt.date(2026, 12, 1)

CONFIG_TEXT = """\
# Written by `mailmag demo`; running the demo again starts this folder over.
# Every key, its default and its meaning: config.example.toml in mailmag's source.

[mailmag]
base_url = "http://127.0.0.1:8025"
# Demo mode runs without MAILMAG_SECRET_KEY (links are signed with a public key): never in production.
demo = true

[database]
url = "sqlite:///mailmag.db"

[sender]
from = "magazine@example.jp"
name = "中国地域産学官コラボレーション会議 事務局"
postal_address = "〒730-0000 広島県広島市中区サンプル町1-2-3（デモ用の住所）"
contact = "jimukyoku@example.jp"
list_id = "news.example.jp"

[smtp]
# Messages are written as .eml files into outbox/ instead of being sent.
transport = "file"
file_dir = "outbox"
# No relay, so no relay limit (0 = unlimited).
rate_per_second = 0
"""

# 20 sample subscribers: member organizations' staff, on reserved example domains only.
SUBSCRIBERS_CSV = """\
メールアドレス,氏名,所属,言語,配信カテゴリ
yamamoto.kenji@example.jp,山本 健二,中国経済連合会,ja,
nakamura.yumi@example.ac.jp,中村 由美,広島大学 産学・地域連携センター,ja,events
kobayashi.takeshi@example.jp,小林 剛,産業技術総合研究所中国センター,ja,
kato.megumi@example.jp,加藤 恵,中国経済産業局 地域経済課,ja,news
yoshida.satoshi@example.jp,吉田 聡,ちゅうごく産業創造センター,ja,events;news
matsumoto.akiko@example.jp,松本 明子,中小企業基盤整備機構 中国本部,ja,
inoue.hiroshi@example.jp,井上 博,中国地域ニュービジネス協議会,ja,
kimura.naoko@example.jp,木村 直子,中国総合通信局,ja,news
hayashi.ryota@example.ac.jp,林 亮太,岡山大学 研究推進機構,ja,events
shimizu.kaori@example.ac.jp,清水 香織,島根大学 地域未来協創本部,ja,
yamaguchi.daisuke@example.ac.jp,山口 大輔,鳥取大学 研究推進機構,ja,
mori.ayaka@example.ac.jp,森 彩花,山口大学 産学公連携センター,ja,events
ikeda.makoto@example.jp,池田 誠,株式会社サンプル精機,ja,
hashimoto.emi@example.jp,橋本 恵美,サンプル化成株式会社,ja,events;news
ishikawa.jun@example.jp,石川 純,広島県 商工労働局,ja,
ogawa.shinji@example.jp,小川 慎二,松江市 産業経済部,ja,events
fujita.mai@example.ac.jp,藤田 麻衣,県立広島大学 地域基盤研究機構,ja,
emily.carter@example.ac.jp,Emily Carter,Hiroshima University,en,
nguyen.van.an@example.ac.jp,Nguyen Van An,Okayama University,en,events
tanaka.ken@example.jp,Ken Tanaka,Sample Robotics Co.,en,news
"""


@dataclasses.dataclass
class DemoResult:
    """What the demo built and where its files are."""

    directory: Path
    config_file: Path
    outbox: Path
    preview_html: Path
    preview_text: Path
    subscribers_csv: Path
    base_url: str
    orgs: int
    items: int
    subscribers: int
    issue_id: int
    issue_number: int
    issue_title: str
    subject: str
    sent: int
    failed: int
    messages: list[Path]
    warnings: list[Sentence]


def run(directory: str | os.PathLike = DEFAULT_DIR) -> DemoResult:
    """Build the sample council in `directory` from scratch and send issue 1 through the file transport."""
    folder = Path(directory)
    _start_over(folder)
    config = _write_config(folder)
    services = Services(config)
    try:
        db.init_db(services.engine)
        return _build(folder, config, services)
    finally:
        services.close()


def _start_over(folder: Path) -> None:
    """Remove what an earlier demo run left in `folder`; refuse a folder that is not a demo's."""
    if folder.exists() and not folder.is_dir():
        raise InvalidInput(f"{folder} is a file, not a folder: choose another --dir",
                           ja=f"「{folder}」はフォルダではなくファイルです。別のフォルダを指定してください")
    config_file = folder / "mailmag.toml"
    if config_file.exists() and not _is_demo_config(config_file):
        raise InvalidInput(
            f"{config_file} is not a demo configuration (no demo = true): the demo would overwrite "
            "a real installation; choose another --dir",
            ja=f"「{config_file}」はデモの設定ではありません（demo = true がありません）。"
               "デモが実際の設定を上書きしてしまうため、別のフォルダを指定してください",
        )
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("mailmag.db", "mailmag.db-wal", "mailmag.db-shm", "issue-1.html", "issue-1.txt",
                 "subscribers.csv"):
        (folder / name).unlink(missing_ok=True)
    shutil.rmtree(folder / "outbox", ignore_errors=True)


def _is_demo_config(path: Path) -> bool:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    return document.get("mailmag", {}).get("demo") is True


def _write_config(folder: Path) -> Config:
    path = folder / "mailmag.toml"
    path.write_text(CONFIG_TEXT, encoding="utf-8")
    # Only the secret passes through from the environment: a MAILMAG_DATABASE_URL meant for the
    # real installation must never receive sample data.
    env = {ENV_SECRET_KEY: os.environ[ENV_SECRET_KEY]} if os.environ.get(ENV_SECRET_KEY) else {}
    return load_config(path, env=env)


def _build(folder: Path, config: Config, services: Services) -> DemoResult:
    csv_path = folder / "subscribers.csv"
    csv_path.write_text("\ufeff" + SUBSCRIBERS_CSV, encoding="utf-8")  # with a BOM, as Excel saves it
    with services.session() as session:
        added_orgs = orgs.add_file(session, DATA / "demo_orgs.toml")
        added_items = items.add_files(session, sorted((DATA / "demo_items").glob("*.md"))).items
        items.approve(session, [item.id for item in added_items])
        consent = Consent("import", "sample subscribers of mailmag demo")
        report = imports.import_file(session, csv_path, consent, topics=config.topics)
        composed = issues.compose(session, config, today=ISSUE_DATE)
        issue = composed.issue
        html_path, text_path = folder / f"issue-{issue.id}.html", folder / f"issue-{issue.id}.txt"
        html_path.write_text(issues.preview(session, config, issue.id, "html"), encoding="utf-8")
        text_path.write_text(issues.preview(session, config, issue.id, "text"), encoding="utf-8")
        issues.start_sending(session, config, issue, today=ISSUE_DATE)
        subject = next(r.subject for r in issue.renderings if r.lang == "ja")
    stats = make_dispatcher(services, make_transport(config)).run(once=True)
    outbox_dir = Path(config.smtp.file_dir)
    return DemoResult(
        directory=folder, config_file=folder / "mailmag.toml", outbox=outbox_dir, preview_html=html_path,
        preview_text=text_path, subscribers_csv=csv_path, base_url=config.mailmag.base_url,
        orgs=len(added_orgs), items=len(added_items), subscribers=report.added,
        issue_id=issue.id, issue_number=issue.number or 0, issue_title=issue.title, subject=subject,
        sent=stats.sent,
        failed=stats.failed, messages=sorted(outbox_dir.glob("*.eml")), warnings=composed.warnings,
    )


def next_steps(result: DemoResult) -> list[tuple[list[str], str]]:
    """Commands to try on the demo (arguments after `mailmag`), each with what it shows."""
    config = ["--config", str(result.config_file)]
    number = str(result.issue_id)
    return [
        ([*config, "issues", "preview", number], "the issue as plain text (add -o issue.html for HTML)"),
        ([*config, "issues", "status", number], "how far the sending came"),
        ([*config, "subscribers", "list"], f"the {result.subscribers} sample subscribers"),
        ([*config, "items", "list"], "the items, now published"),
        ([*config, "orgs", "token", "cef"], "the private submission link of 中国経済連合会"),
        ([*config, "serve"],
         f"the web app: open {result.base_url}/archive/{result.issue_number} (Ctrl-C stops it)"),
    ]
