//! `citychain status --dir DIR`: the state of a running `up` federation, read from the
//! nodes `DIR/federation.json` names (the same collection as `up`'s status line and page).

use std::path::Path;

use anyhow::Context;
use citychain_harness::federation::ManifestEntry;

use crate::cli::Failed;
use crate::fed_status;

pub(crate) async fn status(dir: &Path, json: bool) -> anyhow::Result<()> {
    let path = dir.join("federation.json");
    let text = std::fs::read(&path).with_context(|| {
        format!(
            "reading {} (is `citychain up --dir {}` running?)",
            path.display(),
            dir.display()
        )
    })?;
    let manifest: Vec<ManifestEntry> = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a federation manifest", path.display()))?;
    let status = fed_status::collect(&fed_status::client(), &manifest).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status.report());
    }
    if status.not_answering.is_empty() {
        Ok(())
    } else {
        Err(Failed::Check(format!(
            "{} of {} nodes not answering: {}",
            status.not_answering.len(),
            status.nodes.len(),
            status.not_answering.join(", ")
        ))
        .into())
    }
}
