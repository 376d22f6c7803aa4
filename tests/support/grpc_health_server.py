#!/usr/bin/env python3
"""A real gRPC health server (grpcio + grpcio-health-checking) on 127.0.0.1 for the probe tests.

Serves grpc.health.v1.Health with "" and "web" SERVING and "sick" NOT_SERVING; any other
service name gets NOT_FOUND, as the reference implementation answers. Prints the port it bound
(":0") on stdout, then serves until stdin closes (the test dropping its end).
"""
import sys
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
servicer = health.HealthServicer()
servicer.set("", health_pb2.HealthCheckResponse.SERVING)
servicer.set("web", health_pb2.HealthCheckResponse.SERVING)
servicer.set("sick", health_pb2.HealthCheckResponse.NOT_SERVING)
health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
sys.stdin.read()
server.stop(0)
