//! `citychain vault …`: the continent key holder's tools. Keys (`keygen`, `rotate`) and
//! reading sealed batches back (`open`) with the holder's key and the capsules of a city's
//! key vault.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use citychain::config::{Config, VaultConfig};
use citychain::crypto::vault::VaultKey;
use citychain::messages::piece::rebuild_found;
use citychain::messages::{self, BatchId, Piece, SealedEnvelope};
use citychain::storage::immutable_log::{ImmutableLog, RecordKind};
use citychain::storage::store::BatchStore;
use citychain::storage::vault::VaultReader;

use crate::cli::Failed;

#[derive(Subcommand)]
pub enum VaultCommand {
    /// Write a new key holder key (ML-KEM-768, readable by its owner only) and print its id
    /// and the `[vault]` lines a city's config needs.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Create a new key holder key in OUT, add its public key to the `[vault]` keyring of
    /// the config file and make it current. Earlier keys stay in the keyring (keep their
    /// key files: batches sealed for them open only with them). Restart the node to seal
    /// for the new key.
    Rotate {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Open sealed batches with the holder's keys and the capsules of a city's key vault;
    /// print each as one JSON line. The nodes whose files are read must be stopped (or
    /// their files copied).
    Open(OpenArgs),
}

#[derive(Args)]
pub struct OpenArgs {
    /// A holder key file, or a directory of them (`*.key`); repeat for several. The key a
    /// batch was sealed for is picked by its id.
    #[arg(long = "key", required = true)]
    keys: Vec<PathBuf>,
    /// The data directory of the city that sealed the batches (its key vault).
    #[arg(long)]
    vault: PathBuf,
    /// Sealed batches from: one file of sealed bytes,
    #[arg(long, group = "source")]
    batch: Option<PathBuf>,
    /// or a light or full node's data directory; repeat it to rebuild light batches
    /// from the pieces of several light nodes (any k of a batch's pieces do),
    #[arg(long, group = "source")]
    store: Vec<PathBuf>,
    /// or an immutable log directory.
    #[arg(long, group = "source")]
    log: Option<PathBuf>,
    /// Only this batch (64 hex).
    #[arg(long)]
    id: Option<String>,
}

pub fn run(command: VaultCommand) -> anyhow::Result<()> {
    match command {
        VaultCommand::Keygen { out } => {
            let key = new_key(&out)?;
            println!("key id: {}", key.id());
            println!("\n# the keyring of a city sealing for this key holder:");
            print!("{}", vault_section(&VaultConfig::with_key(key.public())));
            Ok(())
        }
        VaultCommand::Rotate { config, out } => rotate(&config, &out),
        VaultCommand::Open(args) => open(&args),
    }
}

fn new_key(out: &Path) -> anyhow::Result<VaultKey> {
    if out.exists() {
        bail!("{} exists; refusing to overwrite a key", out.display());
    }
    let key = VaultKey::generate()?;
    key.save(out)?;
    Ok(key)
}

/// The `[vault]` section for `vault`, as TOML (ids and base64 need no escaping).
fn vault_section(vault: &VaultConfig) -> String {
    let mut out = format!("[vault]\ncurrent = \"{}\"\n", vault.current);
    for key in &vault.keys {
        out.push_str(&format!(
            "\n[[vault.keys]]\nid = \"{}\"\npublic_key = \"{}\"\n",
            key.id, key.public_key
        ));
    }
    out
}

/// Adds a new key to the config's keyring and makes it current, keeping everything else
/// in the file as it is (comments included): the `current` line is replaced and the new
/// key appended, and the result must parse to exactly that before it replaces the file.
fn rotate(config_path: &Path, out: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let before = Config::parse(&text)
        .map_err(|e| anyhow::anyhow!("{}: invalid config:\n{e}", config_path.display()))?;
    let key = new_key(out)?;
    let mut want = before.clone();
    let new_text = match &before.vault {
        None => {
            want.vault = Some(VaultConfig::with_key(key.public()));
            format!("{text}\n{}", vault_section(want.vault.as_ref().unwrap()))
        }
        Some(vault) => {
            let mut rotated = vault.clone();
            rotated.rotate_to(key.public());
            want.vault = Some(rotated);
            let mut replaced = 0;
            let mut lines: Vec<String> = text
                .lines()
                .map(|line| {
                    let bare: String = line.chars().filter(|c| !c.is_whitespace()).collect();
                    if bare.starts_with(&format!("current=\"{}\"", vault.current)) {
                        replaced += 1;
                        let indent = &line[..line.len() - line.trim_start().len()];
                        format!("{indent}current = \"{}\"", key.id())
                    } else {
                        line.to_owned()
                    }
                })
                .collect();
            if replaced != 1 {
                bail!(
                    "{}: cannot find the one `current = \"{}\"` line of [vault] to change; the new key is in {}, add it by hand",
                    config_path.display(),
                    vault.current,
                    out.display()
                );
            }
            lines.push(String::new());
            lines.push("[[vault.keys]]".into());
            lines.push(format!("id = \"{}\"", key.id()));
            lines.push(format!("public_key = \"{}\"", key.public().to_base64()));
            lines.join("\n") + "\n"
        }
    };
    match Config::parse(&new_text) {
        Ok(after) if after == want => {}
        Ok(_) => bail!(
            "{}: the edited file would not say what was meant; left unchanged (the new key is in {})",
            config_path.display(),
            out.display()
        ),
        Err(e) => bail!(
            "{}: the edited file would not be valid; left unchanged (the new key is in {}):\n{e}",
            config_path.display(),
            out.display()
        ),
    }
    let tmp = config_path.with_extension("toml.tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(new_text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, config_path)?;
    let previous = before.vault.map(|v| v.current);
    println!("key id: {}", key.id());
    match previous {
        Some(old) => println!(
            "{}: batches are now sealed for {} (was {old}, still in the keyring); restart the node to apply",
            config_path.display(),
            key.id()
        ),
        None => println!(
            "{}: batches are now sealed for {}; restart the node to apply",
            config_path.display(),
            key.id()
        ),
    }
    Ok(())
}

/// Holder keys from files and directories of `*.key` files.
fn load_keys(paths: &[PathBuf]) -> anyhow::Result<Vec<VaultKey>> {
    let mut keys = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "key"))
                .collect();
            files.sort();
            for file in files {
                keys.push(VaultKey::load(&file)?);
            }
        } else {
            keys.push(VaultKey::load(path)?);
        }
    }
    if keys.is_empty() {
        bail!("no holder key found in {paths:?}");
    }
    Ok(keys)
}

