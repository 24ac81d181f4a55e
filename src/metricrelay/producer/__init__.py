"""What training code runs: the Emitter, point checks and packing, SDK compatibility, the ingest."""
