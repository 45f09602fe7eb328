"""How it leaves: the outbox, messages, transports, dispatch and tokens."""
