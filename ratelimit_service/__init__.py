"""ratelimit_service: Envoy's RateLimitService with multi-tier limits, on Redis or in memory."""
