"""Destinations: each delivers one event for one job, one kind of I/O per module."""
