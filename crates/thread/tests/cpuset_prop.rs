//! Property tests for core-mask parsing.

use proptest::prelude::*;
use rspdk_thread::CpuSet;

proptest! {
    #[test]
    fn hex_and_list_forms_round_trip(cpus in proptest::collection::btree_set(0u32..1024, 1..20)) {
        let set = CpuSet::from_cpus(cpus.iter().copied());
        // Hex with and without 0x.
        prop_assert_eq!(CpuSet::parse(&set.to_string()).unwrap(), set.clone());
        prop_assert_eq!(CpuSet::parse(&set.to_hex()).unwrap(), set.clone());
        // Core list.
        let list = format!(
            "[{}]",
            cpus.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",")
        );
        prop_assert_eq!(CpuSet::parse(&list).unwrap(), set);
    }

    #[test]
    fn garbage_never_panics(s in "\\PC{0,12}") {
        let _ = CpuSet::parse(&s);
    }
}
