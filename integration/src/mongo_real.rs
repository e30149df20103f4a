//! A throwaway real `mongod` as a one-member replica set (`PITR_MONGOD_BIN`).
//!
//! Started as `mongod --replSet rs0 --bind_ip 127.0.0.1 --port P --dbpath D
//! --oplogSize 990 --setParameter periodicNoopIntervalSecs=N`, plus
//! `--keyFile K` when a user is wanted (access control on a replica set
//! needs a key file for the members' own authentication). Then, over a
//! direct connection without credentials (the localhost exception, which
//! allows exactly this before the first user exists): `replSetInitiate`
//! with the one member, a wait until it is writable primary, and
//! `createUser` with the `root` role on `admin` (SCRAM-SHA-256, the
//! server's default mechanism).
//!
//! Not run on the machines this project is built on (no `mongod` can be
//! installed there); see README "Testing against real servers".

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bson::doc;

use crate::mongo::{MongoDouble, MongoOptions};

/// Starts and initiates a real server; see the module docs.
pub(crate) fn start(mongod: &Path, opts: MongoOptions) -> Result<MongoDouble> {
    if opts.seed_oplog.is_some() || opts.oplog_cap_bytes.is_some() {
        bail!(
            "a seeded or byte-capped oplog needs the double; a real mongod cannot do it \
             (this test must use MongoDouble::start_bin)"
        );
    }
    let dir = tempfile::Builder::new().prefix("pitr-mongod-").tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir(&data)?;
    let port = crate::util::free_port()?;
    let mut cmd = Command::new(mongod);
    cmd.args(["--replSet", "rs0", "--bind_ip", "127.0.0.1"])
        .args(["--port", &port.to_string()])
        .arg("--dbpath")
        .arg(&data)
        .arg("--logpath")
        .arg(dir.path().join("mongod.log"))
        .args(["--oplogSize", "990"])
        .args([
            "--setParameter",
            &format!(
                "periodicNoopIntervalSecs={}",
                opts.noop_interval_secs.clamp(1, 10)
            ),
        ]);
    if opts.user.is_some() {
        let key = dir.path().join("keyfile");
        let secret: String = (0..48)
            .map(|_| char::from(b'a' + rand::random_range(0..26u8)))
            .collect();
        std::fs::write(&key, secret)?;
        set_mode_600(&key)?;
        cmd.arg("--keyFile").arg(&key);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", mongod.display()))?;
    let user = opts.user.clone();
    let init = std::thread::spawn(move || -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(initiate(port, user))
    })
    .join();
    let ok = match init {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(anyhow::anyhow!("initiating the replica set panicked")),
    };
    if let Err(e) = ok {
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(dir.path().join("mongod.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        bail!(
            "the real mongod {} did not come up as a replica set: {e:#}\n{}",
            mongod.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(MongoDouble::from_real(child, port, opts.user, dir))
}

/// `replSetInitiate`, wait for primary, create the user.
async fn initiate(port: u16, user: Option<(String, String)>) -> Result<()> {
    let url = format!("mongodb://127.0.0.1:{port}/?directConnection=true");
    let deadline = Instant::now() + Duration::from_secs(60);
    let client = mongodb::Client::with_uri_str(&url).await?;
    let admin = client.database("admin");
    // Wait until it answers.
    loop {
        match admin.run_command(doc! {"ping": 1}).await {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => bail!("mongod does not answer: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    admin
        .run_command(doc! {
            "replSetInitiate": {"_id": "rs0", "members": [{"_id": 0, "host": format!("127.0.0.1:{port}")}]}
        })
        .await
        .context("replSetInitiate")?;
    loop {
        let hello = admin.run_command(doc! {"hello": 1}).await?;
        if hello.get_bool("isWritablePrimary").unwrap_or(false) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the member did not become primary within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let Some((name, pw)) = user {
        admin
            .run_command(doc! {
                "createUser": name,
                "pwd": pw,
                "roles": [{"role": "root", "db": "admin"}],
            })
            .await
            .context("createUser through the localhost exception")?;
    }
    Ok(())
}

fn set_mode_600(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}
