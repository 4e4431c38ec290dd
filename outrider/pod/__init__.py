"""The local pod harness: run a Kubernetes pod spec as local processes in a network namespace of its own."""
