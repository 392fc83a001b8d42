/*
 * metrics.h - the process-wide counters, and their Prometheus text rendering.
 *
 * Modules bump a counter where a state changes (OpenSMTPD's stat_increment): a session
 * opens or closes, a message ends, a filter gets an event or fails. This module only
 * counts and renders; it decides nothing, logs nothing, and does no I/O (metrics_http.c
 * serves the text). Pure: no libevent, no gRPC, no clocks - latencies are measured by the
 * caller and handed in as seconds.
 *
 * Threading: none. Only the libevent thread may call these functions (gRPC completions
 * already come back on it).
 *
 * Cost: every bump is an array increment through small enums and a filter index; no
 * allocation, no string lookup. Out-of-range enums or filter indexes are ignored, so a
 * caller that failed to register a filter (index < 0) can bump it harmlessly.
 *
 * THE SERIES (all prefixed miltergw_, rendered in the order below, labels in enum order)
 *   sessions_open                      gauge    MTA connections open now
 *   sessions_total                     counter  MTA connections accepted
 *   sessions_closed_total{reason}      counter  reason: quit eof truncated idle_timeout
 *                                               io_error frame_empty frame_too_big
 *                                               unknown_command malformed out_of_order
 *                                               unsupported_version shutdown other
 *   messages_total{verdict}            counter  how each message ended: accept continue
 *                                               reject tempfail discard quarantine.
 *                                               "continue" at end of message is delivery;
 *                                               a delivered message whose modifications
 *                                               include a quarantine counts as quarantine
 *                                               INSTEAD (every message counts once)
 *   bytes_in_total, bytes_out_total    counter  MTA-side socket bytes
 *   config_reloads_total{result}       counter  ok failed
 *   draining                           gauge    1 while shutting down
 * then, per registered filter (label filter="NAME"):
 *   filter_events_total{filter,event}  counter  event: connect helo mail rcpt data header
 *                                               eoh body eom unknown abort
 *   filter_latency_seconds{filter}     histogram buckets 0.0005 .. 10 s, +Inf, _sum, _count
 *   filter_errors_total{filter,kind}   counter  kind: unavailable stream_broken
 *                                               stream_closed timeout out_of_contract
 *   filter_failure_policy_total{filter,action}  fail_open (on_error accept) or
 *                                               fail_closed (tempfail, reject)
 *   filter_channel_ready{filter}       gauge    1 when the gRPC channel is READY
 *   modifications_dropped_total{filter,reason}  reason: mgw_policy_drop_name()
 *   shadow_verdicts_total{filter,verdict}       verdict: mgw_verdict_name()
 * Every label combination is rendered from the start, zeros included, so rate() and
 * absent-series alerts behave.
 *
 * FILTERS AND RELOAD. mgw_metrics_filter_register() gives a filter an index by name;
 * registering a name seen before returns its old index and marks it active again, so
 * its counters continue (never go backwards). mgw_metrics_filters_retire() marks every
 * filter inactive; a reload calls it, then registers the new set. Only active filters
 * are rendered: a filter removed by a reload disappears from /metrics (Prometheus marks
 * its series stale), but its index stays valid, so sessions still running on the old
 * filter set keep counting into it harmlessly, and if the name comes back its counters
 * resume where they were. Indexes are never reused for another name; the table holds
 * MGW_METRICS_MAX_FILTERS distinct names over the process lifetime.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_METRICS_H
#define MGW_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mgw/backend.h"
#include "mgw/milter_vocab.h"
#include "mgw/policy.h"

#define MGW_METRICS_MAX_FILTERS     128
#define MGW_METRICS_FILTER_NAME_MAX 64 /* including the NUL, like MGW_FILTER_NAME_MAX */

/* ---- Unlabelled series ---- */

enum mgw_metric {
    MGW_METRIC_SESSIONS_OPEN = 0, /* gauge */
    MGW_METRIC_SESSIONS_TOTAL,
    MGW_METRIC_BYTES_IN,
    MGW_METRIC_BYTES_OUT,
    MGW_METRIC_DRAINING, /* gauge */
    MGW_METRIC_COUNT
};

