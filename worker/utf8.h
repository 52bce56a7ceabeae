/* SPDX-License-Identifier: Apache-2.0 */
/*
 * UTF-8 validation shared by the codec (Avro strings), the binding cache
 * (values from Redis) and the CLI. Pure, no allocation.
 */
#ifndef PG_UTF8_H
#define PG_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* Length of the longest valid prefix of s[0..n): n when every byte belongs to
 * a well-formed UTF-8 sequence. NUL, overlong forms, surrogates and code
 * points past U+10FFFF end the prefix. */
size_t pg_utf8_check(const uint8_t *s, size_t n);

#endif
