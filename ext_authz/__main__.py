"""`python -m ext_authz --config FILE` runs the ext_authz gRPC service."""

from ext_authz.app import main

main()
