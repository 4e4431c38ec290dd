"""SIGTERM drains: a call in flight across the signal completes, new calls are refused, health goes NOT_SERVING,
and the process exits 0 — with a real ext_proc stream held open across the signal (grpc_runtime.serve)."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from outrider.process import ManagedProcess, grpc_serving
from tests.ext_proc.conftest import ext_proc_config_dict
from tests.ext_proc.test_xds_mode import XSS_BODY, Stream, headers
from tests.harness import ROOT, with_free_ports, write_config


async def test_a_stream_in_flight_across_sigterm_completes_and_new_calls_are_refused(tmp_path: Path) -> None:
    data = with_free_ports(ext_proc_config_dict())
    config = write_config(data, tmp_path / "gateway.yaml")
    port = data["services"]["ext_proc"]["port"]
    proc = ManagedProcess("ext_proc", [sys.executable, "-m", "ext_proc", "--config", str(config)],
                          ready=grpc_serving("127.0.0.1", port), log_path=tmp_path / "ext_proc.log", cwd=ROOT)
    proc.start().wait_ready(30)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = external_processor_pb2_grpc.ExternalProcessorStub(channel)
            # A route that reads the request body: the stream stays open between headers and body.
            in_flight = Stream(stub, "lab-strict")
            first = await in_flight.send(headers("/api/v1/lab/strict/x", end_of_stream=False))
            assert first.HasField("request_headers")
            assert proc.proc is not None
            proc.proc.send_signal(signal.SIGTERM)
            health = health_pb2_grpc.HealthStub(channel)

            async def refused_or_not_serving() -> bool:
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                except grpc.aio.AioRpcError:
                    return True  # the server takes no new calls while it drains
                return bool(reply.status == health_pb2.HealthCheckResponse.NOT_SERVING)

            for _ in range(100):
                if await refused_or_not_serving():
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("still SERVING after SIGTERM")
            # The stream opened before the signal finishes normally: its body is checked (XSS → 400).
            body = await in_flight.send(pb.ProcessingRequest(request_body=pb.HttpBody(body=XSS_BODY,
                                                                                      end_of_stream=True)))
            assert body.immediate_response.status.code == 400
            in_flight.close()
        assert await asyncio.to_thread(proc.proc.wait, 15) == 0
        log = (tmp_path / "ext_proc.log").read_text()
        assert '"msg":"draining"' in log and '"msg":"stopped"' in log
    finally:
        proc.stop()
