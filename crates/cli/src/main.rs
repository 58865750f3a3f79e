//! The `citychain` binary: one binary for every node role of the City Chain federation,
//! and the tools around it (API.md). The command line is in [`cli`]; the key holder's
//! `vault` commands in [`vault`]; `deploy-configs` in [`deploy_cmd`].

mod checkpoint_cmd;
mod cli;
mod deploy_cmd;
mod fed_status;
mod log_cmd;
mod status_cmd;
mod status_page;
mod up_cmd;
mod vault;

fn main() -> std::process::ExitCode {
    citychain::node::limit_malloc_arenas();
    cli::main()
}
