// SPDX-License-Identifier: Apache-2.0
/*
 * C11 threads on top of pthreads, linked into ThreadSanitizer builds only
 * (PINGUARD_TSAN). Debian's librdkafka creates its threads and takes its
 * locks through C11 <threads.h> (thrd_create, mtx_lock, cnd_wait, ...).
 * glibc implements those by calling its internal pthread functions, which
 * GCC 12's ThreadSanitizer does not intercept: threads librdkafka starts are
 * unknown to it (its allocator crashes in them) and the ordering its mutexes
 * and condition variables give (e.g. a message handed from a broker thread
 * to the polling thread) is invisible, which would show as false races.
 * Defined in the executable, these interpose glibc's (the dynamic linker
 * resolves librdkafka's references to the executable first) and call the
 * pthread functions that TSan intercepts. glibc's C11 types are the pthread
 * ones under another name (same size and layout); the asserts check that.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <threads.h>
#include <time.h>

_Static_assert(sizeof(mtx_t) == sizeof(pthread_mutex_t), "mtx_t is a pthread mutex");
_Static_assert(sizeof(cnd_t) == sizeof(pthread_cond_t), "cnd_t is a pthread condvar");
_Static_assert(sizeof(thrd_t) == sizeof(pthread_t), "thrd_t is a pthread_t");
_Static_assert(sizeof(once_flag) == sizeof(pthread_once_t),
               "once_flag is a pthread_once_t");

static int status(int rc)
{
    switch (rc) {
    case 0:
        return thrd_success;
    case EBUSY:
        return thrd_busy;
    case ETIMEDOUT:
        return thrd_timedout;
    case ENOMEM:
    case EAGAIN:
        return thrd_nomem;
    default:
        return thrd_error;
    }
}

typedef struct {
    thrd_start_t func;
    void *arg;
} start_t;

static void *trampoline(void *p)
{
    start_t s = *(start_t *)p;
    free(p);
    return (void *)(intptr_t)s.func(s.arg);
}

int thrd_create(thrd_t *thr, thrd_start_t func, void *arg)
{
    start_t *s = malloc(sizeof(*s));
    if (!s)
        return thrd_nomem;
    s->func = func;
    s->arg = arg;
    pthread_t t;
    int rc = pthread_create(&t, NULL, trampoline, s);
    if (rc != 0) {
        free(s);
        return status(rc);
    }
    *thr = (thrd_t)t;
    return thrd_success;
}

int thrd_join(thrd_t thr, int *res)
{
    void *v = NULL;
    int rc = pthread_join((pthread_t)thr, &v);
    if (rc == 0 && res)
        *res = (int)(intptr_t)v;
    return status(rc);
}

int thrd_detach(thrd_t thr)
{
    return status(pthread_detach((pthread_t)thr));
}

_Noreturn void thrd_exit(int res)
{
    pthread_exit((void *)(intptr_t)res);
}

int mtx_init(mtx_t *m, int type)
{
    pthread_mutexattr_t a;
    if (pthread_mutexattr_init(&a) != 0)
        return thrd_error;
    int rc = pthread_mutexattr_settype(
        &a, (type & mtx_recursive) ? PTHREAD_MUTEX_RECURSIVE : PTHREAD_MUTEX_NORMAL);
    if (rc == 0)
        rc = pthread_mutex_init((pthread_mutex_t *)m, &a);
    pthread_mutexattr_destroy(&a);
    return status(rc);
}

int mtx_lock(mtx_t *m)
{
    return status(pthread_mutex_lock((pthread_mutex_t *)m));
}

int mtx_trylock(mtx_t *m)
{
    return status(pthread_mutex_trylock((pthread_mutex_t *)m));
}

int mtx_timedlock(mtx_t *restrict m, const struct timespec *restrict ts)
{
    return status(pthread_mutex_timedlock((pthread_mutex_t *)m, ts));
}

int mtx_unlock(mtx_t *m)
{
    return status(pthread_mutex_unlock((pthread_mutex_t *)m));
}

void mtx_destroy(mtx_t *m)
{
    pthread_mutex_destroy((pthread_mutex_t *)m);
}

int cnd_init(cnd_t *c)
{
    return status(pthread_cond_init((pthread_cond_t *)c, NULL));
}

int cnd_signal(cnd_t *c)
{
    return status(pthread_cond_signal((pthread_cond_t *)c));
}

int cnd_broadcast(cnd_t *c)
{
    return status(pthread_cond_broadcast((pthread_cond_t *)c));
}

int cnd_wait(cnd_t *c, mtx_t *m)
{
    return status(pthread_cond_wait((pthread_cond_t *)c, (pthread_mutex_t *)m));
}

// C11 measures the deadline on CLOCK_REALTIME, as pthread_cond_timedwait's default.
int cnd_timedwait(cnd_t *restrict c, mtx_t *restrict m,
                  const struct timespec *restrict ts)
{
    return status(
        pthread_cond_timedwait((pthread_cond_t *)c, (pthread_mutex_t *)m, ts));
}

void cnd_destroy(cnd_t *c)
{
    pthread_cond_destroy((pthread_cond_t *)c);
}

void call_once(once_flag *flag, void (*func)(void))
{
    pthread_once((pthread_once_t *)flag, func);
}
