/*
 * test_std_services.c - unit tests of the health and reflection answers
 * (mgw_std_services.h): serialized request in, serialized response out.
 * SPDX-License-Identifier: Apache-2.0
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "grpc/health/v1/health.pb-c.h"
#include "grpc/reflection/v1alpha/reflection.pb-c.h"
#include "mgw_std_services.h"

static int health(const char *service, bool serving, int *status)
{
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    uint8_t buf[256], *out = NULL;
    size_t n;
    req.service = (char *)service;
    size_t len = grpc__health__v1__health_check_request__pack(&req, buf);
    int rc = mgw_health_answer(buf, len, serving, &out, &n);
    if (rc == 0) {
        Grpc__Health__V1__HealthCheckResponse *a =
            grpc__health__v1__health_check_response__unpack(NULL, n, out);
        assert_non_null(a);
        *status = a->status;
        grpc__health__v1__health_check_response__free_unpacked(a, NULL);
    }
    free(out);
    return rc;
}

/* Health: "" and every service served are known; the status follows `serving`. */
static void test_health_answers_known_services_and_refuses_others(void **state)
{
    static const struct {
        const char *service;
        bool serving;
        int rc, status;
    } cases[] = {
        {"", true, 0, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING},
        {"", false, 0, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING},
        {"miltergw.v1.Filter", true, 0,
         GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING},
        {"grpc.health.v1.Health", false, 0,
         GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING},
        {"miltergw.v1", true, -1, 0},
        {"miltergw.v1.Event", true, -1, 0}, /* a message, not a service */
        {"miltergw.v1.FilterX", true, -1, 0},
        {"no.such.Service", true, -1, 0},
    };
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int status = -1;
        int rc = health(cases[i].service, cases[i].serving, &status);
        if (rc != cases[i].rc)
            fail_msg("health(%s): got rc %d, want %d", cases[i].service, rc, cases[i].rc);
        if (rc == 0 && status != cases[i].status)
            fail_msg("health(%s): got status %d, want %d", cases[i].service, status,
                     cases[i].status);
    }
}

static Grpc__Reflection__V1alpha__ServerReflectionResponse *
reflect(Grpc__Reflection__V1alpha__ServerReflectionRequest *req)
{
    uint8_t buf[512], *out = NULL;
    size_t n;
    size_t len = grpc__reflection__v1alpha__server_reflection_request__pack(req, buf);
    assert_int_equal(mgw_reflection_answer(buf, len, &out, &n), 0);
    Grpc__Reflection__V1alpha__ServerReflectionResponse *a =
        grpc__reflection__v1alpha__server_reflection_response__unpack(NULL, n, out);
    free(out);
    assert_non_null(a);
    return a;
}

/* list_services names the four services the C servers serve. */
static void test_reflection_lists_every_service(void **state)
{
    Grpc__Reflection__V1alpha__ServerReflectionRequest req =
        GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__INIT;
    static const char *want[] = {"miltergw.v1.Filter", "grpc.health.v1.Health",
                                 "grpc.reflection.v1alpha.ServerReflection",
                                 "grpc.reflection.v1.ServerReflection"};
    (void)state;
    req.message_request_case =
        GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES;
    req.list_services = "";
    req.host = "h";
    Grpc__Reflection__V1alpha__ServerReflectionResponse *a = reflect(&req);
    assert_string_equal(a->valid_host, "h");
    assert_non_null(a->list_services_response);
    assert_int_equal(a->list_services_response->n_service, 4);
    for (size_t i = 0; i < 4; i++)
        assert_string_equal(a->list_services_response->service[i]->name, want[i]);
    grpc__reflection__v1alpha__server_reflection_response__free_unpacked(a, NULL);
}

/* Files by symbol and by name; unknown ones get ErrorResponse NOT_FOUND (5). */
static void test_reflection_finds_files_by_symbol_and_name(void **state)
{
    static const struct {
        bool by_symbol;
        const char *what;
        const char *want_file; /* NULL: NOT_FOUND */
    } cases[] = {
        {true, "miltergw.v1.Filter", "miltergw/v1/filter.proto"},
        {true, "miltergw.v1.Filter.Session", "miltergw/v1/filter.proto"},
        {true, "miltergw.v1.Event", "miltergw/v1/filter.proto"},
        {true, "miltergw.v1.Verdict", "miltergw/v1/filter.proto"},
        {true, "grpc.health.v1.HealthCheckRequest", "grpc/health/v1/health.proto"},
        {true, "grpc.reflection.v1.ServerReflection", "grpc/reflection/v1/reflection.proto"},
        {true, "miltergw.v1.NoSuchThing", NULL},
        {true, "miltergw.v1", NULL},
        {true, "miltergw.v12.Filter", NULL},
        {false, "miltergw/v1/filter.proto", "miltergw/v1/filter.proto"},
        {false, "grpc/health/v1/health.proto", "grpc/health/v1/health.proto"},
        {false, "filter.proto", NULL},
    };
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        Grpc__Reflection__V1alpha__ServerReflectionRequest req =
            GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__INIT;
        if (cases[i].by_symbol) {
            req.message_request_case =
                GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL;
            req.file_containing_symbol = (char *)cases[i].what;
        } else {
            req.message_request_case =
                GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME;
            req.file_by_filename = (char *)cases[i].what;
        }
        Grpc__Reflection__V1alpha__ServerReflectionResponse *a = reflect(&req);
        if (cases[i].want_file == NULL) {
            if (a->error_response == NULL || a->error_response->error_code != 5)
                fail_msg("%s: got no NOT_FOUND error, want one", cases[i].what);
        } else {
            if (a->file_descriptor_response == NULL ||
                a->file_descriptor_response->n_file_descriptor_proto != 1)
                fail_msg("%s: got no single file, want %s", cases[i].what, cases[i].want_file);
            /* FileDescriptorProto field 1 (name) comes first: 0x0a, length, bytes */
            ProtobufCBinaryData fd = a->file_descriptor_response->file_descriptor_proto[0];
            size_t wl = strlen(cases[i].want_file);
            if (fd.len < wl + 2 || fd.data[0] != 0x0a || fd.data[1] != wl ||
                memcmp(fd.data + 2, cases[i].want_file, wl) != 0)
                fail_msg("%s: got another file, want %s", cases[i].what, cases[i].want_file);
        }
        assert_non_null(a->original_request);
        grpc__reflection__v1alpha__server_reflection_response__free_unpacked(a, NULL);
    }
}

/* An undecodable request is refused (the caller then ends the stream). */
static void test_garbage_is_refused(void **state)
{
    static const uint8_t junk[] = {0xff, 0xff, 0xff};
    uint8_t *out = NULL;
    size_t n;
    (void)state;
    assert_int_equal(mgw_reflection_answer(junk, sizeof junk, &out, &n), -1);
    assert_int_equal(mgw_health_answer(junk, sizeof junk, true, &out, &n), -1);
    assert_null(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_health_answers_known_services_and_refuses_others),
        cmocka_unit_test(test_reflection_lists_every_service),
        cmocka_unit_test(test_reflection_finds_files_by_symbol_and_name),
        cmocka_unit_test(test_garbage_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
