//! `citychain deploy-configs`: the configs and keys of a whole federation whose nodes run
//! on hosts of their own (containers, pods), written without starting anything.
//!
//! Nodes know each other by their ML-DSA-65 keys, listed in the allow-lists of their
//! configs, so a deployment needs every node's key and config made together. This is
//! the plan `citychain up` makes for loopback ([`Federation::plan`]), with every URL
//! built from a host-name template and one port, every data dir at one fixed path and
//! every key in a file of its own for the deployment to mount as a secret. Keys already
//! in the output directory are kept, so running it again rewrites the configs (a new
//! template, a new MongoDB URI) without changing any node's identity.

use std::path::{Path, PathBuf};

use citychain::config::Config;
use citychain_harness::federation::{Federation, FederationSpec, Hosts, Placement, Topology};

use crate::cli::Failed;

pub(crate) fn deploy_configs(out: PathBuf, topology: Topology, hosts: Hosts) -> anyhow::Result<()> {
    hosts.check().map_err(Failed::Usage)?;
    for (flag, path) in [
        ("--data-dir", &hosts.data_dir),
        ("--key-dir", &hosts.key_dir),
    ] {
        if !path.is_absolute() {
            return Err(Failed::Usage(format!(
                "{flag} {} must be an absolute path: it is a path on the node's host",
                path.display()
            ))
            .into());
        }
    }
    let spec = FederationSpec {
        placement: Placement::Hosts(hosts),
        // Nothing is started, so no binary is needed.
        ..FederationSpec::world(out.clone(), PathBuf::new(), topology).map_err(Failed::Usage)?
    };
    let fed = Federation::plan(spec)?;
    fed.write_manifest()?;
    // Every file as `citychain config check` reads it.
    for n in &fed.nodes {
        Config::load(&n.config_path).map_err(|e| {
            anyhow::anyhow!(
                "{}: generated an invalid config:\n{e}",
                n.config_path.display()
            )
        })?;
    }
    print_summary(&fed, &out);
    Ok(())
}

fn print_summary(fed: &Federation, out: &Path) {
    println!(
        "{} node configs in {}/configs, their keys in {}/keys:",
        fed.nodes.len(),
        out.display(),
        out.display()
    );
    println!("  {:<14} {:<22} URL", "ROLE", "NODE");
    for n in &fed.nodes {
        println!("  {:<14} {:<22} {}", n.role.as_str(), n.id, n.url);
    }
    println!(
        "each continent key holder's key (opens sealed batches; keep it off the nodes): {}/vault/",
        out.display()
    );
    println!("manifest: {}/federation.json", out.display());
}
