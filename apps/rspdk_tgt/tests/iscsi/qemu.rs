//! QEMU's iSCSI driver: qemu-img and qemu-io data round trips.

use super::*;

/// Runs `cmd args`, returning (success, stdout + stderr).
pub(super) fn run_status(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("timeout")
        .arg("300")
        .arg(cmd)
        .args(args)
        .output()
        .unwrap();
    let s =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), s)
}

/// QEMU's iSCSI block driver (libiscsi inside qemu-img/qemu-io) moves data
/// through the target: `qemu-img convert` of a random raw image onto the
/// LUN and back, `qemu-img compare`, and `qemu-io` pattern writes and reads
/// (sequential and several in flight).
#[test]
pub(super) fn qemu_img_and_qemu_io() {
    require("qemu-img", "qemu-utils");
    require("qemu-io", "qemu-utils");
    let t = start(512);
    let url = format!("iscsi://127.0.0.1:{}/{IQN}/0", t.port);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let back = dir.path().join("back.raw");
    // 64 MiB (the LUN's size) of xorshift noise.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut img = vec![0u8; 64 << 20];
    for c in img.chunks_exact_mut(8) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        c.copy_from_slice(&seed.to_le_bytes());
    }
    std::fs::write(&src, &img).unwrap();
    let (src_s, back_s) = (src.to_str().unwrap(), back.to_str().unwrap());

    let (ok_, out) = run_status(
        "qemu-img",
        &["convert", "-n", "-f", "raw", "-O", "raw", src_s, &url],
    );
    assert!(
        ok_ || !out.contains("Unknown protocol"),
        "qemu-img has no iscsi driver: apt-get install qemu-block-extra\n{out}"
    );
    assert!(ok_, "qemu-img convert onto the LUN failed:\n{out}");
    let (ok_, out) = run_status(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", src_s, &url],
    );
    assert!(ok_ && out.contains("Images are identical"), "{out}");
    let (ok_, out) = run_status(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "raw", &url, back_s],
    );
    assert!(ok_, "qemu-img convert from the LUN failed:\n{out}");
    let got = std::fs::read(&back).unwrap();
    assert!(got == img, "the image read back differs");
    let (ok_, out) = run_status("qemu-img", &["info", &url]);
    assert!(ok_ && out.contains("virtual size: 64 MiB"), "{out}");

    // qemu-io: sequential pattern writes and reads, a wrong pattern caught,
    // then eight 64 KiB writes in flight at once, read back.
    let io = |cmds: &[&str]| {
        let mut args = vec!["-f", "raw"];
        for c in cmds {
            args.push("-c");
            args.push(c);
        }
        args.push(&url);
        run_status("qemu-io", &args)
    };
    let (ok_, out) = io(&[
        "write -P 0xa5 1M 1M",
        "write -P 0x3c 3584 1536",
        "read -P 0xa5 1M 1M",
        "read -P 0x3c 3584 1536",
    ]);
    assert!(
        ok_ && out.matches("wrote ").count() == 2
            && out.matches("read ").count() == 2
            && !out.contains("fail"),
        "{out}"
    );
    let (_, out) = io(&["read -P 0x5a 1M 4k"]);
    assert!(
        out.contains("Pattern verification failed"),
        "a wrong pattern was not caught:\n{out}"
    );
    let writes: Vec<String> = (0..8)
        .map(|i| format!("aio_write -P 0x{:02x} {} 64k", 0x10 + i, (8 + i) << 20))
        .collect();
    let reads: Vec<String> = (0..8)
        .map(|i| format!("read -P 0x{:02x} {} 64k", 0x10 + i, (8 + i) << 20))
        .collect();
    let mut cmds: Vec<&str> = writes.iter().map(|s| s.as_str()).collect();
    cmds.push("aio_flush");
    cmds.extend(reads.iter().map(|s| s.as_str()));
    let (ok_, out) = io(&cmds);
    assert!(
        ok_ && out.matches("wrote ").count() == 8
            && out.matches("read ").count() == 8
            && !out.contains("fail"),
        "{out}"
    );
}
