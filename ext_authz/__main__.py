"""`python -m ext_authz --config FILE` runs the ext_authz gRPC service (services.ext_authz.workers processes)."""

from outrider.workers import launch

launch("ext_authz", "ext_authz.app:main")
