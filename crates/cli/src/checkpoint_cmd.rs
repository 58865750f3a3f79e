//! `citychain checkpoint …`: the inclusion proof of a city batch in a global checkpoint,
//! fetched from the global node and checked (`prove`), or checked from a saved file with
//! no node at all (`verify`). Every check that fails prints why and exits 1.

use std::path::Path;

use anyhow::Context;

use citychain::crypto::address_of;
use citychain::federation::proof::CheckpointProof;
use citychain::messages::{hex32, parse_hex32};

use crate::cli::Failed;
use crate::log_cmd::{fail, get_json, http, public_key, time};

/// Checks `proof` with the pinned keys, or the ones it presents, and says what it shows.
fn check(
    proof: &CheckpointProof,
    pin: Option<&str>,
    continent_pin: Option<&str>,
    origin: &str,
) -> anyhow::Result<()> {
    let key = match pin {
        Some(arg) => public_key(arg)?,
        None => proof.public_key.clone(),
    };
    if pin.is_some() && key != proof.public_key {
        println!(
            "{origin}: NOTE: the proof presents global key {}, checked against the pinned {} instead",
            address_of(&proof.public_key),
            address_of(&key)
        );
    }
    let continent_key = match continent_pin {
        Some(arg) => public_key(arg)?,
        None => proof.continent_public_key.clone(),
    };
    match proof.verify(&key, &continent_key) {
        Ok(p) => {
            let cp = &p.checkpoint;
            println!(
                "ok: city batch {} (city {}, seq {}, {} transactions, tier {}) is entry {} of continent batch {} ({} seq {}, signed by {}), in record {} of the global log, covered by checkpoint {} over {} records (root {}) signed at {} by {}",
                proof.batch_id,
                p.entry.header.city_id,
                p.entry.header.seq,
                p.entry.header.tx_count,
                p.entry.tier,
                proof.entry_index,
                proof.continent_batch_id,
                p.continent,
                p.continent_seq,
                p.continent_signer,
                proof.record_index,
                cp.seq,
                cp.size,
                hex32(&cp.root),
                time(cp.time_ms),
                p.signer,
            );
            Ok(())
        }
        Err(why) => fail(format!("{origin}: {why}")),
    }
}

/// `citychain checkpoint prove`.
pub async fn prove(
    node: &str,
    batch: &str,
    checkpoint: Option<u64>,
    pin: Option<&str>,
    continent_pin: Option<&str>,
    save: Option<&Path>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        parse_hex32(batch).is_some(),
        "--batch must be 64 hex characters"
    );
    let node = node.trim_end_matches('/');
    let client = http()?;
    let mut url = format!("{node}/v1/checkpoints/proof?batch={batch}");
    if let Some(seq) = checkpoint {
        url.push_str(&format!("&checkpoint={seq}"));
    }
    let proof: CheckpointProof = get_json(&client, &url).await?;
    if !proof.batch_id.eq_ignore_ascii_case(batch) {
        return fail(format!(
            "{node}: NOT PROVEN: the node answered with a proof for batch {}",
            proof.batch_id
        ));
    }
    if let Some(path) = save {
        std::fs::write(path, proof.to_json())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    check(&proof, pin, continent_pin, node)
}

/// `citychain checkpoint verify`.
pub fn verify(
    file: &Path,
    batch: Option<&str>,
    pin: Option<&str>,
    continent_pin: Option<&str>,
) -> anyhow::Result<()> {
    let shown = file.display().to_string();
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {shown}"))?;
    let proof: CheckpointProof = match serde_json::from_str(&text) {
        Ok(p) => p,
        Err(e) => {
            println!("{shown}: NOT A PROOF: {e}");
            return Err(Failed::Check(String::new()).into());
        }
    };
    if let Some(b) = batch
        && !proof.batch_id.eq_ignore_ascii_case(b)
    {
        return fail(format!(
            "{shown}: NOT PROVEN: the file proves batch {}, not {b}",
            proof.batch_id
        ));
    }
    check(&proof, pin, continent_pin, &shown)
}
