//! The `agent-vault` binary: install the crypto provider, parse the command line, run.
#![allow(clippy::print_stderr)] // the binary reports fatal errors to a person on stderr
#![forbid(unsafe_code)]

use clap::Parser;

// jemalloc: the proxy allocates and frees small buffers on every request from two worker
// threads; glibc malloc spent about a tenth of the proxy's CPU there and fragments more
// under thousands of idle connections (see the README's benchmark).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    // Every TLS configuration in the process uses aws-lc-rs; install it before anything else.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = agent_vault::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match runtime.block_on(cli.run()) {
        Ok(()) => 0,
        // None needs a message: the child spoke for itself, a reader that closed our standard
        // output (`| head`) asked for nothing more, and a logged error was already written.
        Err(
            e @ (agent_vault::cli::CliError::ChildExit(_)
            | agent_vault::cli::CliError::StdoutClosed
            | agent_vault::cli::CliError::Logged),
        ) => e.exit_code(),
        Err(e) => {
            agent_vault::cli::output::write_err(format_args!("error: {e}\n"));
            e.exit_code()
        }
    };
    // The runtime may hold tasks that only end with the process (signal listeners).
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    std::process::exit(code);
}
