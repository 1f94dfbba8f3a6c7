//! What the `endpoint_parse` fuzz target (`fuzz/fuzz_targets/`) found, as plain tests.

use ductwork_core::Endpoint;

/// An endpoint prints as a string that parses back to the same endpoint (configuration and
/// serde carry endpoints as strings). Found by the fuzzer with `tcp://z= z= ?`.
#[test]
fn display_round_trips_with_trailing_space() {
    for s in [
        "shm://a ?",
        "tcp://h:1 ?",
        "shm://a?capacity=1MiB &",
        "tcp://z= z= ?",
    ] {
        let ep = Endpoint::parse(s).unwrap();
        let again = Endpoint::parse(&ep.to_string()).unwrap();
        assert_eq!(again, ep, "{s:?} printed as {:?}", ep.to_string());
    }
}
