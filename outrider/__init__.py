"""outrider kernel: config model and loading, logging, metrics, gRPC bootstrap, Envoy config, CLI."""
