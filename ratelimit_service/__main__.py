"""`python -m ratelimit_service --config FILE` runs the rate limit service (services.ratelimit.workers processes);
`--reference-env` runs it from envoyproxy/ratelimit's environment settings; `check-config DIR` checks files."""

import sys

if sys.argv[1:2] == ["check-config"]:
    from ratelimit_service.check_config import main

    sys.exit(main(sys.argv[2:]))

from outrider.workers import launch

launch("ratelimit", "ratelimit_service.app:main")
