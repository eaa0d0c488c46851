#ifndef KEYHOLD_PEER_H
#define KEYHOLD_PEER_H
#include <stdint.h>

/// Reads the credentials of the process at the other end of a connected Unix socket
/// (SO_PEERCRED). Returns 0, or -1 with errno set.
int keyhold_peer_credentials(int fd, uint32_t *uid, uint32_t *gid, int32_t *pid);

/// Whether user `uid` (with primary group `gid`) is a member of group `group_name`, counting
/// supplementary groups from the group database. Returns 1, 0, or -1 if the group does not exist.
int keyhold_user_in_group(uint32_t uid, uint32_t gid, const char *group_name);

#endif
