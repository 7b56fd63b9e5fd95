//! Building an example program for a test that runs it: `cargo build
//! --example NAME` into the test's own target directory and profile (a
//! no-op when `cargo test` has already built it), so the program tested is
//! always the current source.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The longest building an example may take.
const BUILD_DEADLINE: Duration = Duration::from_secs(600);

/// Builds example `name` and returns the path of its binary.
///
/// `current_exe` is `<target>/[<triple>/]<profile dir>/deps/<test>`; the
/// example goes to `<profile dir>/examples/<name>`.
pub fn build(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test binary");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in <profile>/deps");
    let profile_name = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("profile directory name");
    // `debug` is where the dev and test profiles build.
    let profile = if profile_name == "debug" {
        "dev"
    } else {
        profile_name
    };
    let mut target_dir = profile_dir.parent().expect("target directory");
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--quiet", "--example", name, "--profile"])
        .arg(profile);
    // Cross builds add a `<triple>` level; cargo tags the target root.
    if !target_dir.join("CACHEDIR.TAG").exists() {
        if let (Some(root), Some(triple)) = (target_dir.parent(), target_dir.file_name()) {
            cargo.arg("--target").arg(triple);
            target_dir = root;
        }
    }
    cargo
        .arg("--target-dir")
        .arg(target_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut build = cargo.spawn().expect("spawn cargo build");
    // A thread drains stderr so a full pipe cannot stall the build.
    let mut stderr = build.stderr.take().expect("stderr is piped");
    let errors = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = stderr.read_to_string(&mut all);
        all
    });
    let until = Instant::now() + BUILD_DEADLINE;
    let status = loop {
        if let Some(status) = build.try_wait().expect("try_wait on cargo build") {
            break status;
        }
        if Instant::now() >= until {
            let _ = build.kill();
            let _ = build.wait();
            panic!("cargo build --example {name} took more than {BUILD_DEADLINE:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let errors = errors.join().unwrap_or_default();
    assert!(
        status.success(),
        "cargo build --example {name}: {status}\n{errors}"
    );
    let binary = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(binary.is_file(), "{} was not built", binary.display());
    binary
}
