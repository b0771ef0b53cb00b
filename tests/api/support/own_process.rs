//! A test that needs its process to itself (it installs the global tracing
//! subscriber, or reads the process-wide metrics recorder) reruns itself
//! alone in a child process of this same test binary, the only test there,
//! as it was when every file was its own binary.

use std::process::Command;

/// Names the test a child process is for.
const ONLY: &str = "VERIMAIL_TEST_OWN_PROCESS";

/// In the test process: runs `test` (its full name, `module::function`)
/// alone in a child process, relays its output, fails if it failed, and
/// returns `true`: the caller returns at once. In that child: returns
/// `false`, and the caller runs its body.
pub fn run_in_own_process(test: &str) -> bool {
    if std::env::var(ONLY).is_ok_and(|only| only == test) {
        return false;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let output = Command::new(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ONLY, test)
        .output()
        .expect("rerun the test binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "{test} failed in its own process ({})",
        output.status
    );
    // A misspelt name would match nothing and pass vacuously.
    assert!(
        stdout.contains(&format!("test {test} ... ok")) && stdout.contains(" 1 passed;"),
        "the child process did not run {test}"
    );
    true
}
