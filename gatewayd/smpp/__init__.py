"""SMPP 3.4: codec (pdu), sans-I/O session, trio driver and the SMSC simulator."""
