#define _GNU_SOURCE
#include "keyhold_peer.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/types.h>

_Static_assert(sizeof(keyhold_ucred) == sizeof(struct ucred), "keyhold_ucred must match struct ucred");
_Static_assert(offsetof(keyhold_ucred, uid) == offsetof(struct ucred, uid), "keyhold_ucred must match struct ucred");
_Static_assert(offsetof(keyhold_ucred, gid) == offsetof(struct ucred, gid), "keyhold_ucred must match struct ucred");

int keyhold_user_in_group(uint32_t uid, uint32_t gid, const char *group_name) {
    // Reentrant lookups: several connections may be checked at once on different threads.
    size_t size = 16384;
    char *buffer = malloc(size);
    if (buffer == NULL) return 0;
    struct group grp, *g = NULL;
    int rc;
    while ((rc = getgrnam_r(group_name, &grp, buffer, size, &g)) == ERANGE) {
        char *more = realloc(buffer, size *= 2);
        if (more == NULL) { free(buffer); return 0; }
        buffer = more;
    }
    if (rc != 0 || g == NULL) { free(buffer); return -1; }
    gid_t wanted = g->gr_gid;
    free(buffer);
    if (wanted == gid) return 1;

    size = 16384;
    buffer = malloc(size);
    if (buffer == NULL) return 0;
    struct passwd pwd, *pw = NULL;
    while ((rc = getpwuid_r(uid, &pwd, buffer, size, &pw)) == ERANGE) {
        char *more = realloc(buffer, size *= 2);
        if (more == NULL) { free(buffer); return 0; }
        buffer = more;
    }
    if (rc != 0 || pw == NULL) { free(buffer); return 0; }
    int n = 64;
    gid_t *groups = malloc(sizeof(gid_t) * (size_t)n);
    if (groups == NULL) { free(buffer); return 0; }
    if (getgrouplist(pw->pw_name, pw->pw_gid, groups, &n) < 0) {
        gid_t *more = realloc(groups, sizeof(gid_t) * (size_t)n);
        if (more == NULL) { free(groups); free(buffer); return 0; }
        groups = more;
        if (getgrouplist(pw->pw_name, pw->pw_gid, groups, &n) < 0) { free(groups); free(buffer); return 0; }
    }
    free(buffer);
    int found = 0;
    for (int i = 0; i < n; i++) if (groups[i] == wanted) { found = 1; break; }
    free(groups);
    return found;
}
