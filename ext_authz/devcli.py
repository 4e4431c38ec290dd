"""`outrider token`: a DEVELOPMENT-ONLY token signed with the example key beside the config's JWKS file."""

from __future__ import annotations

import argparse
import sys

from ext_authz.config import auth_of

DEFAULT_CONFIG = "examples/gateway.yaml"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sub", required=True)
    p.add_argument("--roles", default="user", help="comma-separated roles")
    p.add_argument("--tier", default="free")
    p.add_argument("--email")
    p.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    p.add_argument("--config", default=DEFAULT_CONFIG)


def cmd_token(args: argparse.Namespace) -> int:
    from outrider.cli import load_or_report
    from outrider.devtoken import DEV_KEY_WARNING, mint_dev_token

    config = load_or_report(args.config)
    if config is None:
        return 1
    provider = next((p for p in auth_of(config).providers if p.jwks_file is not None), None)
    if provider is None or provider.jwks_file is None:
        print("no provider with a jwks_file in the config; cannot find the dev key", file=sys.stderr)
        return 1
    keys_dir = provider.jwks_file.parent
    if not (keys_dir / "dev-private.pem").exists():
        print(f"no dev-private.pem beside {provider.jwks_file}", file=sys.stderr)
        return 1
    token = mint_dev_token(
        keys_dir, provider.issuer, provider.audiences[0] if provider.audiences else None,
        subject=args.sub, roles=[r for r in args.roles.split(",") if r], tier=args.tier,
        ttl_s=args.ttl, email=args.email,
    )
    print(DEV_KEY_WARNING, file=sys.stderr)
    print(token)
    return 0
