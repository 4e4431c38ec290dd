"""`python -m ext_proc --config FILE` runs the ext_proc gRPC service (services.ext_proc.workers processes)."""

from outrider.workers import launch

launch("ext_proc", "ext_proc.app:main")
