//! The text-to-speech front end as a user reaches it today: `hark normalize` prints text as it
//! would be read aloud (numbers, dates, money, units, mathematics), with no daemon.

#[test]
fn hark_normalize_reads_numbers_and_maths_aloud() {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_hark"))
        .args(["normalize", "On 2024-03-05 pay $5.50; x^2 + 3x = 10."])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "On March fifth, twenty twenty-four pay five dollars and fifty cents; x squared plus three x equals ten."
    );
}
