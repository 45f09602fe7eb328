"""Page language: Japanese as written in the templates, English from templates/web/messages.en.toml."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from mailmag.errors import ConfigError

LANGS = ("ja", "en")


class Catalog:
    """`_("日本語", name=…)`: the text itself in Japanese, its English entry where lang is en."""

    def __init__(self, english: dict[str, str]) -> None:
        self.english = english

    @classmethod
    def load(cls, path: Path) -> Catalog:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read the English page texts {path}: {exc}") from exc
        return cls({str(k): str(v) for k, v in data.items()})

    def translate(self, lang: str, text: str, **values: Any) -> str:
        # A missing entry shows the Japanese rather than failing the page (a test checks coverage).
        chosen = self.english.get(text, text) if lang == "en" else text
        return chosen.format(**values) if values else chosen


def pick_lang(*candidates: str | None, default: str = "ja") -> str:
    """The first candidate that is a language the pages have, else `default`."""
    for candidate in candidates:
        if candidate in LANGS:
            return candidate
    return default
