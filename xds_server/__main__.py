"""`python -m xds_server --config FILE` runs the xDS control plane."""

from xds_server.app import main

main()
