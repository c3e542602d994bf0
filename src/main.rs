//! The `pgoutbox` binary: parses the command line and runs a subcommand.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
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
            eprintln!("pgoutbox: error: {line}");
            ExitCode::FAILURE
        }
    }
}
