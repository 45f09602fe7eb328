"""Compose benchmark: the time to compose one issue as its item grows from 50 KB to 800 KB.

    .venv/bin/python benchmarks/compose.py                       # 50 … 800 KB, both shapes
    .venv/bin/python benchmarks/compose.py --sizes 100,200,400 --shape article

Composing must grow linearly with the item: each doubling of the item should double the time
(ratio ≈ 2.0), not triple it. Each size runs in a fresh (spawned) process, as `mailmag issues
new` does, so one size's garbage does not weigh on the next. What is timed is what `issues
new` does beyond the database: Jinja2 + Markdown + nh3 + premailer for the HTML, the plain
text and its kinsoku wrapping, for both editions (ja, en), then compose's warnings
(`issues.check`). Also printed: the same with the garbage collector off, and the time the
collector took (its callbacks), to tell the collector's share from the work's.

Two item shapes, normalized as `items submit` stores them:

- `article`: the reference article (mailmag/data/reference_article.txt, a real meeting report
  pasted from a PDF: short lines, full-width punctuation) repeated;
- `markdown`: headings, paragraphs with links and emphasis, bullet lists and a table, repeated.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import math
import time
from typing import Any

import common

TODAY = dt.date(2027, 4, 1)
_MARKDOWN_UNIT = (
    "## 第{n}回 企画会議の概要\n\n"
    "5月24日（木），**中国経済連合会**の会議室にて開催した『企画会議』の概要について，"
    "[こちら](https://news.example.jp/reports/{n})でご紹介いたします。詳しくは *事務局* まで。\n\n"
    "- シンポジウム「地域イノベーション創出2012」の開催について\n"
    "- 産学官連携に関する情報の共有（参加機関 12 団体）\n"
    "- 次回の日程：2012年11月22日（木）13:30〜17:00\n\n"
    "| 項目 | 内容 |\n|---|---|\n| 会場 | 広島市中区基町10-52 |\n| 参加費 | 無料 |\n\n"
)


def item_body(shape: str, size_kb: int) -> str:
    """About size_kb of UTF-8 of the given shape, cleaned as `items submit` would store it."""
    from mailmag.content import items

    unit = ((common.DATA / "reference_article.txt").read_text(encoding="utf-8") + "\n\n"
            if shape == "article" else None)
    parts: list[str] = []
    size = 0
    while size < size_kb * 1024:
        part = unit if unit is not None else _MARKDOWN_UNIT.format(n=len(parts) + 1)
        parts.append(part)
        size += len(part.encode())
    fields = {"title": "長い記事", "body": "".join(parts)}
    return items.clean("news", fields, TODAY, limit_kb=size_kb * 2)["body"]


def measure(shape: str, size_kb: int) -> dict[str, Any]:
    """In a fresh process: compose once with the collector on, once with it off."""
    from mailmag.content import issues, render
    from mailmag.models import Item, Org

    body = item_body(shape, size_kb)
    config = common.make_config("sqlite://")
    org = Org(id=1, name="中国経済連合会", short_name="中経連")
    item = Item(id=1, kind="news", title="長い記事", body=body, url="", org=org, status="approved")
    spec = render.IssueSpec(1, None, TODAY, [item])
    collecting = [0.0, 0.0]  # start of the running collection, total seconds in collections

    def timer(phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            collecting[0] = time.perf_counter()
        else:
            collecting[1] += time.perf_counter() - collecting[0]

    def compose() -> float:
        started = time.perf_counter()
        env = render.make_environment(config.templates_path)
        editions = render.render_issue(env, config, spec)
        issues.check(config, [item], editions, TODAY)
        return time.perf_counter() - started

    compose()  # imports, template compilation, BudouX's model: not what grows with the item
    gc.callbacks.append(timer)
    seconds = compose()
    gc.callbacks.remove(timer)
    gc.disable()
    seconds_no_gc = compose()
    gc.enable()
    return {"shape": shape, "size_kb": size_kb, "body_bytes": len(body.encode()), "seconds": seconds,
            "gc_seconds": collecting[1], "seconds_gc_off": seconds_no_gc}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="50,100,200,400,800",
                        help="item sizes in KB (default: %(default)s)")
    parser.add_argument("--shape", choices=("article", "markdown", "both"), default="both")
    parser.add_argument("--json", metavar="FILE", help="also write the raw numbers to FILE")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    shapes = ("article", "markdown") if args.shape == "both" else (args.shape,)
    print(common.header("compose: one item of growing size, both editions", "none"))
    results = []
    for shape in shapes:
        previous: dict[str, Any] | None = None
        for size in sizes:
            result = common.in_fresh_process(measure, shape, size)
            ratio = ""
            if previous is not None:
                growth = result["body_bytes"] / previous["body_bytes"]
                # the time's growth per doubling of the item: 2.0 is linear, 4.0 quadratic
                per_doubling = 2 ** (math.log2(result["seconds"] / previous["seconds"]) / math.log2(growth))
                ratio = f"  ×{per_doubling:.2f}/doubling"
            print(f"{shape:8} {result['body_bytes'] / 1024:6.0f} KB  {result['seconds']:6.2f} s  "
                  f"(GC {result['gc_seconds']:5.2f} s; GC off {result['seconds_gc_off']:6.2f} s)"
                  f"  {result['seconds'] * 1e6 / result['body_bytes']:5.1f} µs/byte{ratio}  {common.load()}",
                  flush=True)
            results.append(result)
            previous = result
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
