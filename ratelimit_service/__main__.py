"""`python -m ratelimit_service --config FILE` runs the rate limit gRPC service."""

from ratelimit_service.app import main

main()
