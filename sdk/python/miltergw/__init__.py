# SPDX-License-Identifier: Apache-2.0
# Copyright the miltergw authors.
"""miltergw: Python SDK for miltergw filters.

- `miltergw.Milter`: pymilter's API (Milter.Base, the decorators, runmilter, ...): a
  pymilter milter becomes a miltergw gRPC filter by importing `miltergw.Milter as Milter`.
- `miltergw.v1.filter_pb2`, `filter_pb2_grpc`: the generated filter.proto stubs, for
  filters written against the gRPC API directly.
- `miltergw.grpcstd`: grpc.health.v1 and server reflection for a sync grpc.server.
"""
__version__ = "0.1.0"
