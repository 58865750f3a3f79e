//! `citychain log …`: the immutable log checked on disk (`verify`) and over HTTP against a
//! running city (`prove`, `consistency`). Every check that fails prints why and exits 1.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::de::DeserializeOwned;

use citychain::crypto::{KeyFile, address_of};
use citychain::http::log_api::{ConsistencyReply, HeadReply, InclusionReply};
use citychain::messages::{BatchHeader, hex32, parse_hex32};
use citychain::storage::immutable_log::heads::{HeadsFile, SignedHead, Standing, standing};
use citychain::storage::immutable_log::merkle::{verify_consistency, verify_inclusion};
use citychain::storage::immutable_log::{ImmutableLog, LOG_FILE, LogError, Record, RecordKind};

use crate::cli::Failed;

/// Logs larger than this get progress lines on stderr while they are verified.
const PROGRESS_FROM_BYTES: u64 = 64 * 1024 * 1024;
/// Time between two progress lines.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Prints `line` and fails with exit code 1.
pub(crate) fn fail(line: String) -> anyhow::Result<()> {
    println!("{line}");
    Err(Failed::Check(String::new()).into())
}

/// A public key given as base64, or as a key file (`citychain keygen`, a node's node.key).
pub(crate) fn public_key(arg: &str) -> anyhow::Result<Vec<u8>> {
    let path = Path::new(arg);
    if path.is_file() {
        return key_file_public_key(path);
    }
    B64.decode(arg.trim())
        .context("--public-key is neither a key file nor base64")
}

fn key_file_public_key(path: &Path) -> anyhow::Result<Vec<u8>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: KeyFile = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a key file", path.display()))?;
    B64.decode(file.public_key)
        .with_context(|| format!("{}: public_key is not base64", path.display()))
}