void mgw_metrics_inc(enum mgw_metric m);
void mgw_metrics_add(enum mgw_metric m, uint64_t n);
/* Gauges only (ignored for counters, which never go down). */
void mgw_metrics_dec(enum mgw_metric m);
void mgw_metrics_set(enum mgw_metric m, int64_t v);
/* Current value (gauges read as two's complement); for tests and for main's decisions. */
int64_t mgw_metrics_get(enum mgw_metric m);

/* ---- Sessions ---- */

enum mgw_metrics_close_reason {
    MGW_METRICS_CLOSE_QUIT = 0,
    MGW_METRICS_CLOSE_EOF,
    MGW_METRICS_CLOSE_TRUNCATED,
    MGW_METRICS_CLOSE_IDLE_TIMEOUT,
    MGW_METRICS_CLOSE_IO_ERROR,
    MGW_METRICS_CLOSE_FRAME_EMPTY,
    MGW_METRICS_CLOSE_FRAME_TOO_BIG,
    MGW_METRICS_CLOSE_UNKNOWN_COMMAND,
    MGW_METRICS_CLOSE_MALFORMED,
    MGW_METRICS_CLOSE_OUT_OF_ORDER,
    MGW_METRICS_CLOSE_UNSUPPORTED_VERSION,
    MGW_METRICS_CLOSE_SHUTDOWN,
    MGW_METRICS_CLOSE_OTHER,
    MGW_METRICS_CLOSE_COUNT
};

/* The reason whose label is `name` (session.c's reason strings, which are the labels
 * above and the mgw_strerror() names); MGW_METRICS_CLOSE_OTHER for anything else or NULL.
 * A few strcmp: call it once per session close, not per frame. */
enum mgw_metrics_close_reason mgw_metrics_close_reason_parse(const char *name);

/* sessions_total++ and sessions_open++. */
void mgw_metrics_session_opened(void);
/* sessions_open-- and sessions_closed_total{reason}++. */
void mgw_metrics_session_closed(enum mgw_metrics_close_reason r);

/* ---- Messages ---- */

enum mgw_metrics_msg_verdict {
    MGW_METRICS_MSG_ACCEPT = 0,
    MGW_METRICS_MSG_CONTINUE,
    MGW_METRICS_MSG_REJECT,
    MGW_METRICS_MSG_TEMPFAIL,
    MGW_METRICS_MSG_DISCARD,
    MGW_METRICS_MSG_QUARANTINE,
    MGW_METRICS_MSG_COUNT
};

/* messages_total{verdict}++ for the answer the MTA got at end of message. `quarantined`
 * (the applied modifications include a 'q') turns accept/continue into quarantine; SKIP
 * counts as continue. An unknown kind is ignored. */
void mgw_metrics_message(enum mgw_verdict_kind final, bool quarantined);

/* ---- Reloads ---- */

/* config_reloads_total{result="ok"|"failed"}++. */
void mgw_metrics_config_reload(bool ok);

/* ---- Filters ---- */

/* The events of milter_vocab.h, whose labels they are rendered with. */
enum mgw_metrics_event {
    MGW_METRICS_EV_CONNECT = MGW_MILTER_EV_CONNECT,
    MGW_METRICS_EV_HELO = MGW_MILTER_EV_HELO,
    MGW_METRICS_EV_MAIL = MGW_MILTER_EV_MAIL,
    MGW_METRICS_EV_RCPT = MGW_MILTER_EV_RCPT,
    MGW_METRICS_EV_DATA = MGW_MILTER_EV_DATA,
    MGW_METRICS_EV_HEADER = MGW_MILTER_EV_HEADER,
    MGW_METRICS_EV_EOH = MGW_MILTER_EV_EOH,
    MGW_METRICS_EV_BODY = MGW_MILTER_EV_BODY,
    MGW_METRICS_EV_EOM = MGW_MILTER_EV_EOM,
    MGW_METRICS_EV_UNKNOWN = MGW_MILTER_EV_UNKNOWN,
    MGW_METRICS_EV_ABORT = MGW_MILTER_EV_ABORT,
    MGW_METRICS_EV_COUNT = MGW_MILTER_EV_COUNT
};

