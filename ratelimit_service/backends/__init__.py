"""Counter stores behind one interface: memory, Redis, Redis Cluster."""
