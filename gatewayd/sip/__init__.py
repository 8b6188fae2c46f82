"""SIP MESSAGE client (RFC 3261, RFC 3428): sans-I/O message codec, non-INVITE client
transaction and digest authentication, plus a thin trio driver, shaped like ``smpp/``."""
