#!/bin/bash
# Stage 2: install Keyhold into the guest-only overlay with the project's own `make install-files`
# (programs, units, udev rule), put the device's enrolled agent state in place, add the test's own
# helper units, then exec systemd as PID 1.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
exec >/dev/console 2>&1
: > /etc/tmpfiles.d/tmp.conf 2>/dev/null || { mkdir -p /etc/tmpfiles.d; : > /etc/tmpfiles.d/tmp.conf; }
rm -f /.dockerenv /run/.containerenv   # else systemd thinks it is in a container
rm -f /etc/systemd/system/keyhold-* /etc/udev/rules.d/90-keyhold.rules /usr/local/bin/keyhold*  # the host's, if any
make -C @REPO@ --no-print-directory install-files INSTALL_FROM=@BIN@ DESTDIR= > @VC@/out/install.log 2>&1 \
  || { echo "VMTEST make install-files failed"; cat @VC@/out/install.log; echo o > /proc/sysrq-trigger; }
mkdir -p /var/lib/keyhold && cp -a @VC@/d2-state/. /var/lib/keyhold/ && chmod 700 /var/lib/keyhold
mkdir -p /etc/systemd/system/keyhold-agent.service.d
# The agent reaches its server on the host through QEMU's guestfwd (see keyhold-vm-forward).
cat > /etc/systemd/system/keyhold-agent.service.d/vm.conf <<'U'
[Unit]
After=keyhold-vm-forward.service
Requires=keyhold-vm-forward.service
U
cat > /etc/systemd/system/keyhold-vm-net.service <<'U'
[Unit]
DefaultDependencies=no
After=sysinit.target
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/sbin/ip link set lo up
ExecStart=/sbin/ip link set eth0 up
ExecStart=/sbin/ip addr add 10.0.2.15/24 dev eth0
U
cat > /etc/systemd/system/keyhold-vm-forward.service <<'U'
[Unit]
Description=Relay 127.0.0.1:@PORT@ to the host's server (10.0.2.100:@PORT@, QEMU guestfwd)
After=keyhold-vm-net.service
Requires=keyhold-vm-net.service
[Service]
ExecStart=/usr/bin/python3 @VC@/guest/forward.py @PORT@
U
cat > /etc/systemd/system/keyhold-vm-test.service <<'U'
[Unit]
After=keyhold-agent.service systemd-udevd.service systemd-udev-trigger.service
# Wants, not Requires: the test restarts the agent, which must not restart the test.
Wants=keyhold-agent.service
[Service]
Type=oneshot
ExecStart=@VC@/guest/drive-test.sh
U
cat > /etc/systemd/system/keyhold-vm.target <<'U'
[Unit]
Requires=sysinit.target keyhold-vm-test.service
After=sysinit.target
U
echo "VMTEST $(cut -d' ' -f1 /proc/uptime) stage 2: installed $(ls /usr/local/bin | grep '^keyhold' | tr '\n' ' ')and the units, starting systemd"
exec /lib/systemd/systemd --unit=keyhold-vm.target
