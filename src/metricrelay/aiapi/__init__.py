"""The AI API's HTTP contract as a server speaks it: request bodies and error bodies (used by the
reference server and the ingest)."""
