#!/bin/bash
# In the guest, under systemd: the host plugs the Keyhold stick; udev's rule must start
# keyhold-unlock@<dev>.service, which unlocks it through the agent. Then: a file system and data
# through the mapping, unplug (mapping gone), plug again (unlocked again, data reads back).
# Markers on the console drive the host side (Tests/VM/qemu-driver.py).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
log() { echo "VMTEST $(cut -d' ' -f1 /proc/uptime) $*" > /dev/console; }
fail() { log "FAIL $*"; diagnose; log "DONE rc=1"; systemctl --no-block poweroff; exit 1; }
diagnose() {
  { systemctl status 'keyhold-*' --no-pager -l; journalctl -b --no-pager -u 'keyhold-*' -n 200
    ls -l /dev/mapper /dev/sd* 2>&1; udevadm info --export-db | grep -A30 'ID_FS_TYPE=crypto_LUKS' | head -80; } > @VC@/out/diagnose.txt 2>&1
}
wait_for() { # PATH present(1)|absent(0) SECONDS
  for _ in $(seq $((10 * $3))); do
    if [ "$2" = 1 ]; then [ -e "$1" ] && return 0; else [ -e "$1" ] || return 0; fi
    sleep 0.1
  done
  return 1
}
MAP=/dev/mapper/keyhold-@UUID@
modprobe -a dm-crypt xts aesni_intel ext4 xhci-pci usb-storage sd_mod 2>/dev/null
wait_for /run/keyhold/agent.sock 1 60 || fail "the agent's socket did not appear"
keyhold status > @VC@/out/status.txt 2>&1 || fail "keyhold status: $(cat @VC@/out/status.txt)"
log "READY agent $(grep -m1 server: @VC@/out/status.txt | tr -s ' ')"

wait_for "$MAP" 1 180 || fail "no mapping $MAP after the plug"
UNIT=$(systemctl list-units --plain --no-legend 'keyhold-unlock@*.service' | awk '{print $1}' | head -1)
DEV=${UNIT#keyhold-unlock@}; DEV=${DEV%.service}
log "MAPPED $MAP by $UNIT ($(systemctl is-active "$UNIT"))"
udevadm info --query=property --name="/dev/$DEV" > @VC@/out/udev-props.txt
grep -q "SYSTEMD_WANTS=.*keyhold-unlock@$DEV.service" @VC@/out/udev-props.txt || fail "udev did not set SYSTEMD_WANTS for $DEV"
grep -q '^ID_FS_TYPE=crypto_LUKS' @VC@/out/udev-props.txt || fail "udev did not see LUKS on $DEV"
log "UDEV RULE FIRED: /dev/$DEV $(grep -E '^(ID_BUS|SYSTEMD_WANTS)=' @VC@/out/udev-props.txt | tr '\n' ' ')"

# Busy devices are refused before anything is escrowed or written: the stick is held by the mapping.
out=$(keyhold drive encrypt "/dev/$DEV" --erase 2>&1) && fail "encrypting the held stick was not refused"
echo "$out" | grep -q "is in use by" || fail "unexpected refusal for the held stick: $out"
log "REFUSED as expected: keyhold drive encrypt /dev/$DEV ($(echo "$out" | head -1))"

SECRET="keyhold-vm-secret-$(cat /proc/sys/kernel/random/uuid)"
mkfs.ext4 -q -F "$MAP" || fail "mkfs.ext4 on $MAP"
mkdir -p /mnt/k && mount "$MAP" /mnt/k || fail "mount $MAP"
out=$(keyhold drive encrypt "$MAP" --erase 2>&1) && fail "encrypting a mounted device was not refused"
echo "$out" | grep -q "is mounted on /mnt/k" || fail "unexpected refusal for the mounted device: $out"
log "REFUSED as expected: keyhold drive encrypt $MAP ($(echo "$out" | head -1))"
for i in $(seq 200); do echo "$SECRET line $i"; done > /mnt/k/secret.txt
umount /mnt/k && sync
echo "$SECRET" > @VC@/out/secret.txt
log "WROTE a file system and data through $MAP"

log "UNPLUG-REQUEST"
wait_for "$MAP" 0 60 || fail "the mapping stayed after the unplug"
log "MAPPING GONE ($UNIT: $(systemctl is-active "$UNIT"))"

log "REPLUG-REQUEST"
wait_for "$MAP" 1 180 || fail "no mapping after the second plug"
log "MAPPED AGAIN $MAP"
mount -o ro "$MAP" /mnt/k || fail "mount after the second plug"
got=$(head -1 /mnt/k/secret.txt); lines=$(wc -l < /mnt/k/secret.txt)
umount /mnt/k
[ "$got" = "$SECRET line 1" ] && [ "$lines" = 200 ] || fail "data mismatch after the second plug"
log "DATA OK (written, unplugged, plugged again, read back)"
# Between the plugs the administrator revealed key @KEY@: this managed unlock re-keyed the stick.
UNIT2=$(systemctl list-units --plain --no-legend 'keyhold-unlock@*.service' | awk '{print $1}' | head -1)
DEV2=${UNIT2#keyhold-unlock@}; DEV2=${DEV2%.service}
NOW=$(keyhold drive info "/dev/$DEV2" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["keyhold"]["key_id"])')
[ -n "$NOW" ] && [ "$NOW" != "@KEY@" ] || fail "the revealed key @KEY@ was not replaced at the second unlock (token names '$NOW')"
journalctl -b --no-pager -u "$UNIT2" | grep -q "Re-keyed /dev/$DEV2" || fail "$UNIT2 did not log the rekey"
log "REKEYED at the managed unlock: @KEY@ -> $NOW ($UNIT2)"

# The units as issue 22 left them: the agent speaks sd_notify (Type=notify, a watchdog), the
# unlock unit that did all of the above is the hardened one.
log "UNITS agent $(systemctl show keyhold-agent -p Type -p WatchdogUSec | tr '\n' ' ')unlock $(systemctl show "$UNIT2" -p CapabilityBoundingSet -p DevicePolicy | tr '\n' ' ')"
[ "$(systemctl show keyhold-agent -p Type --value)" = notify ] || fail "keyhold-agent.service is not Type=notify"
# An unplug after an agent restart still closes the mapping: the note saying which mapping
# belongs to the stick lives in /run/keyhold/drives, which the restart keeps.
ls /run/keyhold/drives/* > /dev/null 2>&1 || fail "no mapping note in /run/keyhold/drives"
systemctl restart keyhold-agent || fail "restarting the agent"
[ "$(systemctl is-active keyhold-agent)" = active ] || fail "the agent did not come back (Type=notify: READY=1)"
ls /run/keyhold/drives/* > /dev/null 2>&1 || fail "the agent restart removed the mapping notes"
log "AGENT RESTARTED ($(systemctl is-active keyhold-agent)); notes kept: $(ls /run/keyhold/drives | tr '\n' ' ')"
log "UNPLUG-AFTER-RESTART-REQUEST"
wait_for "$MAP" 0 60 || fail "the mapping stayed after an unplug that followed an agent restart"
log "MAPPING GONE AFTER THE RESTART ($UNIT2: $(systemctl is-active "$UNIT2"))"
journalctl -b --no-pager -u 'keyhold-*' > @VC@/out/journal.txt 2>&1
log "DONE rc=0"
systemctl --no-block poweroff
