"""Disk image inputs: detection by content (``detect``); the raw source is ``ovfstream.source``."""
