/* route.c -- a session on a router engine (hosts.h): its reads follow its
 * owner's routing state.
 *
 * Owns: nothing. */
#include "aorm/hosts.h"
#include "async_session/session_int.h"

void aorm_session_use_primary(aorm_session *s, bool on) {
    if (s) aorm_owner_use_primary(s->owner, on);
}

uint64_t aorm_session_commit_lsn(const aorm_session *s) { return s ? aorm_owner_commit_lsn(s->owner) : 0; }

int aorm_session_set_consistency_key(aorm_session *s, const char *key) {
    return s ? aorm_owner_set_consistency_key(s->owner, key) : AORM_EMISUSE;
}
