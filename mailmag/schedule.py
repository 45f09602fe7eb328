"""The scheduling API the CLI and the dispatcher use; the code lives in `mailmag.scheduling`."""

from __future__ import annotations

from mailmag.scheduling.jobs import (
    add_auto,
    fire_auto,
    fire_due_autos,
    fire_due_sends,
    last_send_run,
    list_auto,
    remove_auto,
    schedule_send,
    unschedule_send,
)
from mailmag.scheduling.when import parse_when
from mailmag.scheduling.window import (
    next_window_open,
    next_window_start,
    waiting_for_window,
    waiting_note,
    window_open,
)

__all__ = [
    "add_auto", "fire_auto", "fire_due_autos", "fire_due_sends", "last_send_run", "list_auto",
    "next_window_open", "next_window_start", "parse_when", "remove_auto", "schedule_send", "unschedule_send",
    "waiting_for_window", "waiting_note", "window_open",
]
