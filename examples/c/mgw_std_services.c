/*
 * mgw_std_services.c - health checking and server reflection answers (mgw_std_services.h).
 * SPDX-License-Identifier: Apache-2.0
 *
 * Reflection serves the FileDescriptorProtos that protoc put in the build's descriptor
 * set (mgw_descriptors.c). To find a file by symbol we only need, per file, its name,
 * package, imports and top-level names, so a few lines of protobuf wire walking below read
 * them instead of linking the descriptor.proto code. The set is parsed once, lazily.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grpc/health/v1/health.pb-c.h"
#include "grpc/reflection/v1alpha/reflection.pb-c.h"
#include "mgw_std_services.h"

extern const unsigned char mgw_descriptor_set[];
extern const size_t mgw_descriptor_set_len;

#define MAX_FILES 16
#define MAX_NAMES 64 /* top-level messages, enums and services of one file */
#define MAX_DEPS  16
#define NOT_FOUND 5 /* gRPC status code */

struct str {
    const uint8_t *p;
    size_t n;
};

struct file {
    struct str data, name, package;
    struct str deps[MAX_DEPS];
    struct str names[MAX_NAMES];
    bool is_service[MAX_NAMES];
    size_t n_deps, n_names;
};

static struct file files[MAX_FILES];
static size_t n_files;
static pthread_once_t parse_once = PTHREAD_ONCE_INIT;

/* ---- protobuf wire walking --------------------------------------------------------------- */

static bool varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; *p < end && shift < 64; shift += 7) {
        uint8_t b = *(*p)++;
        *v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            return true;
    }
    return false;
}

/* Next field of [*p, end): its number, and its bytes when length-delimited. */
static bool field(const uint8_t **p, const uint8_t *end, unsigned *num, struct str *val)
{
    uint64_t key, n;
    if (!varint(p, end, &key))
        return false;
    *num = (unsigned)(key >> 3);
    val->p = NULL;
    val->n = 0;
    switch (key & 7) {
    case 0: return varint(p, end, &n);
    case 1: n = 8; break;
    case 5: n = 4; break;
    case 2:
        if (!varint(p, end, &n) || n > (uint64_t)(end - *p))
            return false;
        val->p = *p;
        val->n = (size_t)n;
        break;
    default: return false;
    }
    if (n > (uint64_t)(end - *p))
        return false;
    *p += n;
    return true;
}

/* Field 1 (name) of a DescriptorProto, EnumDescriptorProto or ServiceDescriptorProto. */
static struct str name_of(struct str msg)
{
    const uint8_t *p = msg.p, *end = msg.p + msg.n;
    unsigned num;
    struct str v;
    while (p < end && field(&p, end, &num, &v))
        if (num == 1)
            return v;
    return (struct str){NULL, 0};
}

static void parse_file(struct file *f)
{
    const uint8_t *p = f->data.p, *end = f->data.p + f->data.n;
    unsigned num;
    struct str v;
    while (p < end && field(&p, end, &num, &v)) {
        if (num == 1)
            f->name = v;
        else if (num == 2)
            f->package = v;
        else if (num == 3 && f->n_deps < MAX_DEPS)
            f->deps[f->n_deps++] = v;
        else if ((num == 4 || num == 5 || num == 6) && f->n_names < MAX_NAMES) {
            f->is_service[f->n_names] = num == 6;
            f->names[f->n_names++] = name_of(v);
        }
    }
}

static void parse_set(void)
{
    const uint8_t *p = mgw_descriptor_set, *end = p + mgw_descriptor_set_len;
    unsigned num;
    struct str v;
    while (p < end && field(&p, end, &num, &v))
        if (num == 1 && n_files < MAX_FILES) {
            files[n_files].data = v;
            parse_file(&files[n_files++]);
        }
}

static bool str_eq(struct str a, const char *s, size_t n)
{
    return a.n == n && memcmp(a.p, s, n) == 0;
}

static struct file *by_name(const char *s, size_t n)
{
    for (size_t i = 0; i < n_files; i++)
        if (str_eq(files[i].name, s, n))
            return &files[i];
    return NULL;
}

/* The file defining `sym`: "pkg.Top" or anything below it ("pkg.Service.Method"). */
static struct file *by_symbol(const char *sym)
{
    for (size_t i = 0; i < n_files; i++) {
        struct file *f = &files[i];
        size_t pl = f->package.n;
        if (strncmp(sym, (const char *)f->package.p, pl) != 0 || sym[pl] != '.')
            continue;
        const char *top = sym + pl + 1;
        size_t tl = strcspn(top, ".");
        for (size_t k = 0; k < f->n_names; k++)
            if (str_eq(f->names[k], top, tl))
                return f;
    }
    return NULL;
}

/* ---- answers ----------------------------------------------------------------------------- */

static int pack_out(const ProtobufCMessage *m, uint8_t **out, size_t *out_len)
{
    *out_len = protobuf_c_message_get_packed_size(m);
    *out = malloc(*out_len ? *out_len : 1);
    if (*out == NULL) {
        fputs("mgw_filter: out of memory\n", stderr);
        abort();
    }
    protobuf_c_message_pack(m, *out);
    return 0;
}

