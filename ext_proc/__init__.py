"""Envoy ext_proc service: header, query and JSON body transformations, response caching, request validation."""
