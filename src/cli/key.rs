//! `pitr key init|rotate|rewrap|list`: encryption at rest of a repository
//! (see `crypto`). Every verb but `list` needs the key-encryption key
//! (`--kek SOURCE` or `PITR_KEK`); none prints a key.

use clap::{Args, Subcommand};
use serde_json::json;

use crate::crypto::kek::KekSource;
use crate::crypto::keyring::Keyring;
use crate::storage::Repo;

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Encrypt everything the repository stores from now on: creates its
    /// keyring with data key 1, wrapped by the key-encryption key given.
    /// Objects written before stay readable as they are.
    Init(KeyArgs),
    /// Start a new data key: new objects use it at once (running archivers
    /// within a minute); objects sealed with older keys stay readable while
    /// the keyring holds them. With --reencrypt, every object sealed with
    /// an older key is then rewritten under the new one (for a data key
    /// that may be compromised; run it when no restore is in progress).
    Rotate(RotateArgs),
    /// Wrap every data key under a new key-encryption key (--new-kek); no
    /// data is rewritten, and the old key-encryption key is no longer needed
    /// afterwards.
    Rewrap(RewrapArgs),
    /// List the data keys: id, the fingerprint of the key-encryption key
    /// wrapping it, when it was made, and which one is current.
    List(KeyArgs),
}

#[derive(Debug, Args)]
pub struct KeyArgs {
    /// Repository: a directory path, file://PATH, or s3://bucket/prefix.
    #[arg(long, env = "PITR_REPO", default_value = "./pitr-repo")]
    pub repo: String,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    #[command(flatten)]
    pub base: KeyArgs,
    /// Also rewrite every object sealed with an older data key under the
    /// new one.
    #[arg(long)]
    pub reencrypt: bool,
}

#[derive(Debug, Args)]
pub struct RewrapArgs {
    #[command(flatten)]
    pub base: KeyArgs,
    /// The new key-encryption key: file:PATH, env:NAME or cmd:COMMAND.
    #[arg(long, value_name = "SOURCE")]
    pub new_kek: KekSource,
}

fn need(kek: Option<KekSource>) -> anyhow::Result<KekSource> {
    kek.ok_or_else(|| {
        anyhow::anyhow!(
            "give the key-encryption key with --kek SOURCE or PITR_KEK (file:PATH, env:NAME or cmd:COMMAND); make one with `openssl rand -hex 32`"
        )
    })
}

pub async fn run(cmd: KeyCommand, kek: Option<KekSource>) -> anyhow::Result<i32> {
    let (ring, args, what) = match cmd {
        KeyCommand::Init(args) => {
            let kek = need(kek)?.load()?;
            let repo = Repo::open(&args.repo).await?;
            let ring = Keyring::create(&repo, &kek).await?;
            let what = format!(
                "the repository {repo} is now encrypted with data key 1 under key-encryption key {}; keep that key safe: nothing written from now on can be restored without it",
                kek.fingerprint()
            );
            (ring, args, what)
        }
        KeyCommand::Rotate(a) => {
            let source = need(kek)?;
            let kek = source.load()?;
            let repo = Repo::open_existing(&a.base.repo).await?;
            let ring = Keyring::rotate(&repo, &kek).await?;
            let mut what = format!(
                "new objects are sealed with data key {} from now on (running archivers pick it up within a minute); older keys stay in the keyring",
                ring.current
            );
            if a.reencrypt {
                crate::crypto::unlock(&repo, Some(&source), crate::crypto::Access::Write).await?;
                let r = crate::crypto::reencrypt::reencrypt(&repo).await?;
                if a.base.json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(
                            &json!({"current": ring.current, "reencrypted": r})
                        )?
                    );
                    return Ok(0);
                }
                what += &format!(
                    "\nre-encrypted under data key {}: {} segment(s), {} part(s), {} manifest(s)",
                    ring.current, r.segments, r.parts, r.manifests
                );
                if !r.skipped.is_empty() {
                    what += &format!(
                        "\n{} object(s) changed meanwhile and were left as they were; run it again: {}",
                        r.skipped.len(),
                        r.skipped.join(", ")
                    );
                }
            }
            (ring, a.base, what)
        }
        KeyCommand::Rewrap(a) => {
            let old = need(kek)?.load()?;
            let new = a.new_kek.load()?;
            let repo = Repo::open_existing(&a.base.repo).await?;
            let ring = Keyring::rewrap(&repo, &old, &new).await?;
            let what = format!(
                "every data key is wrapped by key-encryption key {} now; the old key-encryption key {} is no longer needed",
                new.fingerprint(),
                old.fingerprint()
            );
            (ring, a.base, what)
        }
        KeyCommand::List(args) => {
            let repo = Repo::open_existing(&args.repo).await?;
            let Some((ring, _)) = Keyring::load(&repo).await? else {
                anyhow::bail!(
                    "the repository {repo} is not encrypted; `pitr key init` encrypts it"
                );
            };
            (ring, args, String::new())
        }
    };
    if args.json {
        let keys: Vec<_> = ring
            .keys
            .iter()
            .map(|k| {
                json!({
                    "id": k.id,
                    "kek": k.kek,
                    "created_at": k.created_at,
                    "current": k.id == ring.current,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"current": ring.current, "keys": keys}))?
        );
        return Ok(0);
    }
    if !what.is_empty() {
        println!("{what}");
    }
    for k in &ring.keys {
        let mark = if k.id == ring.current {
            " (current)"
        } else {
            ""
        };
        println!(
            "data key {}: key-encryption key {}, made {}{mark}",
            k.id,
            k.kek,
            k.created_at.format("%Y-%m-%d %H:%M:%S UTC")
        );
    }
    Ok(0)
}
