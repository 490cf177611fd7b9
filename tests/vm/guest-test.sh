#!/bin/sh
# Runs in the guest (from tests/vm/init) with RSPDK_VM_MODE and RSPDK_VM_BOOT
# set. Each check prints "CHECK ok|FAILED <name>"; the tests print libtest's
# "test ... ok|FAILED" lines. tests/vm/run counts both.
cd /mnt/host
[ "$RSPDK_VM_MODE" = nvmf ] && exec sh /mnt/host/guest-nvmf.sh
[ "$RSPDK_VM_MODE" = iscsi ] && exec sh /mnt/host/guest-iscsi.sh
B=/mnt/host/bin
rc=0
check() { # name command...
  name=$1; shift
  echo "---- $name: $*"
  if "$@" > /tmp/check.out 2>&1; then cat /tmp/check.out; echo "CHECK ok $name"
  else cat /tmp/check.out; echo "CHECK FAILED $name"; rc=1; fi
}
DRV=vfio-pci; [ "$RSPDK_VM_MODE" = uio ] && DRV=uio_pci_generic
check "rspdk_setup config binds NVMe to $DRV" $B/rspdk_setup config --skip-huge --driver $DRV
# The first NVMe controller is the one under test; a second one (vfio boots)
# sits in a non-viable IOMMU group.
BDF= BDF2=
for d in /sys/bus/pci/devices/*; do
  [ "$(cat $d/class)" = 0x010802 ] || continue
  if [ -z "$BDF" ]; then BDF=${d##*/}; elif [ -z "$BDF2" ]; then BDF2=${d##*/}; fi
done
export RSPDK_VM_BDF=$BDF RSPDK_VM_BDF2=$BDF2
[ -n "$BDF2" ] && echo "VM: second controller $BDF2 in IOMMU group $(basename "$(readlink /sys/bus/pci/devices/$BDF2/iommu_group)") with: $(ls /sys/bus/pci/devices/$BDF2/iommu_group/devices | tr '\n' ' ')"
echo "VM: NVMe controller at $BDF, driver $(basename "$(readlink /sys/bus/pci/devices/$BDF/driver)")"
[ "$(basename "$(readlink /sys/bus/pci/devices/$BDF/driver)")" = $DRV ] || { echo "CHECK FAILED bound to $DRV"; rc=1; }
$B/vm --test-threads=1 --show-output || rc=1
# Hot removal last (the device leaves the kernel), then bring it back.
$B/vm_remove --show-output || rc=1
echo 1 > /sys/bus/pci/rescan
check "after removal and rescan, rspdk_setup config binds it again" $B/rspdk_setup config --skip-huge --driver $DRV
check "rspdk_nvme_identify" $B/rspdk_nvme_identify -r "trtype:PCIe traddr:$BDF"
if [ "$RSPDK_VM_MODE" = vfio ]; then
  check "rspdk_nvme_identify --iova-mode pa (the IOMMU maps physical addresses)" \
    $B/rspdk_nvme_identify -r "trtype:PCIe traddr:$BDF" --iova-mode pa
fi
if [ "$RSPDK_VM_BOOT" = vfio39 ]; then
  echo "---- rspdk_nvme_identify with the heap at 0x300000000000, beyond a 39-bit IOMMU"
  out=$(RUST_LOG=warn $B/rspdk_nvme_identify -r "trtype:PCIe traddr:$BDF" --base-virtaddr 0x300000000000 2>&1); r=$?
  echo "$out" | tail -3
  if [ $r != 0 ] && echo "$out" | grep -q "beyond the IOMMU's aperture"; then
    echo "CHECK ok a heap beyond the IOMMU aperture is refused with the fix"
  else
    echo "CHECK FAILED a heap beyond the IOMMU aperture is refused with the fix"; rc=1
  fi
  echo "---- the default heap is placed low by itself:"
  RUST_LOG=info $B/rspdk_nvme_identify -r "trtype:PCIe traddr:$BDF" 2>&1 >/dev/null | grep -i "placing the DMA heap low"
fi
check "rspdk_nvme_perf" $B/rspdk_nvme_perf -r "trtype:PCIe traddr:$BDF" -q 8 -o 4096 -w randrw -M 50 -t 2
# The NVMe bdev module: bdevperf on Nvme0n1 (512 B blocks) and Nvme0n2
# (4 KiB) from a JSON config calling bdev_nvme_attach_controller.
cat > /tmp/nvme-bdev.json <<EOF
{"subsystems": [{"subsystem": "bdev", "config": [
  {"method": "bdev_nvme_attach_controller",
   "params": {"name": "Nvme0", "trtype": "PCIe", "traddr": "$BDF"}}]}]}
EOF
bdevperf_check() { # workload
  rm -f /tmp/bdevperf.json
  $B/bdevperf -c /tmp/nvme-bdev.json -r /tmp/bdevperf.sock -q 16 -o 4096 -w "$1" -t 3 -j /tmp/bdevperf.json || return 1
  [ -s /tmp/bdevperf.json ] || { echo "no -j output"; return 1; }
  # Every job: IOPS > 0 and no failed I/O; both namespaces tested.
  grep -q '"Nvme0n1"' /tmp/bdevperf.json && grep -q '"Nvme0n2"' /tmp/bdevperf.json || { echo "a namespace bdev is missing"; return 1; }
  grep -o '"iops": *[-0-9.e+]*' /tmp/bdevperf.json | awk -F: '{ n++; if ($2 + 0 <= 0) bad++ } END { print n " jobs with IOPS"; exit (n < 2 || bad > 0) }' || { echo "IOPS not > 0"; return 1; }
  if grep -o '"io_failed": *[0-9]*' /tmp/bdevperf.json | grep -qv ': *0$'; then echo "failed I/O"; return 1; fi
}
check "bdevperf -w verify on bdev_nvme (Nvme0n1, Nvme0n2)" bdevperf_check verify
check "bdevperf -w randread on bdev_nvme (Nvme0n1, Nvme0n2)" bdevperf_check randread
# The bdev_nvme RPCs through rspdk_rpc against bdevperf -z (an idle app).
nvme_rpcs() {
  rm -f /tmp/bp.sock
  $B/bdevperf -z -r /tmp/bp.sock > /tmp/bdevperf-z.log 2>&1 &
  pid=$!
  for i in $(seq 100); do [ -S /tmp/bp.sock ] && break; sleep 0.1; done
  R="$B/rspdk_rpc -s /tmp/bp.sock"
  echo "\$ rspdk_rpc bdev_nvme_attach_controller -b Nvme0 -t pcie -a $BDF" && $R bdev_nvme_attach_controller -b Nvme0 -t pcie -a $BDF &&
  echo "\$ rspdk_rpc bdev_nvme_get_controllers" && $R bdev_nvme_get_controllers &&
  echo "\$ rspdk_rpc bdev_get_bdevs -b Nvme0n2" && $R bdev_get_bdevs -b Nvme0n2 > /tmp/bdevs.json && cat /tmp/bdevs.json &&
  grep -q '"product_name": "NVMe disk"' /tmp/bdevs.json && grep -q '"serial_number": "RSPDKVM0001"' /tmp/bdevs.json &&
  grep -q '"block_size": 4096' /tmp/bdevs.json && grep -q '"num_blocks": 8192' /tmp/bdevs.json &&
  echo "\$ rspdk_rpc bdev_nvme_reset_controller Nvme0" && $R bdev_nvme_reset_controller Nvme0 &&
  echo "\$ rspdk_rpc bdev_nvme_get_controller_health_info -c Nvme0" &&
  $R bdev_nvme_get_controller_health_info -c Nvme0 > /tmp/health.json && cat /tmp/health.json &&
  grep -q '"serial_number": "RSPDKVM0001"' /tmp/health.json && grep -q '"temperature_celsius": ' /tmp/health.json &&
  grep -q '"power_on_hours": ' /tmp/health.json &&
  echo "\$ rspdk_rpc bdev_nvme_send_cmd (Identify Controller into a DMA buffer)" &&
  $R bdev_nvme_send_cmd -n Nvme0 -t admin -r c2h -c BgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA== -D 4096 > /tmp/ident.json &&
  # Bytes 6..24 of the data (serial "RSPDKVM0001" from byte 4, space
  # padded) start at base64 character 8: "PDKVM0001" and 9 spaces.
  grep -q '"data": "........UERLVk0wMDAxICAgICAgICAg' /tmp/ident.json && grep -q '"cpl": ' /tmp/ident.json &&
  echo "\$ rspdk_rpc save_config -s bdev" && $R save_config -s bdev > /tmp/saved.json && cat /tmp/saved.json &&
  [ "$(grep -c '"bdev_nvme_attach_controller"' /tmp/saved.json)" = 1 ] &&
  echo "\$ rspdk_rpc bdev_nvme_detach_controller Nvme0" && $R bdev_nvme_detach_controller Nvme0 &&
  echo "\$ rspdk_rpc bdev_get_bdevs" && $R bdev_get_bdevs > /tmp/bdevs.json && cat /tmp/bdevs.json &&
  [ "$(tr -d ' \n' < /tmp/bdevs.json)" = "[]" ] &&
  echo "\$ rspdk_rpc load_config -j (the saved config)" && $R load_config -j /tmp/saved.json &&
  $R bdev_get_bdevs -b Nvme0n1 > /dev/null && echo "Nvme0n1 is back"
  r=$?
  kill $pid; wait $pid
  return $r
}
check "bdev_nvme RPCs: attach, get_controllers, reset, health info, send_cmd, save_config, detach, load_config" nvme_rpcs
# One DMA buffer contract: an iSCSI LUN and an NVMe-oF namespace on the
# PCIe NVMe bdev, in rspdk_tgt in this guest. QEMU's iSCSI client (the
# host's qemu-io, chrooted) writes patterns through the LUN and reads them
# back; rspdk_nvme_perf -w verify does the same over NVMe/TCP. (The iSCSI
# target's buffers are heap memory; the bdev layer bounces them through DMA
# memory for the controller.)
targets_on_pcie_nvme() {
  R=/mnt/root
  [ -x $R/usr/bin/qemu-io ] || { echo "no host root with qemu-io (vfio48 shares it)"; return 1; }
  cat > /tmp/tgt.json <<JSON
{"subsystems": [
 {"subsystem": "bdev", "config": [
  {"method": "bdev_nvme_attach_controller", "params": {"name": "Nvme0", "trtype": "PCIe", "traddr": "$BDF"}}]},
 {"subsystem": "nvmf", "config": [
  {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
  {"method": "nvmf_create_subsystem", "params": {"nqn": "nqn.2016-06.io.spdk:pcie", "allow_any_host": true}},
  {"method": "nvmf_subsystem_add_ns", "params": {"nqn": "nqn.2016-06.io.spdk:pcie", "namespace": {"bdev_name": "Nvme0n2"}}},
  {"method": "nvmf_subsystem_add_listener", "params": {"nqn": "nqn.2016-06.io.spdk:pcie",
     "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "4420"}}}]},
 {"subsystem": "iscsi", "config": [
  {"method": "iscsi_create_portal_group", "params": {"tag": 1, "portals": [{"host": "127.0.0.1", "port": "3260"}]}},
  {"method": "iscsi_create_initiator_group", "params": {"tag": 2, "initiators": ["ANY"], "netmasks": ["ANY"]}},
  {"method": "iscsi_create_target_node", "params": {"name": "pcie", "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}],
     "luns": [{"bdev_name": "Nvme0n1", "lun_id": 0}], "queue_depth": 32}}]}]}
JSON
  rm -f /tmp/tgt.sock
  $B/rspdk_tgt -r /tmp/tgt.sock -c /tmp/tgt.json > /tmp/tgt.log 2>&1 &
  pid=$!
  for i in $(seq 200); do [ -S /tmp/tgt.sock ] && break; sleep 0.1; done
  $B/rspdk_rpc -s /tmp/tgt.sock -r 50 framework_wait_init > /dev/null || { tail /tmp/tgt.log; kill $pid; return 1; }
  U=iscsi://127.0.0.1:3260/iqn.2016-06.io.spdk:pcie/0
  r=0
  echo "\$ qemu-io -f raw -c 'write -P 0xa5 1M 1M' -c 'read -P 0xa5 1M 1M' -c 'aio_write -P 0x3c 8M 256k' ... $U"
  out=$(chroot $R qemu-io -f raw -c 'write -P 0xa5 1M 1M' -c 'read -P 0xa5 1M 1M' \
        -c 'aio_write -P 0x3c 8M 256k' -c 'aio_write -P 0x3d 9M 256k' -c aio_flush \
        -c 'read -P 0x3c 8M 256k' -c 'read -P 0x3d 9M 256k' $U 2>&1)
  echo "$out"
  echo "$out" | grep -qi "fail\|error" && r=1
  [ "$(echo "$out" | grep -c '^read ')" = 3 ] || r=1
  echo "\$ rspdk_nvme_perf over NVMe/TCP to Nvme0n2 (-w verify)"
  $B/rspdk_nvme_perf -r "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:nqn.2016-06.io.spdk:pcie" \
    -q 8 -o 4096 -w verify -t 2 || r=1
  $B/rspdk_rpc -s /tmp/tgt.sock spdk_kill_instance SIGTERM > /dev/null
  wait $pid
  [ $r = 0 ] || tail -20 /tmp/tgt.log
  return $r
}
if [ "$RSPDK_VM_BOOT" = vfio48 ]; then
  check "an iSCSI LUN and an NVMe-oF namespace on the PCIe NVMe bdev: data written and read back through each" targets_on_pcie_nvme
fi
modprobe nvme
check "rspdk_setup reset gives the controller back to nvme" $B/rspdk_setup reset
[ "$(basename "$(readlink /sys/bus/pci/devices/$BDF/driver)")" = nvme ] || { echo "CHECK FAILED $BDF back on nvme"; rc=1; }

# rspdk_setup must never take a controller whose namespace is mounted.
modprobe ext4
NS2=
for i in $(seq 50); do
  NS2=$(ls -d /sys/bus/pci/devices/$BDF/nvme/nvme*/nvme*n2 2>/dev/null | head -1)
  [ -n "$NS2" ] && [ -b /dev/${NS2##*/} ] && break
  sleep 0.1
done
NS2=${NS2##*/}
mkdir -p /mnt/fs
if [ -n "$NS2" ] && mke2fs -q -b 4096 /dev/$NS2 && mount -t ext2 /dev/$NS2 /mnt/fs; then
  echo "---- rspdk_setup config with /dev/$NS2 mounted at /mnt/fs"
  out=$(PCI_ALLOWED=$BDF $B/rspdk_setup config --skip-huge --driver $DRV 2>&1); r=$?
  echo "$out"
  if [ $r != 0 ] && echo "$out" | grep -q "/dev/$NS2 is mounted at /mnt/fs" &&
     [ "$(basename "$(readlink /sys/bus/pci/devices/$BDF/driver)")" = nvme ]; then
    echo "CHECK ok rspdk_setup config leaves a controller with a mounted filesystem alone"
  else
    echo "CHECK FAILED rspdk_setup config leaves a controller with a mounted filesystem alone"; rc=1
  fi
  umount /mnt/fs
else
  echo "CHECK FAILED could not make and mount a filesystem on $BDF namespace 2 ($NS2)"; rc=1
fi
exit $rc
