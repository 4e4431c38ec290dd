"""xds_server: an ADS management server (state of the world and delta) serving the compiled gateway config."""
