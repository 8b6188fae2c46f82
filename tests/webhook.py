"""The test suite's real HTTP receiver (the implementation lives in the package)."""

from gatewayd.webhook_receiver import (
    ReceivedRequest,
    Reply,
    WebhookReceiver,
    open_webhook_receiver,
)

__all__ = ["ReceivedRequest", "Reply", "WebhookReceiver", "open_webhook_receiver"]
