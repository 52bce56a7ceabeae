/* SPDX-License-Identifier: Apache-2.0 */
/*
 * UTF-8 validation (see utf8.h). A NUL byte is rejected too: every string
 * pinguard handles ends up in a C string or an id compared with strcmp, where
 * a NUL would silently cut it.
 */
#include "utf8.h"

#include <string.h>

/* Eight bytes at a time while they are ASCII and none is NUL: ids are. */
static size_t ascii_run(const uint8_t *s, size_t n)
{
    const uint64_t high = 0x8080808080808080ULL, ones = 0x0101010101010101ULL;
    size_t i = 0;
    for (; n - i >= 8; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        if ((w & high) != 0 || ((w - ones) & ~w & high) != 0)
            break;
    }
    return i;
}

size_t pg_utf8_check(const uint8_t *s, size_t n)
{
    size_t i = ascii_run(s, n);
    while (i < n) {
        uint8_t b = s[i];
        if (b >= 0x01 && b < 0x80) {
            i++;
            continue;
        }
        size_t need;
        uint8_t lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
        if (b >= 0xc2 && b <= 0xdf) {
            need = 1;
        } else if (b >= 0xe0 && b <= 0xef) {
            need = 2;
            if (b == 0xe0)
                lo = 0xa0; /* overlong */
            else if (b == 0xed)
                hi = 0x9f; /* UTF-16 surrogates */
        } else if (b >= 0xf0 && b <= 0xf4) {
            need = 3;
            if (b == 0xf0)
                lo = 0x90; /* overlong */
            else if (b == 0xf4)
                hi = 0x8f; /* past U+10FFFF */
        } else {
            return i; /* NUL, a stray continuation byte, C0/C1, F5..FF */
        }
        if (n - i <= need || s[i + 1] < lo || s[i + 1] > hi)
            return i;
        for (size_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xc0) != 0x80)
                return i;
        i += need + 1;
    }
    return n;
}
