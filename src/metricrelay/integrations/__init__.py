"""Training frameworks' own logging hooks on the Emitter: Lightning, Hugging Face Transformers.

Each module imports its framework, so import only the one you use (extras ``[lightning]``,
``[transformers]``); what they share — one rank's emitter and its rules — is in ``ranked``.
"""