/// The sealed batches named by the source arguments: (id, bytes).
/// What the named sources held: sealed batches (id, bytes), and the batches of which only
/// pieces were found and too few to rebuild them (id, why).
type Found = (Vec<(BatchId, Vec<u8>)>, Vec<(BatchId, String)>);

fn sealed_batches(args: &OpenArgs) -> anyhow::Result<Found> {
    let mut unbuilt = Vec::new();
    let mut all = if let Some(file) = &args.batch {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let envelope = SealedEnvelope::from_bytes(&bytes)
            .with_context(|| format!("{} is not a sealed batch", file.display()))?;
        vec![(envelope.id(), bytes)]
    } else if !args.store.is_empty() {
        let mut whole: std::collections::BTreeMap<BatchId, Vec<u8>> = Default::default();
        let mut pieces = Vec::new();
        for dir in &args.store {
            whole.extend(
                BatchStore::read_all(dir)
                    .with_context(|| format!("reading the store in {}", dir.display()))?,
            );
            for bytes in BatchStore::read_all_pieces(dir)
                .with_context(|| format!("reading the pieces in {}", dir.display()))?
            {
                match Piece::from_bytes(&bytes) {
                    Ok(piece) => pieces.push(piece),
                    Err(e) => eprintln!("{}: a piece that does not decode: {e}", dir.display()),
                }
            }
        }
        for (id, rebuilt) in rebuild_found(pieces) {
            if whole.contains_key(&id) {
                continue;
            }
            match rebuilt {
                Ok(bytes) => {
                    whole.insert(id, bytes);
                }
                Err(e) => unbuilt.push((id, e.to_string())),
            }
        }
        whole.into_iter().collect()
    } else if let Some(dir) = &args.log {
        let records = ImmutableLog::read_all(dir)
            .with_context(|| format!("reading the log in {}", dir.display()))?;
        records
            .into_iter()
            .filter(|r| r.kind == RecordKind::Batch)
            .filter_map(|r| {
                let id = SealedEnvelope::from_bytes(&r.payload).ok()?.id();
                Some((id, r.payload))
            })
            .collect()
    } else {
        bail!("name the sealed batches: --batch FILE, --store DIR or --log DIR");
    };
    if let Some(id) = &args.id {
        let id = messages::parse_hex32(id).context("--id must be 64 hex characters")?;
        all.retain(|(held, _)| *held == id);
        unbuilt.retain(|(held, _)| *held == id);
        if all.is_empty() && unbuilt.is_empty() {
            bail!("batch {} is not there", messages::hex32(&id));
        }
    }
    Ok((all, unbuilt))
}

fn open(args: &OpenArgs) -> anyhow::Result<()> {
    let keys = load_keys(&args.keys)?;
    let (batches, unbuilt) = sealed_batches(args)?;
    let vault = VaultReader::open(&args.vault)
        .with_context(|| format!("opening the key vault in {}", args.vault.display()))?;
    let mut failed = unbuilt.len();
    for (id, why) in &unbuilt {
        eprintln!(
            "batch {}: cannot be rebuilt from the pieces found: {why}",
            messages::hex32(id)
        );
    }
    for (id, bytes) in &batches {
        match open_one(&vault, &keys, id, bytes) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                failed += 1;
                eprintln!("batch {}: {e:#}", messages::hex32(id));
            }
        }
    }
    if failed > 0 {
        return Err(Failed::Check(format!(
            "{failed} of {} batches did not open",
            batches.len() + unbuilt.len()
        ))
        .into());
    }
    Ok(())
}

/// One opened batch as a JSON line.
fn open_one(
    vault: &VaultReader,
    keys: &[VaultKey],
    id: &BatchId,
    bytes: &[u8],
) -> anyhow::Result<String> {
    let envelope = SealedEnvelope::from_bytes(bytes)?;
    if envelope.id() != *id {
        bail!("held under another batch's id");
    }
    let capsule = vault
        .capsule(id)?
        .context("the key vault has no capsule for it")?;
    let batch = messages::sealed::open(&envelope, &capsule, keys)?;
    let txs: Vec<serde_json::Value> = batch
        .body
        .iter()
        .map(|stored| {
            let tx: serde_json::Value =
                serde_json::from_str(&stored.canonical).unwrap_or(serde_json::Value::Null);
            serde_json::json!({ "tx_id": messages::hex32(&stored.id()), "tx": tx })
        })
        .collect();
    let h = &batch.header;
    Ok(serde_json::json!({
        "batch_id": messages::hex32(id),
        "city_id": h.city_id,
        "seq": h.seq,
        "continent": envelope.header.continent,
        "key_id": envelope.header.key_id,
        "created_at_ms": h.created_at_ms,
        "txs": txs,
    })
    .to_string())
}