/* The event of a milter command letter (C H M R T L N B E U A), or -1
 * (mgw_milter_cmd_event()). */
int mgw_metrics_event_of_cmd(uint8_t cmd);

enum mgw_metrics_filter_error {
    MGW_METRICS_FERR_UNAVAILABLE = 0, /* channel not connected / connect failed */
    MGW_METRICS_FERR_STREAM_BROKEN,   /* the stream failed (reset, transport error) */
    MGW_METRICS_FERR_STREAM_CLOSED,   /* the filter ended the stream */
    MGW_METRICS_FERR_TIMEOUT,         /* no answer before the deadline */
    MGW_METRICS_FERR_OUT_OF_CONTRACT, /* bad message, answer to an event it did not get */
    MGW_METRICS_FERR_QUEUE_FULL,      /* fell max_queue bytes behind the MTA */
    MGW_METRICS_FERR_COUNT
};

enum mgw_metrics_failure_action {
    MGW_METRICS_FAIL_OPEN = 0, /* on_error accept: the filter is ignored */
    MGW_METRICS_FAIL_CLOSED,   /* on_error tempfail/reject */
    MGW_METRICS_FAIL_COUNT
};

/* The action a filter's on_error verdict amounts to: ACCEPT, CONTINUE and SKIP open,
 * anything else closed. */
enum mgw_metrics_failure_action mgw_metrics_failure_action_of(enum mgw_verdict_kind on_error);

/*
 * Register (or re-register after mgw_metrics_filters_retire()) the filter `name`, which
 * is copied, and mark it active. Returns its index (>= 0; the same for the same name
 * for the life of the process, or until mgw_metrics_reset()), MGW_EINVAL for a NULL,
 * empty or too long name, or MGW_ENOSPACE when MGW_METRICS_MAX_FILTERS names are known.
 */
int mgw_metrics_filter_register(const char *name);
/* Mark every filter inactive (not rendered); their indexes stay valid. */
void mgw_metrics_filters_retire(void);

/* filter_events_total{filter,event}++: the gateway sent this event to the filter. */
void mgw_metrics_filter_event(int f, enum mgw_metrics_event ev);
/* filter_latency_seconds{filter}: time from sending an event to its answer. Negative
 * values count as 0; NaN is ignored. */
void mgw_metrics_observe_latency(int f, double seconds);
void mgw_metrics_filter_error(int f, enum mgw_metrics_filter_error kind);
/* The filter's failure policy was applied to an event. */
void mgw_metrics_filter_failure_policy(int f, enum mgw_metrics_failure_action a);
void mgw_metrics_filter_set_ready(int f, bool ready);
/* modifications_dropped_total{filter,reason} += n (MGW_POLICY_KEPT is ignored). */
void mgw_metrics_mods_dropped(int f, enum mgw_policy_drop_reason r, uint64_t n);
/* shadow_verdicts_total{filter,verdict}++: what a shadow filter would have decided. */
void mgw_metrics_shadow_verdict(int f, enum mgw_verdict_kind k);

/* Read back one filter counter, for tests: filter_events_total{f,ev}. */
uint64_t mgw_metrics_filter_events(int f, enum mgw_metrics_event ev);

/* ---- Rendering ---- */

/* The Prometheus text exposition format 0.0.4 of every series. Returns a NUL-terminated
 * string owned by the caller (free() it) and its length in *len (may be NULL). */
char *mgw_metrics_render(size_t *len);

/* Zero every series and forget every filter (tests). */
void mgw_metrics_reset(void);

#endif
