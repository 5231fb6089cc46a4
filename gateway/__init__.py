"""The process around the schema: settings, auth, transports, embedded Redis, CLI."""
