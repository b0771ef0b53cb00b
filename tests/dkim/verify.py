"""Verifies DKIM signatures with dkimpy, an implementation independent of
verimail's, answering its DNS lookups from the records given instead of DNS.

Reads JSON on stdin: {"records": {"<selector>._domainkey.<domain>": "v=DKIM1; ..."},
"messages": ["<raw message>", ...]} and prints one JSON line:
{"verified": [true, false, ...]}. Run by tests/api/dkim.rs.
"""
import json
import sys

import dkim

request = json.load(sys.stdin)
records = request["records"]


def dnsfunc(name, timeout=5):
    value = records.get(name.decode("ascii").rstrip("."))
    return value.encode("ascii") if value is not None else None


verified = [
    bool(dkim.verify(message.encode("utf-8"), dnsfunc=dnsfunc, minkey=2048))
    for message in request["messages"]
]
print(json.dumps({"verified": verified}))
