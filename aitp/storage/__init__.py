"""What survives a restart: SQLite files for the journal (claims, outbox) and the rate-limit counters."""
