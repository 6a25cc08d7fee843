"""Example participants: real processes with their own state in Redis."""