int mgw_health_answer(const uint8_t *req, size_t len, bool serving, uint8_t **out, size_t *out_len)
{
    Grpc__Health__V1__HealthCheckRequest *r =
        grpc__health__v1__health_check_request__unpack(NULL, len, req);
    if (r == NULL)
        return -1;
    pthread_once(&parse_once, parse_set);
    bool known = r->service[0] == '\0';
    for (size_t i = 0; i < n_files && !known; i++)
        for (size_t k = 0; k < files[i].n_names; k++) {
            struct file *f = &files[i];
            size_t pl = f->package.n, sl = strlen(r->service);
            if (f->is_service[k] && sl == pl + 1 + f->names[k].n &&
                memcmp(r->service, f->package.p, pl) == 0 && r->service[pl] == '.' &&
                memcmp(r->service + pl + 1, f->names[k].p, f->names[k].n) == 0)
                known = true;
        }
    grpc__health__v1__health_check_request__free_unpacked(r, NULL);
    if (!known)
        return -1;
    Grpc__Health__V1__HealthCheckResponse a = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    a.status = serving ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                       : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
    return pack_out(&a.base, out, out_len);
}

/* Adds f and, first, what it imports (each file once) to the response's files. */
static void add_with_deps(Grpc__Reflection__V1alpha__FileDescriptorResponse *fr,
                          ProtobufCBinaryData *slots, const struct file *f, int depth)
{
    for (size_t i = 0; i < fr->n_file_descriptor_proto; i++)
        if (slots[i].data == f->data.p)
            return;
    if (fr->n_file_descriptor_proto == MAX_FILES || depth > MAX_FILES)
        return;
    slots[fr->n_file_descriptor_proto++] =
        (ProtobufCBinaryData){.len = f->data.n, .data = (uint8_t *)f->data.p};
    for (size_t d = 0; d < f->n_deps; d++) {
        const struct file *dep = by_name((const char *)f->deps[d].p, f->deps[d].n);
        if (dep)
            add_with_deps(fr, slots, dep, depth + 1);
    }
}

int mgw_reflection_answer(const uint8_t *req, size_t len, uint8_t **out, size_t *out_len)
{
    Grpc__Reflection__V1alpha__ServerReflectionRequest *r =
        grpc__reflection__v1alpha__server_reflection_request__unpack(NULL, len, req);
    if (r == NULL)
        return -1;
    pthread_once(&parse_once, parse_set);

    Grpc__Reflection__V1alpha__ServerReflectionResponse a =
        GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_RESPONSE__INIT;
    Grpc__Reflection__V1alpha__FileDescriptorResponse fr =
        GRPC__REFLECTION__V1ALPHA__FILE_DESCRIPTOR_RESPONSE__INIT;
    Grpc__Reflection__V1alpha__ListServiceResponse lr =
        GRPC__REFLECTION__V1ALPHA__LIST_SERVICE_RESPONSE__INIT;
    Grpc__Reflection__V1alpha__ExtensionNumberResponse er =
        GRPC__REFLECTION__V1ALPHA__EXTENSION_NUMBER_RESPONSE__INIT;
    Grpc__Reflection__V1alpha__ErrorResponse err = GRPC__REFLECTION__V1ALPHA__ERROR_RESPONSE__INIT;
    Grpc__Reflection__V1alpha__ServiceResponse svc[MAX_FILES * 2];
    Grpc__Reflection__V1alpha__ServiceResponse *svc_ptrs[MAX_FILES * 2];
    char svc_names[MAX_FILES * 2][160];
    ProtobufCBinaryData slots[MAX_FILES];
    const struct file *f = NULL;

    a.valid_host = r->host;
    a.original_request = r;
    fr.file_descriptor_proto = slots;
    switch (r->message_request_case) {
    case GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES:
        lr.service = svc_ptrs;
        for (size_t i = 0; i < n_files; i++)
            for (size_t k = 0; k < files[i].n_names; k++) {
                if (!files[i].is_service[k] || lr.n_service == MAX_FILES * 2)
                    continue;
                size_t n = lr.n_service++;
                svc[n] = (Grpc__Reflection__V1alpha__ServiceResponse)
                    GRPC__REFLECTION__V1ALPHA__SERVICE_RESPONSE__INIT;
                snprintf(svc_names[n], sizeof svc_names[n], "%.*s.%.*s", (int)files[i].package.n,
                         (const char *)files[i].package.p, (int)files[i].names[k].n,
                         (const char *)files[i].names[k].p);
                svc[n].name = svc_names[n];
                svc_ptrs[n] = &svc[n];
            }
        a.message_response_case =
            GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_LIST_SERVICES_RESPONSE;
        a.list_services_response = &lr;
        break;
    case GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME:
        f = by_name(r->file_by_filename, strlen(r->file_by_filename));
        break;
    case GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL:
        f = by_symbol(r->file_containing_symbol);
        break;
    case GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_ALL_EXTENSION_NUMBERS_OF_TYPE:
        if (by_symbol(r->all_extension_numbers_of_type)) { /* proto3: never any extension */
            er.base_type_name = r->all_extension_numbers_of_type;
            a.message_response_case =
                GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ALL_EXTENSION_NUMBERS_RESPONSE;
            a.all_extension_numbers_response = &er;
        }
        break;
    default: break; /* extensions: we define none */
    }
    if (f) {
        add_with_deps(&fr, slots, f, 0);
        a.message_response_case =
            GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_FILE_DESCRIPTOR_RESPONSE;
        a.file_descriptor_response = &fr;
    }
    if (a.message_response_case ==
        GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE__NOT_SET) {
        err.error_code = NOT_FOUND;
        err.error_message = "not found";
        a.message_response_case =
            GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE;
        a.error_response = &err;
    }
    pack_out(&a.base, out, out_len);
    grpc__reflection__v1alpha__server_reflection_request__free_unpacked(r, NULL);
    return 0;
}
