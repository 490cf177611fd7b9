#!/bin/sh
# The nvmf boot (tests/vm/run): the Linux kernel's NVMe/TCP initiator, driven
# by nvme-cli, against rspdk_tgt on the host (10.0.2.2:$RSPDK_VM_PORT).
# Each check prints "CHECK ok|FAILED <name>".
T=10.0.2.2
P=$RSPDK_VM_PORT
NQN=nqn.2016-06.io.spdk:vm1
HOSTNQN=nqn.2014-08.org.nvmexpress:uuid:5a0b2c1e-0000-4000-8000-000000000001
NVME="chroot /mnt/root /usr/sbin/nvme"
rc=0
check() { # name command...
  name=$1; shift
  echo "---- $name: $*"
  if "$@" > /tmp/check.out 2>&1; then cat /tmp/check.out; echo "CHECK ok $name"
  else cat /tmp/check.out; echo "CHECK FAILED $name"; rc=1; fi
}
# The block device of our fabrics controller, once it appears.
find_ns() {
  for i in $(seq 100); do
    for c in /sys/class/nvme/nvme*; do
      [ "$(cat $c/transport 2>/dev/null)" = tcp ] || continue
      [ "$(cat $c/subsysnqn 2>/dev/null)" = $NQN ] || continue
      for n in $c/nvme*n1 /sys/block/${c##*/}n1; do
        [ -e "$n" ] && [ -b /dev/${n##*/} ] && { echo /dev/${n##*/}; return 0; }
      done
      for n in /sys/block/nvme*; do
        [ -b /dev/${n##*/} ] && grep -q "$NQN" $n/device/subsysnqn 2>/dev/null && { echo /dev/${n##*/}; return 0; }
      done
    done
    sleep 0.1
  done
  return 1
}
# write DEV SEEK_BYTES BS COUNT FILE: writes FILE, flushes, drops the cache,
# reads back and compares.
roundtrip() {
  dev=$1 off=$2 bs=$3 count=$4 f=$5
  dd if=$f of=$dev bs=$bs seek=$((off / bs)) count=$count conv=fsync 2>/dev/null || return 1
  echo 3 > /proc/sys/vm/drop_caches
  dd if=$dev of=/tmp/back bs=$bs skip=$((off / bs)) count=$count 2>/dev/null || return 1
  cmp $f /tmp/back
}
echo "VM: target at $T:$P"
check "nvme discover lists $NQN" sh -c "$NVME discover -t tcp -a $T -s $P -q $HOSTNQN > /tmp/disc && cat /tmp/disc && grep -q 'subnqn: *$NQN' /tmp/disc && grep -q 'trsvcid: *$P' /tmp/disc"
check "nvme connect (no digests)" $NVME connect -t tcp -a $T -s $P -n $NQN -q $HOSTNQN
DEV=$(find_ns)
check "namespace block device appears ($DEV)" test -b "$DEV"
check "nvme list shows the controller" sh -c "$NVME list > /tmp/list; cat /tmp/list; grep -q 'rspdk NVMe-TCP VM test' /tmp/list"
check "size is 64 MiB" sh -c "[ \$(cat /sys/block/${DEV##*/}/size) = 131072 ]"
dd if=/dev/urandom of=/tmp/p4k bs=4096 count=1 2>/dev/null
dd if=/dev/urandom of=/tmp/p128k bs=131072 count=1 2>/dev/null
dd if=/dev/urandom of=/tmp/p1m bs=1048576 count=1 2>/dev/null
check "4 KiB write (in-capsule) reads back" roundtrip $DEV 0 4096 1 /tmp/p4k
check "128 KiB write (R2T) reads back" roundtrip $DEV 1048576 131072 1 /tmp/p128k
check "1 MiB write reads back" roundtrip $DEV 8388608 1048576 1 /tmp/p1m
check "nvme id-ctrl" sh -c "$NVME id-ctrl $DEV | grep -E '^(sn|mn|subnqn|ioccsz|cntrltype) '"
check "nvme smart-log" $NVME smart-log $DEV
check "nvme disconnect" sh -c "$NVME disconnect -n $NQN | tee /tmp/dis; grep -q 'disconnected 1' /tmp/dis"
check "connect with header and data digests" $NVME connect -t tcp -a $T -s $P -n $NQN -q $HOSTNQN --hdr-digest --data-digest
DEV=$(find_ns)
check "digest queue: earlier data still there" sh -c "dd if=$DEV of=/tmp/back bs=1048576 skip=8 count=1 2>/dev/null && cmp /tmp/p1m /tmp/back"
dd if=/dev/urandom of=/tmp/p1m bs=1048576 count=1 2>/dev/null
check "digest queue: 1 MiB write reads back" roundtrip $DEV 16777216 1048576 1 /tmp/p1m
check "nvme disconnect (digests)" sh -c "$NVME disconnect -n $NQN | tee /tmp/dis; grep -q 'disconnected 1' /tmp/dis"

# The other direction: the kernel's target (nvmet-tcp) here, our host
# (rspdk_nvme_identify and rspdk_nvme_perf over rspdk_nvme's TCP transport)
# on the host through QEMU's port forward.
C=/sys/kernel/config/nvmet
SUB=nqn.2024-01.io.rspdk:nvmet
nvmet_up() {
  modprobe nvmet-tcp || return 1
  mount -t configfs none /sys/kernel/config 2>/dev/null
  truncate -s 64M /tmp/nvmet.img || return 1
  mkdir $C/subsystems/$SUB && echo 1 > $C/subsystems/$SUB/attr_allow_any_host &&
  mkdir $C/subsystems/$SUB/namespaces/1 &&
  echo -n /tmp/nvmet.img > $C/subsystems/$SUB/namespaces/1/device_path &&
  echo 1 > $C/subsystems/$SUB/namespaces/1/buffered_io &&
  echo 1 > $C/subsystems/$SUB/namespaces/1/enable &&
  mkdir $C/ports/1 && echo tcp > $C/ports/1/addr_trtype && echo ipv4 > $C/ports/1/addr_adrfam &&
  echo 0.0.0.0 > $C/ports/1/addr_traddr && echo 4420 > $C/ports/1/addr_trsvcid &&
  ln -s $C/subsystems/$SUB $C/ports/1/subsystems/$SUB
}
check "kernel target nvmet-tcp up on 10.0.2.15:4420" nvmet_up
touch /mnt/host/nvmet_ready
for i in $(seq 300); do [ -f /mnt/host/host_result ] && break; sleep 1; done
sed 's/^/    /' /mnt/host/host_result.log 2>/dev/null
check "rspdk_nvme TCP host against the kernel's nvmet-tcp (discovery, identify, perf verify, digests, randrw)" grep -qx ok /mnt/host/host_result
exit $rc
