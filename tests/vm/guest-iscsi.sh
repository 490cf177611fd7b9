#!/bin/sh
# The iscsi boot (tests/vm/run): the Linux kernel's iSCSI initiator
# (iscsi_tcp), driven by open-iscsi's iscsid and iscsiadm from the host's
# root filesystem (chrooted), against rspdk_tgt on the host
# (10.0.2.2:$RSPDK_VM_PORT, target $RSPDK_VM_IQN, a 64 MiB malloc LUN).
# Each check prints "CHECK ok|FAILED <name>".
T=10.0.2.2
P=$RSPDK_VM_PORT
IQN=${RSPDK_VM_IQN:-iqn.2016-06.io.spdk:vm1}
R=/mnt/root
ADM="chroot $R /usr/sbin/iscsiadm"
rc=0
check() { # name command...
  name=$1; shift
  echo "---- $name: $*"
  if "$@" > /tmp/check.out 2>&1; then cat /tmp/check.out; echo "CHECK ok $name"
  else cat /tmp/check.out; echo "CHECK FAILED $name"; rc=1; fi
}
# The SCSI disk of our target (vendor RSPDK), once it appears.
find_disk() {
  for i in $(seq 200); do
    for d in /sys/block/sd*; do
      [ -e "$d/device/vendor" ] || continue
      grep -q RSPDK "$d/device/vendor" && [ -b /dev/${d##*/} ] && { echo /dev/${d##*/}; return 0; }
    done
    sleep 0.1
  done
  return 1
}
login() { $ADM -m node -T $IQN -p $T:$P --login; }
logout() {
  $ADM -m node -T $IQN -p $T:$P --logout || return 1
  # The kernel removes the disk with the session.
  for i in $(seq 100); do find_disk_now || return 0; sleep 0.1; done
  echo "the disk is still there after logout"; return 1
}
find_disk_now() {
  for d in /sys/block/sd*; do
    [ -e "$d/device/vendor" ] && grep -q RSPDK "$d/device/vendor" && return 0
  done
  return 1
}
# Mounts DEV at /mnt/disk and compares every file with its recorded checksum.
verify_files() {
  mount -t ext4 "$1" /mnt/disk || return 1
  (cd /mnt/disk && md5sum -c /tmp/sums); r=$?
  umount /mnt/disk; return $r
}

echo "VM: target $IQN at $T:$P"
# open-iscsi's state lives in /etc/iscsi (Debian; /var/lib/iscsi elsewhere):
# tmpfs over the read-only host root.
mount -t tmpfs tmpfs $R/etc/iscsi
[ -d $R/var/lib/iscsi ] && mount -t tmpfs tmpfs $R/var/lib/iscsi
mkdir -p $R/run/lock/iscsi /mnt/disk
echo "InitiatorName=iqn.2026-01.io.rspdk:vmguest" > $R/etc/iscsi/initiatorname.iscsi
cat > $R/etc/iscsi/iscsid.conf <<EOF
node.startup = manual
node.session.timeo.replacement_timeout = 20
node.conn[0].timeo.login_timeout = 30
node.conn[0].timeo.noop_out_interval = 10
node.conn[0].timeo.noop_out_timeout = 30
node.session.err_timeo.abort_timeout = 30
node.session.err_timeo.lu_reset_timeout = 30
EOF
chroot $R /usr/sbin/iscsid -f -c /etc/iscsi/iscsid.conf -i /etc/iscsi/initiatorname.iscsi > /tmp/iscsid.log 2>&1 &
# iscsid listens on an abstract socket (@ISCSIADM_ABSTRACT_NAMESPACE).
for i in $(seq 100); do grep -q ISCSIADM /proc/net/unix && break; sleep 0.1; done

check "SendTargets discovery lists $IQN" sh -c "$ADM -m discovery -t sendtargets -p $T:$P | tee /tmp/disc; grep -q ' $IQN\$' /tmp/disc"
# Discovery answers with the target's own portal (127.0.0.1): add ours.
check "add the node at $T:$P" $ADM -m node -o new -T $IQN -p $T:$P
check "login" login
DEV=$(find_disk)
check "SCSI disk appears ($DEV)" test -b "$DEV"
S=/sys/block/${DEV##*/}
check "size is 64 MiB of 512 B blocks" sh -c "cat $S/size $S/queue/logical_block_size; [ \$(cat $S/size) = 131072 ] && [ \$(cat $S/queue/logical_block_size) = 512 ]"
check "vendor RSPDK, model Malloc disk" sh -c "cat $S/device/vendor $S/device/model; grep -q '^RSPDK' $S/device/vendor && grep -q '^Malloc disk' $S/device/model"
check "iscsiadm -m session shows the session" sh -c "$ADM -m session | tee /tmp/sess; grep -q '$IQN' /tmp/sess"
check "mkfs.ext4" chroot $R /sbin/mkfs.ext4 -q -F -E lazy_itable_init=1,lazy_journal_init=1 "$DEV"
dd if=/dev/urandom of=/tmp/f2m bs=1048576 count=2 2>/dev/null
dd if=/dev/urandom of=/tmp/f300k bs=1024 count=300 2>/dev/null
write_files() {
  mount -t ext4 "$DEV" /mnt/disk || return 1
  cp /tmp/f2m /mnt/disk/a.bin && cp /tmp/f300k /mnt/disk/b.bin &&
  mkdir -p /mnt/disk/dir && for i in $(seq 20); do echo "file $i" > /mnt/disk/dir/f$i; done &&
  (cd /mnt/disk && md5sum a.bin b.bin dir/* > /tmp/sums) && sync
  r=$?; umount /mnt/disk || r=1; return $r
}
check "mount, write 2.3 MiB in 22 files, sync, umount" write_files
check "logout" logout
check "login again" login
DEV=$(find_disk)
check "disk back ($DEV)" test -b "$DEV"
check "e2fsck -f -n is clean" chroot $R /sbin/e2fsck -f -n "$DEV"
check "files read back with the same md5sums" verify_files "$DEV"
check "logout (2)" logout

# Header and data digests (CRC32C) on the same node.
check "set HeaderDigest/DataDigest CRC32C" sh -c "$ADM -m node -T $IQN -p $T:$P -o update -n 'node.conn[0].iscsi.HeaderDigest' -v CRC32C && $ADM -m node -T $IQN -p $T:$P -o update -n 'node.conn[0].iscsi.DataDigest' -v CRC32C"
check "login with digests" login
check "session negotiated CRC32C digests" sh -c "$ADM -m session -P 2 | tee /tmp/sess | grep -iE 'digest'; grep -q 'HeaderDigest: CRC32C' /tmp/sess && grep -q 'DataDigest: CRC32C' /tmp/sess"
DEV=$(find_disk)
check "digests: files read back" verify_files "$DEV"
dd if=/dev/urandom of=/tmp/p1m bs=1048576 count=1 2>/dev/null
raw_roundtrip() {
  dd if=/tmp/p1m of="$DEV" bs=1048576 seek=60 count=1 conv=fsync 2>/dev/null || return 1
  echo 3 > /proc/sys/vm/drop_caches
  dd if="$DEV" of=/tmp/back bs=1048576 skip=60 count=1 2>/dev/null || return 1
  cmp /tmp/p1m /tmp/back
}
check "digests: 1 MiB raw write at 60 MiB reads back" raw_roundtrip
# Eight writers at once (O_DIRECT, 64 KiB requests: several commands in
# flight), then eight readers at once, compared.
parallel_io() {
  # Files in the chroot's /tmp ($R/tmp here), for the host's coreutils dd.
  for i in 1 2 3 4 5 6 7 8; do
    dd if=/dev/urandom of=$R/tmp/par$i bs=65536 count=8 2>/dev/null || return 1
  done
  # (wait on these pids only: iscsid runs in the background too)
  pids=
  for i in 1 2 3 4 5 6 7 8; do
    chroot $R /bin/dd if=/tmp/par$i of="$DEV" bs=65536 seek=$((640 + i * 8)) oflag=direct 2>/dev/null &
    pids="$pids $!"
  done
  for p in $pids; do wait $p || return 1; done
  pids=
  for i in 1 2 3 4 5 6 7 8; do
    chroot $R /bin/dd if="$DEV" of=/tmp/back$i bs=65536 skip=$((640 + i * 8)) count=8 iflag=direct 2>/dev/null &
    pids="$pids $!"
  done
  for p in $pids; do wait $p || return 1; done
  for i in 1 2 3 4 5 6 7 8; do cmp $R/tmp/par$i $R/tmp/back$i || return 1; done
}
check "digests: 8 parallel O_DIRECT writers then readers (64 KiB requests) compare" parallel_io
check "logout (digests)" logout
check "no session left" sh -c "! $ADM -m session 2>&1 | grep -q '$IQN'"
echo "---- iscsid log"; tail -5 /tmp/iscsid.log
exit $rc
