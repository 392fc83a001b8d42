/*
 * grpc_channel.c - the channel to one filter (see grpc_channel.h).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "mgw/grpc_channel.h"

#include <errno.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc_security.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mgw/xmalloc.h"

/* round_robin, with client-side health checking (grpc.health.v1 Watch, overall server
 * status ""): an address whose filter says NOT_SERVING gets no new stream, while the
 * streams it has go on - a pod being drained finishes its SMTP sessions and gets no new
 * ones. A filter without the health service answers UNIMPLEMENTED, and gRPC then treats
 * it as healthy. */
#define ROUND_ROBIN_CONFIG \
    "{\"loadBalancingConfig\":[{\"round_robin\":{}}],\"healthCheckConfig\":{\"serviceName\":\"\"}}"

/* A whole (small) PEM file as a C string; NULL with a reason in err on failure. */
static char *read_pem(const char *path, char *err, size_t errlen)
{
    FILE *fp = fopen(path, "rb");
    char *buf;
    long n;

    if (fp == NULL || fseek(fp, 0, SEEK_END) != 0 || (n = ftell(fp)) < 0 || n > (1 << 20) ||
        fseek(fp, 0, SEEK_SET) != 0) {
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        if (fp)
            fclose(fp);
        return NULL;
    }
    buf = mgw_xmalloc((size_t)n + 1);
    if (fread(buf, 1, (size_t)n, fp) != (size_t)n) {
        snprintf(err, errlen, "cannot read %s", path);
        fclose(fp);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    fclose(fp);
    return buf;
}

/* Plaintext unless TLS is configured; with a client certificate, mutual TLS. */
static grpc_channel_credentials *credentials_new(const struct mgw_filter_conf *c, char *err,
                                                 size_t errlen)
{
    grpc_ssl_pem_key_cert_pair pair = {0};
    grpc_channel_credentials *cr = NULL;
    char *ca = NULL, *cert = NULL, *key = NULL;

    if (!c->tls)
        return grpc_insecure_credentials_create();
    if (c->tls_ca != NULL && (ca = read_pem(c->tls_ca, err, errlen)) == NULL)
        goto out;
    if (c->tls_cert != NULL) {
        if ((cert = read_pem(c->tls_cert, err, errlen)) == NULL ||
            (key = read_pem(c->tls_key, err, errlen)) == NULL)
            goto out;
        pair.cert_chain = cert;
        pair.private_key = key;
    }
    /* gRPC copies the PEM strings; NULL roots means its default root store. */
    cr = grpc_ssl_credentials_create(ca, cert ? &pair : NULL, NULL, NULL);
    if (cr == NULL)
        snprintf(err, errlen, "TLS credentials refused (bad PEM?)");
out:
    free(ca);
    free(cert);
    if (key != NULL) {
        memset(key, 0, strlen(key)); /* no private key left behind in freed memory */
        free(key);
    }
    return cr;
}

grpc_channel *mgw_grpc_channel_new(const struct mgw_filter_conf *c, char *err, size_t errlen)
{
    grpc_arg a[10] = {
        /* No transparent retries: we replay nothing (the failure policy decides), and the
         * retry filter's per-call state would cost 6.1 KB per open call (measured with
         * 1,000 and 10,000 idle streams). */
        {.type = GRPC_ARG_INTEGER, .key = (char *)GRPC_ARG_ENABLE_RETRIES, .value.integer = 0},
        /* We never compress what we send: without that part of gRPC's compression state
         * an open call costs 0.2 KB less (measured). gRPC then offers no
         * grpc-accept-encoding, but replies a filter gzips anyway are still inflated
         * (tested with a Python filter). Decompression stays on: off, it would save
         * 0.3 KB more, but such replies would then reach mgw_grpc_unpack compressed
         * (gRPC 1.51's byte_buffer_reader does not inflate) and fail as out_of_contract. */
        {.type = GRPC_ARG_INTEGER, .key = (char *)GRPC_ARG_ENABLE_PER_MESSAGE_COMPRESSION,
         .value.integer = 0},
        {.type = GRPC_ARG_INTEGER, .key = (char *)GRPC_ARG_KEEPALIVE_TIME_MS,
         .value.integer = (int)(c->keepalive_time_ms ? c->keepalive_time_ms
                                                     : MGW_FILTER_DEFAULT_KEEPALIVE_TIME_MS)},
        {.type = GRPC_ARG_INTEGER, .key = (char *)GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
         .value.integer = (int)(c->keepalive_timeout_ms ? c->keepalive_timeout_ms
                                                        : MGW_FILTER_DEFAULT_KEEPALIVE_TIMEOUT_MS)},
        {.type = GRPC_ARG_INTEGER, .key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
         .value.integer = (int)c->max_message},
        {.type = GRPC_ARG_INTEGER, .key = (char *)GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
         .value.integer = 200},
        {.type = GRPC_ARG_INTEGER, .key = (char *)GRPC_ARG_MIN_RECONNECT_BACKOFF_MS,
         .value.integer = 200},
        {.type = GRPC_ARG_INTEGER, .key = (char *)GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
         .value.integer = 2000},
    };
    grpc_channel_args args = {.num_args = 8, .args = a};
    grpc_channel_credentials *cr = credentials_new(c, err, errlen);
    grpc_channel *ch;

    if (cr == NULL)
        return NULL;
    /* One connection per address behind the target (every pod of a headless Service),
     * each new stream on the next one. */
    if (c->load_balancing == MGW_LB_ROUND_ROBIN)
        a[args.num_args++] = (grpc_arg){.type = GRPC_ARG_STRING,
                                        .key = (char *)GRPC_ARG_SERVICE_CONFIG,
                                        .value.string = (char *)ROUND_ROBIN_CONFIG};
    if (c->tls && c->tls_server_name != NULL)
        a[args.num_args++] = (grpc_arg){.type = GRPC_ARG_STRING,
                                        .key = (char *)GRPC_SSL_TARGET_NAME_OVERRIDE_ARG,
                                        .value.string = c->tls_server_name};
    ch = grpc_channel_create(c->target, cr, &args);
    grpc_channel_credentials_release(cr);
    return ch;
}

grpc_slice mgw_grpc_pack_slice(const ProtobufCMessage *m)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    grpc_slice s = grpc_slice_malloc(n);

    protobuf_c_message_pack(m, GRPC_SLICE_START_PTR(s));
    return s;
}

grpc_byte_buffer *mgw_grpc_pack(const ProtobufCMessage *m)
{
    grpc_slice s = mgw_grpc_pack_slice(m);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1); /* takes its own ref */

    grpc_slice_unref(s);
    return bb;
}

/* Unpack a received buffer (one slice without copy when possible; GRPC_CORE.md §3). */
ProtobufCMessage *mgw_grpc_unpack(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *d)
{
    grpc_byte_buffer_reader r;
    grpc_slice s;
    ProtobufCMessage *m;

    if (bb->type == GRPC_BB_RAW && bb->data.raw.compression == GRPC_COMPRESS_NONE &&
        bb->data.raw.slice_buffer.count == 1) {
        s = bb->data.raw.slice_buffer.slices[0];
        return protobuf_c_message_unpack(d, NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
    }
    if (!grpc_byte_buffer_reader_init(&r, bb))
        return NULL;
    s = grpc_byte_buffer_reader_readall(&r);
    m = protobuf_c_message_unpack(d, NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
    grpc_slice_unref(s);
    grpc_byte_buffer_reader_destroy(&r);
    return m;
}
