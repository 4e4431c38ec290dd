"""xds_server: not built yet (see its issue); nothing here pretends to work."""
