//! What `#[offload::kernel]` refuses, and the messages it gives (trybuild; the expected
//! compiler output is in `ui/*.stderr`). Regenerate after a deliberate message change with
//! `TRYBUILD=overwrite cargo test -p offload-macros`.

#[test]
fn refused_kernels_have_clear_messages() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
