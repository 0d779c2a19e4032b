# shellcheck shell=sh
# kvmops lab guest: /init of the busybox initramfs.
# - prints "tick <n> <date -Iseconds>" every second on the serial console (ttyS0);
# - configures eth1 (the NIC on br-vm) with the address in kvmops.ip= and answers ping;
# - serves a command shell on eth1 port 2323 for the tests (lab only);
# - /bin/recwriter writes numbered, checksummed 512-byte records to /dev/vdb;
# - the ACPI power button (virsh shutdown --mode acpi) powers the guest off cleanly, as a real
#   OS does: busybox acpid runs /etc/acpi/PWRF/00000080 on the button's key event (evdev);
# - with kvmops.agent=1: the guest agent (Debian's qemu-ga) on the virtio-serial port
#   org.qemu.guest_agent.0 (guest-set-time without a time runs /sbin/hwclock -s: busybox's);
# - booted under UEFI: efivarfs at /sys/firmware/efi/efivars (the EFI variables, writable);
# - a kernel panic (echo c > /proc/sysrq-trigger through the shell) reaches the host through the
#   pvpanic device (pvpanic-mmio driver).
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
read -r cmdline < /proc/cmdline
for arg in $cmdline; do  # words of the kernel command line
  case "$arg" in
    kvmops.probe=1) echo KVMOPS-PROBE-OK; sync; poweroff -f ;;
    kvmops.ip=*) IPADDR="${arg#kvmops.ip=}" ;;
    kvmops.agent=1) AGENT=1 ;;
  esac
done
while read -r mod; do insmod "/lib/modules/$mod" 2>/dev/null; done < /etc/modules.order
if [ -d /sys/firmware/efi ]; then
  mount -t efivarfs efivarfs /sys/firmware/efi/efivars || echo "kvmops guest: efivarfs not mounted"
fi
if [ "$AGENT" = 1 ]; then
  # no udev: the port's /dev/virtio-ports/NAME link, from sysfs (the host announces its ports
  # after the driver loads: wait for it a little)
  port=/dev/virtio-ports/org.qemu.guest_agent.0
  mkdir -p /dev/virtio-ports
  i=0
  while [ ! -e "$port" ] && [ "$i" -lt 50 ]; do
    for p in /sys/class/virtio-ports/*; do
      [ -r "$p/name" ] || continue
      read -r pname < "$p/name"
      [ -n "$pname" ] && ln -sf "../${p##*/}" "/dev/virtio-ports/$pname"
    done
    [ -e "$port" ] || sleep 0.1
    i=$((i + 1))
  done
  if [ -e "$port" ]; then
    qemu-ga -m virtio-serial -p "$port" -l /var/log/qemu-ga.log -d || echo "kvmops guest: qemu-ga failed to start"
  else
    echo "kvmops guest: no virtio-serial port org.qemu.guest_agent.0: qemu-ga not started"
  fi
fi
mkdir -p /etc/acpi/PWRF
cat > /etc/acpi/PWRF/00000080 <<'PWR'
#!/bin/sh
echo "kvmops guest: ACPI power button: powering off" > /dev/ttyS0
sync
poweroff -f
PWR
chmod +x /etc/acpi/PWRF/00000080
acpid -c /etc/acpi -l /dev/null
ip link set lo up
ip link set eth0 up 2>/dev/null
ip link set eth1 up
[ -n "$IPADDR" ] && ip addr add "$IPADDR" dev eth1
cat > /bin/recwriter <<'REC'
#!/bin/sh
# recwriter [COUNT] [DELAY]: write records 1..COUNT to /dev/vdb, one 512-byte block each:
# "REC <n> <payload> <sha256(payload)>"; prints "rec <n>" on the console once fsync'd.
count=${1:-100000}; delay=${2:-0.05}; n=1
while [ "$n" -le "$count" ]; do
  payload="seq=$n t=$(date +%s) $(head -c 24 /dev/urandom | md5sum | cut -c1-32)"
  sum=$(printf '%s' "$payload" | sha256sum | cut -c1-64)
  printf '%-511s\n' "REC $n $payload $sum" | dd of=/dev/vdb bs=512 seek="$n" count=1 conv=notrunc,fsync 2>/dev/null
  echo "rec $n" > /dev/ttyS0
  n=$((n + 1)); sleep "$delay"
done
REC
chmod +x /bin/recwriter
( while :; do nc -l -p 2323 -e /bin/sh; done ) </dev/null >/dev/null 2>&1 &
echo "kvmops guest up: eth1 ${IPADDR:-unconfigured}${AGENT:+, guest agent}"
n=0
while :; do
  n=$((n + 1))
  echo "tick $n $(date -Iseconds)"
  sleep 1
done
