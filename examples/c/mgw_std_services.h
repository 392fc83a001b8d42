/*
 * mgw_std_services.h - the standard gRPC services every miltergw C server offers besides
 * miltergw.v1.Filter: health checking (grpc.health.v1.Health Check and Watch) and server reflection
 * (grpc.reflection.v1alpha and v1 ServerReflection/ServerReflectionInfo).
 * SPDX-License-Identifier: Apache-2.0
 *
 * Pure: serialized request in, serialized response out; the gRPC plumbing stays in
 * mgw_filter.c. The reflection data is the FileDescriptorSet of filter.proto, health.proto
 * and reflection.proto that protoc wrote at build time (mgw_descriptors.c, generated).
 * Internal to the C helper libraries; not an API for filters.
 */
#ifndef MGW_STD_SERVICES_H
#define MGW_STD_SERVICES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* gRPC method paths. */
#define MGW_HEALTH_CHECK   "/grpc.health.v1.Health/Check"
#define MGW_HEALTH_WATCH   "/grpc.health.v1.Health/Watch"
#define MGW_REFLECTION_V1A "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
#define MGW_REFLECTION_V1  "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"

/*
 * Answers a HealthCheckRequest: SERVING or NOT_SERVING for "" and "miltergw.v1.Filter"
 * (and the other services served). Returns 0 and a malloc'ed response in *out (*out_len
 * bytes; the caller frees it), or -1 for an unknown service or an undecodable request
 * (answer the call with NOT_FOUND).
 */
int mgw_health_answer(const uint8_t *req, size_t len, bool serving, uint8_t **out, size_t *out_len);

/*
 * Answers one ServerReflectionRequest with one ServerReflectionResponse (malloc'ed in
 * *out, *out_len bytes, freed by the caller). Unknown names get an ErrorResponse
 * (NOT_FOUND), as the protocol wants. Returns -1 only for an undecodable request.
 */
int mgw_reflection_answer(const uint8_t *req, size_t len, uint8_t **out, size_t *out_len);

#endif
