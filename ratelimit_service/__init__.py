"""ratelimit_service: not built yet (see its issue); nothing here pretends to work."""
