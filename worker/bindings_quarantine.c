/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Quarantine, the bindings module's side (SPEC "Quarantine"): each decided
 * MigrationResult is noted for its VM by a script (RESULT_LUA) that notes a
 * chunk of them (redis.lookup.chunk), each atomically and in order,
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

/* Notes a chunk of results, in order, each atomically: KEYS: :failures,
 * :quarantine, :backoff of each note. ARGV: now_ms, failures, window_ms,
 * base_ms, max_ms, then F or S, requestId, finishedAtMs of each note.
 * Reply: what, duration_ms of each note, flat; what: 0 nothing, 1 started,
 * 2 lifted, 3 this requestId started the quarantine before (a replay), 4 it
 * lifted it before, -1 a key of the wrong type. A success on a VM with none
 * of the three keys has nothing to clear and costs one EXISTS: most do. */
const char PG_BINDINGS_RESULT_LUA[] =
    "local now, nfail, window = tonumber(ARGV[1]), tonumber(ARGV[2]), "
    "tonumber(ARGV[3])\n"
    "local base, maxd = tonumber(ARGV[4]), tonumber(ARGV[5])\n"
    "local function note(kf, kq, kb, op, rid, fin)\n"
    "  if op == 'S' and redis.call('EXISTS', kf, kq, kb) == 0 then return 0, 0 end\n"
    "  local tf, tb = redis.call('TYPE', kf).ok, redis.call('TYPE', kb).ok\n"
    "  if (tf ~= 'zset' and tf ~= 'none') or (tb ~= 'hash' and tb ~= 'none') then "
    "return -1, 0 end\n"
    "  if op == 'S' then\n"
    "    local had = redis.call('EXISTS', kq) == 1\n"
    "    local again = not had and redis.call('HGET', kb, 'lifted_by') == rid\n"
    "    redis.call('DEL', kf, kq, kb)\n"
    "    if not had and not again then return 0, 0 end\n"
    "    redis.call('HSET', kb, 'lifted_by', rid)\n"
    "    redis.call('PEXPIRE', kb, window)\n"
    "    return had and 2 or 4, 0\n"
    "  end\n"
    "  local added = redis.call('ZADD', kf, 'NX', fin, rid)\n"
    "  redis.call('ZREMRANGEBYSCORE', kf, '-inf', '(' .. (now - window))\n"
    "  redis.call('PEXPIRE', kf, window)\n"
    "  local q = redis.call('EXISTS', kq) == 1\n"
    "  if added == 0 then\n"
    "    if q and redis.call('HGET', kb, 'started_by') == rid then\n"
    "      return 3, tonumber(redis.call('HGET', kb, 'last') or '0') or 0\n"
    "    end\n"
    "    return 0, 0\n"
    "  end\n"
    "  if q then return 0, 0 end\n"
    "  local since = tonumber(redis.call('HGET', kb, 'since') or '')\n"
    "  since = since and ('(' .. string.format('%d', since)) or '-inf'\n"
    "  if redis.call('ZCOUNT', kf, since, '+inf') < nfail then return 0, 0 end\n"
    "  local last = tonumber(redis.call('HGET', kb, 'last') or '0') or 0\n"
    "  local dur = base\n"
    "  if last > 0 then dur = math.min(last * 2, maxd) end\n"
    "  redis.call('SET', kq, string.format('%d %d', now + dur, dur), 'PX', dur)\n"
    "  local top = redis.call('ZREVRANGE', kf, 0, 0, 'WITHSCORES')[2]\n"
    "  redis.call('HSET', kb, 'last', dur, 'since', top, 'started_by', rid)\n"
    "  redis.call('HDEL', kb, 'lifted_by')\n"
    "  redis.call('PEXPIRE', kb, math.max(dur + maxd, window))\n"
    "  return 1, dur\n"
    "end\n"
    "local out = {}\n"
    "for i = 0, #KEYS / 3 - 1 do\n"
    "  local a = 6 + 3 * i\n"
    "  out[2 * i + 1], out[2 * i + 2] = note(KEYS[3 * i + 1], KEYS[3 * i + 2], "
    "KEYS[3 * i + 3], ARGV[a], ARGV[a + 1], ARGV[a + 2])\n"
    "end\n"
    "return out\n";

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
                             const pg_result_note_t *notes, size_t n, size_t chunk,
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
    }
    if (chunk == 0)
        chunk = 1;
    for (size_t at = 0; at < n; at += chunk) {
        size_t k = n - at < chunk ? n - at : chunk;
        /* EVALSHA sha 3k <keys> now failures window base max <F|S rid fin>... */
        char head[32];
        int hl = snprintf(head, sizeof(head), "*%zu\r\n", 8 + 6 * k);
        int rc = pg_buf_append(out, head, (size_t)hl) || resp_str(out, "EVALSHA") ||
                 resp_bulk(out, sha, 40) || resp_i64(out, (int64_t)(3 * k));
        for (size_t i = at; rc == 0 && i < at + k; i++)
            rc = resp_vm_key(out, notes[i].vm_uuid, "failures") ||
                 resp_vm_key(out, notes[i].vm_uuid, "quarantine") ||
                 resp_vm_key(out, notes[i].vm_uuid, "backoff");
        rc = rc || resp_i64(out, now_ms) || resp_i64(out, q->failures) ||
             resp_i64(out, q->window_ms) || resp_i64(out, q->base_ms) ||
             resp_i64(out, q->max_ms);
        for (size_t i = at; rc == 0 && i < at + k; i++)
            rc = resp_str(out, notes[i].outcome == PG_OUTCOME_SUCCEEDED ? "S" : "F") ||
                 resp_str(out, notes[i].request_id) ||
                 resp_i64(out, notes[i].finished_at_ms);
        if (rc != 0) {
            pg_errf(errbuf, errlen, "out of memory formatting %zu result notes", n);
            return PG_FATAL;
        }
    }
    return PG_OK;
}

int pg_bindings_parse_note(const redisReply *chunk, size_t i, pg_note_outcome_t *out,
                           char *errbuf, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    const redisReply *w =
        chunk != NULL && chunk->type == REDIS_REPLY_ARRAY && 2 * i + 1 < chunk->elements
            ? chunk->element[2 * i]
            : NULL;
    const redisReply *d = w != NULL ? chunk->element[2 * i + 1] : NULL;
    if (w == NULL || w->type != REDIS_REPLY_INTEGER || d->type != REDIS_REPLY_INTEGER ||
        w->integer < -1 || w->integer > 4 || d->integer < 0) {
        pg_errf(errbuf, errlen, "unexpected reply to result note %zu of a chunk", i);
        return PG_RETRY;
    }
    switch (w->integer) {
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
    out->duration_ms = d->integer;
    return PG_OK;
}
