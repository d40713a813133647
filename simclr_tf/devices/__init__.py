"""Devices: distribution strategies and compute precision."""
