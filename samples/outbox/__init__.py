"""The outbox sample: orders written and their events published atomically, charged once."""
