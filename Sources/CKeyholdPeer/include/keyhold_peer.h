#ifndef KEYHOLD_PEER_H
#define KEYHOLD_PEER_H
#include <stdint.h>
#include <sys/socket.h>

/// The layout of Linux's `struct ucred`, which `getsockopt(SOL_SOCKET, SO_PEERCRED)` fills in
/// for a connected Unix socket: the kernel's account of the process at the other end.
typedef struct {
    int32_t pid;
    uint32_t uid;
    uint32_t gid;
} keyhold_ucred;

/// `SO_PEERCRED`, for Swift.
static const int keyhold_so_peercred = SO_PEERCRED;

/// Whether user `uid` (with primary group `gid`) is a member of group `group_name`, counting
/// supplementary groups from the group database. Returns 1, 0, or -1 if the group does not exist.
/// Thread-safe (reentrant lookups); it may block on the name service, so call it off the event loop.
int keyhold_user_in_group(uint32_t uid, uint32_t gid, const char *group_name);

#endif
