"""`python -m ratelimit_service --config FILE` runs the rate limit service (services.ratelimit.workers processes)."""

from outrider.workers import launch

launch("ratelimit", "ratelimit_service.app:main")
