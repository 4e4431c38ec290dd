"""The floor: a pass-through ext_proc server (an empty answer to every message) on the same bootstrap."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import grpc
import uvloop
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc

from outrider.grpc_runtime import serve

_EMPTY = {
    "request_headers": pb.ProcessingResponse(request_headers=pb.HeadersResponse()),
    "response_headers": pb.ProcessingResponse(response_headers=pb.HeadersResponse()),
    "request_body": pb.ProcessingResponse(request_body=pb.BodyResponse()),
    "response_body": pb.ProcessingResponse(response_body=pb.BodyResponse()),
    "request_trailers": pb.ProcessingResponse(request_trailers=pb.TrailersResponse()),
    "response_trailers": pb.ProcessingResponse(response_trailers=pb.TrailersResponse()),
}


class PassThrough(external_processor_pb2_grpc.ExternalProcessorServicer):
    async def Process(self, request_iterator: AsyncIterator[pb.ProcessingRequest],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ProcessingResponse]:
        async for message in request_iterator:
            yield _EMPTY[message.WhichOneof("request") or "request_headers"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()

    def register(server: grpc.aio.Server) -> None:
        external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server(PassThrough(), server)

    uvloop.run(serve(register, "127.0.0.1", args.port, ["envoy.service.ext_proc.v3.ExternalProcessor"]))


if __name__ == "__main__":
    main()
