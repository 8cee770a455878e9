//! overlayctl: manage the overlay's networks and services in etcd, look at its nodes and
//! endpoints, and at one daemon's status.

use std::{path::PathBuf, process::ExitCode};

use clap::{CommandFactory, Parser, Subcommand};
use overlay_daemon::{cli::EtcdArgs, store::Store};

mod daemon;
mod network;
mod node;
mod print;
mod service;

use daemon::MonitorType;
use network::NetworkCmd;
use node::{EndpointCmd, NodeCmd};
use print::Output;
use service::ServiceCmd;

#[derive(Parser)]
#[command(
    name = "overlayctl",
    version,
    about = "Manage the eBPF VXLAN overlay",
    subcommand_required = true,
    arg_required_else_help = true
)]
struct Cli {
    #[command(flatten)]
    etcd: EtcdArgs,
    /// Output for people (table) or scripts (json, yaml: the same objects).
    #[arg(long, short, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    /// overlayd's API socket (for status, stats, monitor, and service refusals).
    #[arg(long, default_value = "/run/overlay/overlayd.sock")]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Overlay networks (one VNI and subnet each).
    #[command(subcommand, arg_required_else_help = true)]
    Network(NetworkCmd),
    /// Nodes registered in etcd.
    #[command(subcommand, arg_required_else_help = true)]
    Node(NodeCmd),
    /// Endpoints (container interfaces) of the cluster.
    #[command(subcommand, arg_required_else_help = true)]
    Endpoint(EndpointCmd),
    /// Services: a VIP:port balanced over backends by every node's datapath.
    #[command(subcommand, arg_required_else_help = true)]
    Service(ServiceCmd),
    /// One daemon's status (through --socket).
    Status,
    /// One daemon's datapath counters (through --socket).
    Stats,
    /// Stream one daemon's datapath events until interrupted (through --socket): every
    /// dropped packet with its reason, hook, interface and addresses, and (--type trace) a
    /// sample of forwarded packets with the decision taken. Rate-limited per CPU; what was
    /// not sent is reported as lost.
    Monitor {
        /// Which events (repeat for both).
        #[arg(long = "type", value_enum, default_values_t = [MonitorType::Drop])]
        kinds: Vec<MonitorType>,
        /// Traces: show one forwarded packet in N.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        sample: u32,
    },
    /// Print a shell completion script, e.g. `overlayctl completion bash >
    /// /etc/bash_completion.d/overlayctl`.
    Completion {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
    /// Write man pages (overlayctl.1 and one per subcommand) into a directory, e.g.
    /// /usr/local/share/man/man1.
    Man {
        /// The directory to write into (made if missing).
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help, version, and the usage of a bare command or group: clap prints them.
        Err(e)
            if !e.use_stderr()
                || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            e.exit()
        }
        Err(e) => {
            eprintln!("overlayctl: {}", overlay_daemon::cli::one_line_error(&e));
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("overlayctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("overlayctl: {}", overlay_daemon::cli::error_line(&e));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let output = cli.output;
    match cli.command {
        Command::Status => daemon::status(&cli.socket, output),
        Command::Stats => daemon::stats(&cli.socket, output),
        Command::Monitor { kinds, sample } => daemon::monitor(&cli.socket, output, kinds, sample),
        Command::Completion { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "overlayctl",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Man { dir } => man_pages(&dir),
        Command::Network(cmd) => {
            let store = Store::connect(&cli.etcd.config()).await?;
            network::run(&store, output, cmd).await
        }
        Command::Service(cmd) => {
            let store = Store::connect(&cli.etcd.config()).await?;
            service::run(&store, &cli.socket, output, cmd).await
        }
        Command::Node(cmd) => {
            let store = Store::connect(&cli.etcd.config()).await?;
            node::node(&store, output, cmd).await
        }
        Command::Endpoint(cmd) => {
            let store = Store::connect(&cli.etcd.config()).await?;
            node::endpoint(&store, output, cmd).await
        }
    }
}

/// overlayctl.1, overlayctl-network.1, overlayctl-network-create.1, ...
fn man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = Cli::command();
    cmd.build();
    clap_mangen::generate_to(cmd, dir)
        .with_context(|| format!("writing into {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every argument of every subcommand says what it is for.
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() {
                missing.push(path.clone());
            }
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &path, missing);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        walk(&cmd, "", &mut missing);
        missing.retain(|m| !m.ends_with(" help"));
        assert!(missing.is_empty(), "no help: {missing:?}");
    }
}
