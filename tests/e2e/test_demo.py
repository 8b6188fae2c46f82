"""`gatewayd demo`, the README's first command, as a user runs it."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_and_shows_every_delivery() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gatewayd", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "What the receiver got:" in out
    assert out.count("POST /sms/in") == 5  # GSM, UCS-2, keyword, P2P, the joined long one
    assert out.count("POST /legacy/stop.php") == 1  # the keyword's fan-out
    assert "POST /v1/messages -> 202" in out  # the send API
    # its receipt, matched to the message and pushed to the message's status_url
    assert out.count("POST /dlr") == 1
    assert '"custom": {"order": "A-1001"}' in out
    assert "Price: 10€ [promo] {today} ~ ok" in out
    assert "Привет, мир 👋" in out
    assert '"parts": 3' in out
    assert out.count("[JWT verified]") == 5
    assert "7 webhook requests for 8 deliver_sm" in out