pub(crate) fn time(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// `citychain log verify`.
pub fn verify(dir: &Path, heads: Option<PathBuf>, pin: Option<&str>) -> anyhow::Result<()> {
    // DIR is the log's directory or the node's data dir (whose log is in log/).
    let (log_dir, data_dir) =
        if !dir.join(LOG_FILE).exists() && dir.join("log").join(LOG_FILE).exists() {
            (dir.join("log"), dir.to_path_buf())
        } else {
            let parent = dir
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            (dir.to_path_buf(), parent)
        };
    let shown = log_dir.display();
    let heads_path = heads.unwrap_or_else(|| HeadsFile::path_in(&data_dir));
    let pinned = match pin {
        Some(arg) => Some(public_key(arg)?),
        None => {
            let node_key = heads_path.with_file_name("node.key");
            node_key
                .is_file()
                .then(|| key_file_public_key(&node_key))
                .transpose()?
        }
    };
    // The heads first: a log only grows, so a live one holds at least what they cover.
    let heads = match HeadsFile::load(&heads_path) {
        Ok(heads) => heads,
        Err(e) => return fail(format!("{shown}: SIGNED HEADS UNUSABLE: {e}")),
    };
    if let Some(file) = &heads
        && let Err(e) = file.verify(&heads_path, pinned.as_deref())
    {
        return fail(format!("{shown}: SIGNED HEADS UNUSABLE: {e}"));
    }

    let started = Instant::now();
    let mut last_line = Instant::now();
    let progress = |done: u64, total: u64| {
        if total >= PROGRESS_FROM_BYTES && last_line.elapsed() >= PROGRESS_EVERY {
            last_line = Instant::now();
            let mib = |b: u64| b / (1024 * 1024);
            eprintln!(
                "verified {} of {} MiB ({:.0} MiB/s)",
                mib(done),
                mib(total),
                done as f64 / (1024.0 * 1024.0) / started.elapsed().as_secs_f64()
            );
        }
    };
    let (report, tree) = match ImmutableLog::verify_tree(&log_dir, progress) {
        Ok(found) => found,
        Err(LogError::Corrupt(bad)) => {
            return fail(format!(
                "{shown}: TAMPERED OR DAMAGED: first bad record {}: {bad}",
                bad.seq
            ));
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {shown}"))),
    };
    let Some(file) = heads else {
        return fail(format!(
            "{shown}: NOT VERIFIED: {} records chain soundly, but there is no signed head ({} is missing)",
            report.records,
            heads_path.display()
        ));
    };
    let mut failed = false;
    match standing(&file.heads, report.records, |size| tree.root(size)) {
        Standing::Matches { head } => println!(
            "{shown}: ok, {} records, {} bytes, root {}, as signed at {} by {}",
            report.records,
            report.bytes,
            hex32(&head.root),
            time(head.time_ms),
            file.signer
        ),
        Standing::Unsigned { records } => {
            failed = true;
            println!(
                "{shown}: NOT VERIFIED: {records} records chain soundly, but {} holds no signed head",
                heads_path.display()
            );
        }
        Standing::Ahead { head, records } => {
            failed = true;
            println!(
                "{shown}: NOT VERIFIED: first unsigned record {}: records {}..{} follow the latest signed head ({} records, signed at {}) and no head covers them yet (the city stopped before signing them; it signs them when it starts)",
                head.size,
                head.size,
                records - 1,
                head.size,
                time(head.time_ms)
            );
        }
        Standing::Broken(brk) => {
            failed = true;
            println!("{shown}: TAMPERED OR DAMAGED: {brk}");
        }
    }
    for loss in &file.losses {
        failed = true;
        println!(
            "{shown}: LOST: at {} the city found its log holding {} records where it had signed a head over {} (signed at {}); first bad record {}{}",
            time(loss.detected_ms),
            loss.log_records,
            loss.head.size,
            time(loss.head.time_ms),
            loss.first_bad,
            if loss.exact { "" } else { " or later" },
        );
    }
    if failed {
        return Err(Failed::Check(String::new()).into());
    }
    Ok(())
}

pub(crate) fn http() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// GETs `url` and decodes a 200 answer; anything else is a failed check with the node's
/// own error.
pub(crate) async fn get_json<T: DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
) -> anyhow::Result<T> {
    let resp = client
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let text = resp.text().await.with_context(|| format!("GET {url}"))?;
    if !status.is_success() {
        println!("{url}: the node answered {status}: {text}");
        return Err(Failed::Check(String::new()).into());
    }
    serde_json::from_str(&text).with_context(|| format!("{url}: unexpected answer"))
}

/// The node's latest head, its signature checked under the pinned key or the node's own.
async fn signed_head(
    client: &reqwest::Client,
    node: &str,
    pin: Option<&str>,
) -> anyhow::Result<(SignedHead, String)> {
    let reply: HeadReply = get_json(client, &format!("{node}/v1/log/head")).await?;
    let key = match pin {
        Some(arg) => {
            let key = public_key(arg)?;
            if key != reply.public_key {
                println!(
                    "{node}: WRONG SIGNER: the node presents key {}, not the pinned {}",
                    reply.signer,
                    address_of(&key)
                );
                return Err(Failed::Check(String::new()).into());
            }
            key
        }
        None => reply.public_key.clone(),
    };
    if reply.head.verify(&key).is_err() {
        println!(
            "{node}: BAD SIGNATURE on the head of size {} (signer {})",
            reply.head.size, reply.signer
        );
        return Err(Failed::Check(String::new()).into());
    }
    Ok((reply.head, address_of(&key)))
}

/// `citychain log prove`.
pub async fn prove(
    node: &str,
    index: Option<u64>,
    batch: Option<&str>,
    pin: Option<&str>,
) -> anyhow::Result<()> {
    let node = node.trim_end_matches('/');
    let client = http()?;
    let (head, signer) = signed_head(&client, node, pin).await?;
    let which = match (index, batch) {
        (Some(i), _) => format!("index={i}"),
        (None, Some(b)) => {
            anyhow::ensure!(
                parse_hex32(b).is_some(),
                "--batch must be 64 hex characters"
            );
            format!("batch={b}")
        }
        (None, None) => anyhow::bail!("give --index or --batch"),
    };
    let url = format!("{node}/v1/log/proof/inclusion?{which}&size={}", head.size);
    let reply: InclusionReply = get_json(&client, &url).await?;
    if reply.size != head.size || reply.root != head.root {
        return fail(format!(
            "{node}: NOT PROVEN: the proof is for a tree of {} records with root {}, not the signed head's {} with root {}",
            reply.size,
            hex32(&reply.root),
            head.size,
            hex32(&head.root)
        ));
    }
    if index.is_some_and(|i| i != reply.index) {
        return fail(format!(
            "{node}: NOT PROVEN: the proof is for record {}",
            reply.index
        ));
    }
    if let Err(e) = verify_inclusion(
        &head.root,
        head.size,
        reply.index,
        &reply.record,
        &reply.proof,
    ) {
        return fail(format!(
            "{node}: NOT PROVEN: record {} is not in the signed tree: {e}",
            reply.index
        ));
    }
    // What the proven bytes are: a record of the log, at that index, holding that batch.
    let record: Record = match Record::decode(&reply.record) {
        Ok(r) => r,
        Err(e) => {
            return fail(format!(
                "{node}: NOT PROVEN: the proven bytes are no log record: {e}"
            ));
        }
    };
    if record.seq != reply.index {
        return fail(format!(
            "{node}: NOT PROVEN: the proven record says it is record {}",
            record.seq
        ));
    }
    let held = (record.kind == RecordKind::Batch)
        .then(|| citychain::messages::decode::<BatchHeader>(&record.payload).ok())
        .flatten()
        .map(|h| hex32(&h.id()));
    if let Some(wanted) = batch
        && held.as_deref() != Some(&wanted.to_ascii_lowercase())
    {
        return fail(format!(
            "{node}: NOT PROVEN: record {} does not hold batch {wanted}",
            reply.index
        ));
    }
    println!(
        "ok: record {}{} is in the log's tree of {} records (root {}), signed at {} by {signer}",
        reply.index,
        held.map(|id| format!(" (batch {id})")).unwrap_or_default(),
        head.size,
        hex32(&head.root),
        time(head.time_ms)
    );
    Ok(())
}

/// `citychain log consistency`.
pub async fn consistency(
    node: &str,
    from: u64,
    to: Option<u64>,
    from_root: Option<&str>,
    pin: Option<&str>,
) -> anyhow::Result<()> {
    let node = node.trim_end_matches('/');
    let client = http()?;
    let (head, signer) = signed_head(&client, node, pin).await?;
    let to = to.unwrap_or(head.size);
    let url = format!("{node}/v1/log/proof/consistency?from={from}&to={to}");
    let reply: ConsistencyReply = get_json(&client, &url).await?;
    if (reply.from, reply.to) != (from, to) {
        return fail(format!(
            "{node}: NOT PROVEN: the proof is for sizes {} to {}",
            reply.from, reply.to
        ));
    }
    if let Some(pinned) = from_root {
        let pinned = parse_hex32(pinned).context("--from-root must be 64 hex characters")?;
        if pinned != reply.from_root {
            return fail(format!(
                "{node}: FORKED: the node's tree of {from} records has root {}, not the {} you recorded",
                hex32(&reply.from_root),
                hex32(&pinned)
            ));
        }
    }
    // Every root the node says it signed must carry a valid signature; the latest head
    // was checked above.
    let key = match pin {
        Some(arg) => public_key(arg)?,
        None => {
            get_json::<HeadReply>(&client, &format!("{node}/v1/log/head"))
                .await?
                .public_key
        }
    };
    let mut signed = Vec::new();
    for (what, size, root, claimed) in [
        ("older", from, reply.from_root, &reply.from_head),
        ("newer", to, reply.to_root, &reply.to_head),
    ] {
        let head_here = (size == head.size).then_some(&head).or(claimed.as_ref());
        if let Some(h) = head_here {
            if h.size != size || h.root != root || h.verify(&key).is_err() {
                return fail(format!(
                    "{node}: NOT PROVEN: the {what} root ({size} records) does not match a valid signed head"
                ));
            }
            signed.push(what);
        }
    }
    if let Err(e) = verify_consistency(from, &reply.from_root, to, &reply.to_root, &reply.proof) {
        return fail(format!(
            "{node}: NOT CONSISTENT: the tree of {from} records is not a prefix of the tree of {to}: {e}"
        ));
    }
    println!(
        "ok: the log's tree of {from} records (root {}) is a prefix of its tree of {to} (root {}); signed by {signer}: {}",
        hex32(&reply.from_root),
        hex32(&reply.to_root),
        if signed.is_empty() {
            "neither root".to_string()
        } else {
            format!(
                "the {} root{}",
                signed.join(" and "),
                if signed.len() > 1 { "s" } else { "" }
            )
        }
    );
    Ok(())
}
