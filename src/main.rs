//! The `pgoutbox` binary: parses the command line and runs a subcommand.

mod cli;

use std::process::ExitCode;

/// Every event allocates a few short-lived buffers (the record, the message, the client's
/// frames) on one thread and frees them on another: mimalloc's thread-local free lists do
/// that for about a fifth less CPU than glibc's arenas (`scripts/bench.sh`, CPU s per million
/// events). Tuned by [`return_freed_memory_at_once`].
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's options, by their index in its `mi_option_e` (mimalloc 3, the version
/// `libmimalloc-sys` builds by default); the sys crate names neither.
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// By default mimalloc keeps freed pages for a second and commits its arenas eagerly: a burst
/// (a large transaction's records in flight) then stays resident, which took the at-most-once
/// 160 MiB transaction's peak RSS from 71 to 100 MiB (tests/it/big.rs). Returning freed memory
/// at once and committing on demand keeps it at glibc's level for about the same CPU. The
/// `MIMALLOC_PURGE_DELAY` and `MIMALLOC_ARENA_EAGER_COMMIT` environment variables, when set,
/// win.
fn return_freed_memory_at_once() {
    for (option, env, value) in [
        (MI_OPTION_PURGE_DELAY, "MIMALLOC_PURGE_DELAY", 0),
        (
            MI_OPTION_ARENA_EAGER_COMMIT,
            "MIMALLOC_ARENA_EAGER_COMMIT",
            0,
        ),
    ] {
        if std::env::var_os(env).is_none() {
            // SAFETY: sets a plain integer option; mimalloc reads options at each decision.
            unsafe { libmimalloc_sys::mi_option_set(option, value) };
        }
    }
}

fn main() -> ExitCode {
    return_freed_memory_at_once();
    let args = match cli::parse(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(code) => return code,
    };
    // One thread runs the pipeline: it is one sequential loop with a publishing task beside
    // it, so a second worker only adds cross-thread wake-ups (an eventfd write and a futex per
    // message, measured). The clients' own I/O threads (librdkafka, lapin) and the blocking
    // pool run beside it.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgoutbox: error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::main(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: what went wrong and (from the library's messages) what to do, with
            // each cause once even if a message already quotes it.
            let mut line = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !line.contains(&c) {
                    line.push_str(": ");
                    line.push_str(&c);
                }
            }
            eprintln!("pgoutbox: error: {}", cli::clean(&line));
            ExitCode::FAILURE
        }
    }
}
