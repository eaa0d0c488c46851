#define _GNU_SOURCE
#include "keyhold_peer.h"

#include <grp.h>
#include <pwd.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/types.h>

int keyhold_peer_credentials(int fd, uint32_t *uid, uint32_t *gid, int32_t *pid) {
    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return -1;
    *uid = cred.uid;
    *gid = cred.gid;
    *pid = cred.pid;
    return 0;
}

int keyhold_user_in_group(uint32_t uid, uint32_t gid, const char *group_name) {
    struct group *g = getgrnam(group_name);
    if (g == NULL) return -1;
    if (g->gr_gid == gid) return 1;
    struct passwd *pw = getpwuid(uid);
    if (pw == NULL) return 0;
    int n = 64;
    gid_t *groups = malloc(sizeof(gid_t) * (size_t)n);
    if (groups == NULL) return 0;
    if (getgrouplist(pw->pw_name, pw->pw_gid, groups, &n) < 0) {
        gid_t *more = realloc(groups, sizeof(gid_t) * (size_t)n);
        if (more == NULL) { free(groups); return 0; }
        groups = more;
        if (getgrouplist(pw->pw_name, pw->pw_gid, groups, &n) < 0) { free(groups); return 0; }
    }
    int found = 0;
    for (int i = 0; i < n; i++) if (groups[i] == g->gr_gid) { found = 1; break; }
    free(groups);
    return found;
}
