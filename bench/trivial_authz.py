"""The floor: an always-allow ext_authz server on the same grpc.aio + uvloop bootstrap as the real one."""

from __future__ import annotations

import argparse

import grpc
import uvloop
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2, status_pb2

from outrider.grpc_runtime import serve


class AlwaysAllow(external_auth_pb2_grpc.AuthorizationServicer):
    async def Check(self, request: external_auth_pb2.CheckRequest,
                    context: grpc.aio.ServicerContext) -> external_auth_pb2.CheckResponse:
        return external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.OK))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()

    def register(server: grpc.aio.Server) -> None:
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(AlwaysAllow(), server)

    uvloop.run(serve(register, "127.0.0.1", args.port, ["envoy.service.auth.v3.Authorization"]))


if __name__ == "__main__":
    main()
