# SPDX-License-Identifier: Apache-2.0
"""Generated from sdk/python/proto/miltergw/_std: grpc.health.v1 and grpc.reflection (sdk/python/generate_stubs.py)."""
