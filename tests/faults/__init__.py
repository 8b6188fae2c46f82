"""Fault-injection suite: crashes, carrier, destination, store and hostile-peer faults."""
