"""The worker's in-process fault tests again, every SMTP transaction pipelined (mailmag.delivery.wire).

Drops after the final dot, 421 mid-batch, 4xx/5xx per recipient, relay refusals and opt-outs
during a run: the outbox must end the same whether MAIL, RCPT and DATA went one at a time or
in one write. (The tests that start worker processes run once, in test_delivery_faults.py:
the pipelined path is forced in this process only.)
"""

from __future__ import annotations

import pytest
from test_delivery_faults import (  # noqa: F401 - collected again here
    test_a_fault_mix_defers_only_the_messages_it_hit,
    test_a_full_mailbox_is_a_soft_bounce_and_an_unknown_user_a_hard_one,
    test_a_relay_that_refuses_to_relay_for_us_stops_the_run_and_fails_nobody,
    test_a_result_refused_because_the_lease_is_gone_is_counted_and_logged,
    test_a_slow_message_keeps_its_lease_and_no_sibling_sends_it_again,
    test_cancel_stops_what_a_running_worker_has_claimed_and_counts_what_went,
    test_content_refusals_stop_the_run_and_leave_the_subscribers_alone,
    test_policy_refusals_from_many_domains_stop_the_run,
    test_the_relay_unreachable_then_back_logs_once_each_way_and_sends_everything,
)

from mailmag.delivery import wire


@pytest.fixture(autouse=True)
def _pipelined(monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(wire.PipelinedConnection, "force", True)
