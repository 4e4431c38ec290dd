"""`python -m ext_proc --config FILE` runs the ext_proc gRPC service."""

from ext_proc.app import main

main()
