"""The relay daemon: read the event streams, coalesce, PATCH, acknowledge or dead-letter."""
