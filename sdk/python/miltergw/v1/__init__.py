# SPDX-License-Identifier: Apache-2.0
"""Generated from proto/miltergw/v1/filter.proto (sdk/python/generate_stubs.py)."""
