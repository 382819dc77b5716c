"""The log redaction step on its own: what it hides and what it leaves."""

from __future__ import annotations

import pytest

from tasks.redaction import REDACTED, redact

pytestmark = pytest.mark.unit

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJrZXkiLCJ2aWRlbyI6e319.c2lnbmF0dXJlLWJ5dGVz"


def test_values_of_sensitive_keys_are_hidden_and_stray_tokens_masked() -> None:
    event = redact(
        None,
        "info",
        {
            "event": "dispatched",
            "metadata": {"user_phone": "+15550100"},
            "job_payload": "{...}",
            "api_token": "t",
            "error": f"LiveKit answered 401 to Bearer {JWT} on CreateDispatch",
            "room": "support-42",
            "attempt": 2,
        },
    )
    assert event == {
        "event": "dispatched",
        "metadata": REDACTED,
        "job_payload": REDACTED,
        "api_token": REDACTED,
        "error": f"LiveKit answered 401 to Bearer {REDACTED} on CreateDispatch",
        "room": "support-42",
        "attempt": 2,
    }
