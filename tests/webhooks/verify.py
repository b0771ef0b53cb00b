"""The official Standard Webhooks Python library's verdict on deliveries.

Reads {"secret": "whsec_...", "deliveries": [{"body": str, "headers": {...}}]}
on stdin and prints a JSON list: true where `Webhook(secret).verify` accepts
the delivery, false where it raises. Used by tests/api/webhooks.rs.
"""
import json
import sys

from standardwebhooks.webhooks import Webhook

request = json.load(sys.stdin)
verdicts = []
for delivery in request["deliveries"]:
    try:
        Webhook(request["secret"]).verify(delivery["body"], delivery["headers"])
        verdicts.append(True)
    except Exception:  # the library's WebhookVerificationError, or a bad header
        verdicts.append(False)
print(json.dumps(verdicts))
