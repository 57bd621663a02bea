"""Prints the MIME parts of the message on stdin as JSON, decoded by Python's email package:
content type, filename, decoded size, first 8 bytes (hex), and the text of text parts."""
import email
import json
import sys

message = email.message_from_string(sys.stdin.read())
parts = []
for part in message.walk():
    if part.is_multipart():
        continue
    body = part.get_payload(decode=True) or b""
    text = body.decode("utf-8", "replace") if part.get_content_maintype() == "text" else None
    parts.append({"type": part.get_content_type(), "filename": part.get_filename(),
                  "bytes": len(body), "magic": body[:8].hex(), "text": text})
print(json.dumps(parts))
