//! libiscsi's iscsi-test-cu conformance suite at 512 B and 4 KiB blocks.

use super::*;

/// Fails the test unless `tool` is on PATH: a test whose tool is missing
/// fails, naming the Debian package that has it (`.ci/run` installs them
/// all); it never skips green.
pub(super) fn require(tool: &str, package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{tool} is not installed: apt-get install {package} (.ci/run installs it)"
    );
}

pub(super) fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("600")
        .arg(cmd)
        .args(args)
        .output()
        .unwrap();
    let s =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd} {args:?} failed:\n{s}");
    s
}

/// Runs the whole conformance suite; returns (passed, failed, skipped).
pub(super) fn test_cu(url: &str) -> (u32, u32, u32, String) {
    let out = Command::new("timeout")
        .args(["900", "iscsi-test-cu", "-d", "--test=ALL", url, url])
        .output()
        .unwrap();
    let s =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let line = s
        .lines()
        .find(|l| l.trim_start().starts_with("tests "))
        .unwrap_or_else(|| panic!("no summary in iscsi-test-cu output:\n{s}"));
    let n: Vec<u32> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    // Tests that printed at least one [SKIPPED] line.
    let mut skipped = 0;
    let mut this_skipped = false;
    for l in s.lines() {
        if l.starts_with("  Test: ") {
            skipped += u32::from(this_skipped);
            this_skipped = false;
        }
        this_skipped |= l.contains("[SKIPPED]");
    }
    skipped += u32::from(this_skipped);
    (n[2], n[3], skipped, s)
}

pub(super) fn failed_tests(log: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut last = "";
    for l in log.lines() {
        if l.trim_start().starts_with("Test:") {
            last = l.trim();
        }
        if l.starts_with("FAILED") || l.contains("...FAILED") {
            out.push(last.to_string());
        }
    }
    out
}

pub(super) fn conformance(block_size: u32) {
    require("iscsi-test-cu", "libiscsi-bin");
    let t = start(block_size);
    let portal = format!("127.0.0.1:{}", t.port);
    let url = format!("iscsi://{portal}/{IQN}/0");

    let ls = run("iscsi-ls", &["-s", &format!("iscsi://{portal}")]);
    assert!(
        ls.contains(&format!("Target:{IQN} Portal:{portal},1")),
        "{ls}"
    );
    assert!(ls.contains("Lun:0    Type:DIRECT_ACCESS"), "{ls}");
    let inq = run("iscsi-inq", &[&url]);
    assert!(inq.contains("Vendor:RSPDK"), "{inq}");
    let rc = run("iscsi-readcapacity16", &[&url]);
    assert!(
        rc.contains(&format!("LOGICAL BLOCK LENGTH IN BYTES:{block_size}")),
        "{rc}"
    );
    assert!(rc.contains("Total size:67108864"), "{rc}");

    let (passed, failed, skipped, log) = test_cu(&url);
    eprintln!("iscsi-test-cu, {block_size} B blocks: {passed} passed ({skipped} of them skipped), {failed} failed");
    assert!(
        passed >= MIN_PASSED && skipped <= MAX_SKIPPED,
        "{block_size} B: {passed} passed, {failed} failed, {skipped} skipped; failures: {:?}",
        failed_tests(&log)
    );
}

#[test]
pub(super) fn libiscsi_conformance_512() {
    conformance(512);
}

#[test]
pub(super) fn libiscsi_conformance_4096() {
    conformance(4096);
}
