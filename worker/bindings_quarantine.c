/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Quarantine, the bindings module's side (SPEC "Quarantine"): each decided
 * MigrationResult is noted for its VM by one atomic script (RESULT_LUA),
 * pipelined behind the batch's lookups so that the results batch still costs
 * one round trip.
 *
 * Keys, all under the VM's hash tag:
 *   :failures    sorted set of the FAILED requestIds, scored by finishedAtMs,
 *                trimmed to quarantine.window.ms and expiring with it;
 *   :quarantine  "<until_ms> <duration_ms>", expiring when the quarantine ends;
 *   :backoff     hash: last (the last quarantine's duration, doubled by the
 *                next), since (the newest failure the last quarantine counted:
 *                only later ones count towards the next), started_by and
 *                lifted_by (the requestId that started or lifted it).
 * A requestId noted twice counts once (ZADD NX), and a replayed note says
 * what the first one did (started_by, lifted_by: STARTED_AGAIN, LIFTED_AGAIN),
 * so that the decision it rides with, redone, produces the same audit event
 * again without counting the change twice. :backoff lives at least as long
 * as the window, so the failures a quarantine counted never count again.
 * A key of the wrong type is reported and left alone, and a :backoff field
 * that is no number reads as absent: a data error of one VM, never a script
 * error that would hold the batch for ever.
 */
#include "bindings_internal.h"

#include "util.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* KEYS: :failures, :quarantine, :backoff. ARGV: F or S, requestId,
 * finishedAtMs, now_ms, failures, window_ms, base_ms, max_ms.
 * Reply: {what, duration_ms}; what: 0 nothing, 1 started, 2 lifted, 3 this
 * requestId started the quarantine before (a replay), 4 it lifted it before,
 * -1 a key of the wrong type. */
const char PG_BINDINGS_RESULT_LUA[] =
    "local kf, kq, kb = KEYS[1], KEYS[2], KEYS[3]\n"
    "if (redis.call('TYPE', kf).ok ~= 'zset' and redis.call('TYPE', kf).ok ~= 'none') "
    "or (redis.call('TYPE', kb).ok ~= 'hash' and redis.call('TYPE', kb).ok ~= 'none') "
    "then return {-1, 0} end\n"
    "local rid, now = ARGV[2], tonumber(ARGV[4])\n"
    "local window = tonumber(ARGV[6])\n"
    "if ARGV[1] == 'S' then\n"
    "  local had = redis.call('EXISTS', kq) == 1\n"
    "  local again = not had and redis.call('HGET', kb, 'lifted_by') == rid\n"
    "  redis.call('DEL', kf, kq, kb)\n"
    "  if not had and not again then return {0, 0} end\n"
    "  redis.call('HSET', kb, 'lifted_by', rid)\n"
    "  redis.call('PEXPIRE', kb, window)\n"
    "  return {had and 2 or 4, 0}\n"
    "end\n"
    "local added = redis.call('ZADD', kf, 'NX', ARGV[3], rid)\n"
    "redis.call('ZREMRANGEBYSCORE', kf, '-inf', '(' .. (now - window))\n"
    "redis.call('PEXPIRE', kf, window)\n"
    "local q = redis.call('EXISTS', kq) == 1\n"
    "if added == 0 then\n"
    "  if q and redis.call('HGET', kb, 'started_by') == rid then\n"
    "    return {3, tonumber(redis.call('HGET', kb, 'last') or '0') or 0}\n"
    "  end\n"
    "  return {0, 0}\n"
    "end\n"
    "if q then return {0, 0} end\n"
    "local since = tonumber(redis.call('HGET', kb, 'since') or '')\n"
    "since = since and ('(' .. string.format('%d', since)) or '-inf'\n"
    "if redis.call('ZCOUNT', kf, since, '+inf') < tonumber(ARGV[5]) then return {0, 0} "
    "end\n"
    "local last = tonumber(redis.call('HGET', kb, 'last') or '0') or 0\n"
    "local dur = tonumber(ARGV[7])\n"
    "if last > 0 then dur = math.min(last * 2, tonumber(ARGV[8])) end\n"
    "redis.call('SET', kq, string.format('%d %d', now + dur, dur), 'PX', dur)\n"
    "local top = redis.call('ZREVRANGE', kf, 0, 0, 'WITHSCORES')[2]\n"
    "redis.call('HSET', kb, 'last', dur, 'since', top, 'started_by', rid)\n"
    "redis.call('HDEL', kb, 'lifted_by')\n"
    "redis.call('PEXPIRE', kb, math.max(dur + tonumber(ARGV[8]), window))\n"
    "return {1, dur}\n";

