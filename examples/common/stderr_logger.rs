//! The smallest logger that does the job, shared by the examples that
//! include it (`#[path = "common/stderr_logger.rs"] mod stderr_logger;`):
//! `PROGRAM LEVEL message` on stderr, the level from `RUST_LOG` (error,
//! warn, info, debug, trace; default info).

/// Logs to stderr, each line prefixed with the program's name.
pub struct StderrLogger {
    program: &'static str,
}

impl StderrLogger {
    /// Installs the logger for `program` (once; later calls do nothing).
    pub fn install(program: &'static str) {
        let level = std::env::var("RUST_LOG")
            .ok()
            .and_then(|l| l.parse().ok())
            .unwrap_or(log::LevelFilter::Info);
        // Leaked: a logger lives as long as the program.
        let logger: &'static StderrLogger = Box::leak(Box::new(StderrLogger { program }));
        if log::set_logger(logger).is_ok() {
            log::set_max_level(level);
        }
    }
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!("{} {:5} {}", self.program, record.level(), record.args());
        }
    }

    fn flush(&self) {}
}
