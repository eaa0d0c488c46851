// libblkid for Swift (KeyholdLUKS is its only user).
#include <blkid/blkid.h>

static const int keyhold_BLKID_SUBLKS_TYPE = BLKID_SUBLKS_TYPE;
static const int keyhold_BLKID_SUBLKS_UUID = BLKID_SUBLKS_UUID;
static const int keyhold_BLKID_SUBLKS_VERSION = BLKID_SUBLKS_VERSION;
static const int keyhold_BLKID_SUBLKS_LABEL = BLKID_SUBLKS_LABEL;
