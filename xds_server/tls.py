"""mTLS on the ADS port: server credentials that follow their files, and the identities of a client certificate.

With `services.xds.tls` every ADS client must present a certificate signed by `client_ca_file`, and the
identities in it (URI/DNS subject alternative names, else the subject CN) decide which node ids it may
claim (xds_server/nodes.py). The certificate files are read again when they change (rotation without a
restart): gRPC asks the fetcher before each new handshake.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping, Sequence

import grpc

from outrider.config.watch import FileChangeDetector
from outrider.config.xds import XdsTls

log = logging.getLogger("xds_server.tls")


def _configuration(tls: XdsTls) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())], root_certificates=tls.client_ca_file.read_bytes())


def server_credentials(tls: XdsTls) -> grpc.ServerCredentials:
    """mTLS credentials (client certificates required), reloaded when a certificate file changes."""
    files = FileChangeDetector([tls.cert_file, tls.key_file, tls.client_ca_file])
    retry = [False]  # a change seen while the files did not make a valid pair yet (one written, not the other)

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        if not files.changed() and not retry[0]:
            return None  # keep the current one
        try:
            # A certificate that does not match its key would fail every handshake: check the pair first.
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(tls.cert_file, tls.key_file)
            configuration = _configuration(tls)
        except (OSError, ssl.SSLError) as exc:  # mid-rotation: serve the previous ones, look again next time
            retry[0] = True
            log.error("ADS certificates unusable; the previous ones stay", extra={"error": str(exc)})
            return None
        retry[0] = False
        log.info("ADS certificates reloaded")
        return configuration

    return grpc.dynamic_ssl_server_credentials(_configuration(tls), fetch, require_client_authentication=True)


def peer_identities(auth_context: Mapping[str, Sequence[bytes]]) -> frozenset[str]:
    """The identities of a verified client certificate: its subject alternative names, else its subject CN."""
    names = {v.decode(errors="replace") for v in auth_context.get("x509_subject_alternative_name", ())}
    if not names:
        names = {v.decode(errors="replace") for v in auth_context.get("x509_common_name", ())}
    return frozenset(names)
