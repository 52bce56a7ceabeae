/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The at-least-once settle ring of the kafka module, as a pure data
 * structure: one entry per input whose output is in flight, in consumption
 * order, whose delivery state the output's report sets. Settling a prefix
 * is planned here (per partition: the offset to store, never past the first
 * failed input, and where to rewind) and carried out by the module against
 * librdkafka; then each input is told to the settled callback, in order.
 * No I/O and no librdkafka types, so it is unit-tested alone.
 */
#ifndef PG_KAFKA_RING_H
#define PG_KAFKA_RING_H

#include "kafka.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    pg_input_t input;
    int32_t partition;
    int64_t offset;
    pg_delivery_state_t state;
    /* Set by pg_kafka_ring_plan: before its partition's first failure, and
     * the index of its partition in the plan. */
    bool before_failure;
    uint32_t part;
} pg_kafka_ring_entry_t;

/* One partition of a plan. */
typedef struct {
    pg_input_t input;
    int32_t partition;
    int64_t next;   /* offset to store: last acknowledged before a failure + 1, or -1 */
    int64_t rewind; /* first failed offset, or -1 */
    bool stored;    /* set by the caller: the store of `next` was accepted */
} pg_kafka_ring_part_t;

typedef struct {
    pg_kafka_ring_entry_t *entries; /* cap entries, never moved: states are
                                       written through pointers into them */
    size_t cap, head, len;
    pg_kafka_ring_part_t *parts; /* the last plan, n_parts long */
    size_t n_parts, parts_cap;
} pg_kafka_ring_t;

/* Room for cap inputs. PG_OK, or PG_FATAL when out of memory. */
int pg_kafka_ring_init(pg_kafka_ring_t *r, size_t cap);
void pg_kafka_ring_free(pg_kafka_ring_t *r); /* NULL-safe; leaves it empty */

size_t pg_kafka_ring_room(const pg_kafka_ring_t *r);
/* Tracks one input; its state starts PENDING. NULL when the ring is full. */
pg_delivery_state_t *pg_kafka_ring_add(pg_kafka_ring_t *r, pg_input_t input,
                                       int32_t partition, int64_t offset);
/* The number of leading entries whose report is in; *failed (when not NULL)
 * is set to whether one of them failed. */
size_t pg_kafka_ring_answered(const pg_kafka_ring_t *r, bool *failed);

/* Plans the settling of the first n entries into r->parts: per partition (in
 * order of first appearance), the offset after the last acknowledged input
 * that precedes the partition's first failure, and that failure's offset.
 * PG_OK, or PG_FATAL when out of memory (then nothing may be stored). */
int pg_kafka_ring_plan(pg_kafka_ring_t *r, size_t n);

/* Removes the first n entries, telling fn (may be NULL) of each exactly once,
 * in order: committed when stores_known (the plan was carried out), the
 * input came before its partition's first failure, was acknowledged, and its
 * partition's store was accepted. */
void pg_kafka_ring_pop(pg_kafka_ring_t *r, size_t n, bool stores_known,
                       pg_kafka_settled_fn fn, void *ctx);

#endif
