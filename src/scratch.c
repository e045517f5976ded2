/*
 * Per-thread scratch buffers (bsk_scratch in bsk_internal.h), compiled with
 * baseline flags.  Each thread owns an array of BSK_SCRATCH_SLOTS buffers
 * that only grow; a pthread key frees them when the thread exits.
 */
#include <pthread.h>

#include "bsk_internal.h"

typedef struct {
    void *buf[BSK_SCRATCH_SLOTS];
    size_t cap[BSK_SCRATCH_SLOTS];
} bsk_scratch_set;

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static int scratch_key_ok;

static void scratch_free(void *p)
{
    bsk_scratch_set *set = (bsk_scratch_set *)p;
    for (int i = 0; i < BSK_SCRATCH_SLOTS; i++)
        free(set->buf[i]);
    free(set);
}

static void scratch_init(void)
{
    scratch_key_ok = pthread_key_create(&scratch_key, scratch_free) == 0;
}

void *bsk_scratch(int slot, size_t bytes)
{
    if (slot < 0 || slot >= BSK_SCRATCH_SLOTS)
        return NULL;
    pthread_once(&scratch_once, scratch_init);
    if (!scratch_key_ok)
        return NULL;
    bsk_scratch_set *set = (bsk_scratch_set *)pthread_getspecific(scratch_key);
    if (!set) {
        set = (bsk_scratch_set *)calloc(1, sizeof(*set));
        if (!set || pthread_setspecific(scratch_key, set) != 0) {
            free(set);
            return NULL;
        }
    }
    if (bytes > set->cap[slot]) {
        /* grow by half again, so a slowly growing size does not reallocate each call */
        size_t want = bytes + bytes / 2;
        void *p = bsk_alloc(want);
        if (!p)
            return NULL;
        free(set->buf[slot]);
        set->buf[slot] = p;
        set->cap[slot] = want;
    }
    return set->buf[slot];
}
