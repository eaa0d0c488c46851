// libsystemd's sd_notify protocol for Swift (KeyholdLogging's SystemdNotifier is its only user).
#include <systemd/sd-daemon.h>
