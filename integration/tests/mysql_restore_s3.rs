//! A MariaDB point-in-time restore from a repository on S3 (s3s-fs): the
//! base backup is loaded, then the binlog apply (which runs on a runtime of
//! its own thread) reads the archived segments through S3 and must bring the
//! target to the source's contents, over 4 connections.

use std::path::Path;

use pitr_integration::archiver::Archiver;
use pitr_integration::mysql_restore_util::{
    binlog_position, dump, ok, restore_latest, same, wait_archived,
};
use pitr_integration::restore_util::pitr;
use pitr_integration::{mysql, require, s3, Flavor, MySqlServer, S3Impl, S3Server};

#[test]
fn mariadb_restore_from_s3() {
    require!(mysql::available(Flavor::MariaDb));
    require!(s3::available(S3Impl::S3sFs));
    let s3 = S3Server::start(S3Impl::S3sFs).unwrap();
    // Every pitr this test starts finds the repository's credentials here.
    for (k, v) in s3.env() {
        std::env::set_var(k, v);
    }
    let repo = s3.repo_url("mysql");
    let dir = tempfile::tempdir().unwrap();

    let src = MySqlServer::start(Flavor::MariaDb).unwrap();
    let url = src.url();
    src.sql(
        "CREATE DATABASE s3t; \
         CREATE TABLE s3t.acct (id INT PRIMARY KEY, bal BIGINT NOT NULL); \
         INSERT INTO s3t.acct SELECT seq, seq FROM s3t.seq_1_to_10",
    )
    .unwrap();
    let archiver = Archiver::start(&url, Path::new(&repo), "s3t", dir.path(), &[]);
    ok(&pitr(&["backup", &url, "--repo", &repo, "--name", "s3t"]));
    // Non-commuting updates of the same rows, one transaction each, and
    // inserts: a transaction applied out of order leaves other values.
    let work: String = (1..=300)
        .map(|i| {
            format!(
                "UPDATE s3t.acct SET bal = bal * 3 + {i} WHERE id = {}; \
                 INSERT INTO s3t.acct VALUES ({}, {i});",
                i % 10 + 1,
                1000 + i
            )
        })
        .collect();
    src.sql(&work).unwrap();
    let want = dump(&src, "s3t");
    wait_archived(&repo, &url, &binlog_position(&src));
    archiver.terminate();

    let target = MySqlServer::start(Flavor::MariaDb).unwrap();
    ok(&restore_latest(&repo, &target.url(), &["--parallel", "4"]));
    same(&dump(&target, "s3t"), &want, "restore from S3");
}