static int resp_head(pg_buf_t *b, size_t n)
{
    char tmp[32];
    int len = snprintf(tmp, sizeof(tmp), "$%zu\r\n", n);
    return pg_buf_append(b, tmp, (size_t)len);
}

static int resp_bulk(pg_buf_t *b, const char *s, size_t n)
{
    return resp_head(b, n) || pg_buf_append(b, s, n) || pg_buf_append(b, "\r\n", 2);
}

static int resp_str(pg_buf_t *b, const char *s)
{
    return resp_bulk(b, s, strlen(s));
}

static int resp_i64(pg_buf_t *b, int64_t v)
{
    char tmp[24];
    int len = snprintf(tmp, sizeof(tmp), "%" PRId64, v);
    return resp_bulk(b, tmp, (size_t)len);
}

static int resp_vm_key(pg_buf_t *b, const char *vm, const char *suffix)
{
    char key[PG_BINDINGS_MAX_VM_LEN + 48];
    int n = snprintf(key, sizeof(key), "pinguard:vm:{%s}:%s", vm, suffix);
    return n > 0 && (size_t)n < sizeof(key) ? resp_bulk(b, key, (size_t)n) : -1;
}

int pg_bindings_format_notes(pg_buf_t *out, const char *sha,
                             const pg_result_note_t *notes, size_t n,
                             const pg_quarantine_opts_t *q, int64_t now_ms,
                             char *errbuf, size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        const pg_result_note_t *r = &notes[i];
        size_t vl = r->vm_uuid != NULL ? strlen(r->vm_uuid) : 0;
        if (vl == 0 || vl > PG_BINDINGS_MAX_VM_LEN || r->request_id == NULL) {
            pg_errf(errbuf, errlen, "result note %zu names no VM or request", i);
            return PG_INPUT;
        }
        /* EVALSHA sha 3 <keys> F|S rid finished now failures window base max */
        int rc = pg_buf_append(out, "*14\r\n", 5) || resp_str(out, "EVALSHA") ||
                 resp_bulk(out, sha, 40) || resp_str(out, "3") ||
                 resp_vm_key(out, r->vm_uuid, "failures") ||
                 resp_vm_key(out, r->vm_uuid, "quarantine") ||
                 resp_vm_key(out, r->vm_uuid, "backoff") ||
                 resp_str(out, r->outcome == PG_OUTCOME_SUCCEEDED ? "S" : "F") ||
                 resp_str(out, r->request_id) || resp_i64(out, r->finished_at_ms) ||
                 resp_i64(out, now_ms) || resp_i64(out, q->failures) ||
                 resp_i64(out, q->window_ms) || resp_i64(out, q->base_ms) ||
                 resp_i64(out, q->max_ms);
        if (rc != 0) {
            pg_errf(errbuf, errlen, "out of memory formatting %zu result notes", n);
            return PG_FATAL;
        }
    }
    return PG_OK;
}

int pg_bindings_parse_note(const redisReply *r, pg_note_outcome_t *out, char *errbuf,
                           size_t errlen)
{
    memset(out, 0, sizeof(*out));
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_INTEGER ||
        r->element[1]->type != REDIS_REPLY_INTEGER || r->element[0]->integer < -1 ||
        r->element[0]->integer > 4 || r->element[1]->integer < 0) {
        pg_errf(errbuf, errlen, "unexpected reply to a result note");
        return PG_RETRY;
    }
    switch (r->element[0]->integer) {
    case 1:
        out->what = PG_NOTE_STARTED;
        break;
    case 2:
        out->what = PG_NOTE_LIFTED;
        break;
    case 3:
        out->what = PG_NOTE_STARTED_AGAIN;
        break;
    case 4:
        out->what = PG_NOTE_LIFTED_AGAIN;
        break;
    case -1:
        out->what = PG_NOTE_BAD_KEYS;
        break;
    default:
        out->what = PG_NOTE_NONE;
    }
    out->duration_ms = r->element[1]->integer;
    return PG_OK;
}
