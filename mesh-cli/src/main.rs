//! `mesh`: the command-line tool of the mesh.
//!
//! - `mesh check PATH...` validates Istio documents as mesh reads them (like `istioctl
//!   analyze`): exit 0 and a summary per host of the effective routes, subsets and policies, or
//!   exit 1 with every error, each naming the file, the document and the field path;
//! - `mesh explain -f PATH... METHOD URL [-H 'name: value']...` says, for one request, which
//!   route matches and why the earlier ones do not, the destinations with their effective
//!   weights, each subset's endpoints (with `--endpoints FILE`) and the policies that apply;
//! - `mesh apply -f PATH... --etcd URL [--prefix P] [--expect-revision N]` validates documents
//!   as `mesh check` does, with those already in etcd, and writes them in one transaction only
//!   if the whole set is valid; `mesh get [documents|endpoints] --etcd URL` lists what is live
//!   (both need the `etcd` feature);
//! - `mesh ca init DIR` / `mesh ca issue DIR SPIFFE_ID NAME` run a development CA.

#![forbid(unsafe_code)]

mod ca;
mod check;
mod etcd;
mod explain;

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use mesh_core::config::{LoadOptions, Workload};

/// The mesh's command-line tool.
#[derive(Parser)]
#[command(
    name = "mesh",
    version,
    about = "Check and explain Istio documents as mesh reads them, apply them to etcd; a development CA."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate documents (files or directories): a summary per host, or every error.
    Check {
        #[command(flatten)]
        docs: Docs,
        /// Files or directories of documents.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Explain where one request goes and why.
    Explain {
        #[command(flatten)]
        docs: Docs,
        /// Files or directories of documents.
        #[arg(short = 'f', long = "file", required = true)]
        paths: Vec<PathBuf>,
        /// An endpoints file, to list the endpoints each subset selects.
        #[arg(long)]
        endpoints: Option<PathBuf>,
        /// The caller's principal (`cluster.local/ns/default/sa/productpage`), to show the
        /// destination's authorization verdict.
        #[arg(long = "as")]
        principal: Option<String>,
        /// Print the explanation as JSON.
        #[arg(long)]
        json: bool,
        /// The request's method.
        method: String,
        /// The request's URL (`http://reviews:9080/reviews/1`).
        url: String,
        /// A request header, `name: value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
    },
    /// Validate documents with those live in etcd and write them in one transaction, only if
    /// the whole set is valid (feature `etcd`).
    Apply {
        #[command(flatten)]
        docs: Docs,
        #[command(flatten)]
        etcd: etcd::Etcd,
        /// Files or directories of documents.
        #[arg(short = 'f', long = "file", required = true)]
        paths: Vec<PathBuf>,
        /// Write only if nothing under the prefix changed after this revision.
        #[arg(long)]
        expect_revision: Option<i64>,
    },
    /// List what is live in etcd: documents (default) or endpoint records (feature `etcd`).
    Get {
        #[command(flatten)]
        etcd: etcd::Etcd,
        /// What to list.
        #[arg(value_enum, default_value = "documents")]
        what: etcd::What,
        /// Print each record's text too.
        #[arg(long, short = 'o')]
        full: bool,
    },
    /// A development certificate authority (development only: keys are written unencrypted).
    Ca {
        #[command(subcommand)]
        command: ca::CaCommand,
    },
}

/// Who reads the documents.
#[derive(Args)]
struct Docs {
    /// The reading workload's namespace (short names resolve in it).
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
    /// The reading workload's labels, `key=value` (repeatable): `sourceLabels` and policy
    /// selectors are decided against them.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Fields of Istio's schema that mesh does not implement are warnings, not errors.
    #[arg(long)]
    lenient: bool,
}

impl Docs {
    fn workload(&self) -> Result<(Workload, LoadOptions), String> {
        let mut labels = Vec::new();
        for l in &self.labels {
            let (k, v) = l
                .split_once('=')
                .ok_or_else(|| format!("--label {l:?}: expected key=value"))?;
            labels.push((k, v));
        }
        Ok((
            Workload::new(&self.namespace, labels),
            LoadOptions {
                lenient: self.lenient,
            },
        ))
    }
}

/// What a command ends with.
pub(crate) enum Outcome {
    /// Printed; exit 0.
    Ok(String),
    /// The documents are invalid; exit 1.
    Invalid(String),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { docs, paths, json } => docs
            .workload()
            .map(|(w, o)| check::run(&paths, &w, &o, json)),
        Command::Explain {
            docs,
            paths,
            endpoints,
            principal,
            json,
            method,
            url,
            headers,
        } => docs.workload().and_then(|(w, o)| {
            explain::run(explain::Args {
                paths: &paths,
                workload: &w,
                options: &o,
                endpoints: endpoints.as_deref(),
                principal: principal.as_deref(),
                json,
                method: &method,
                url: &url,
                headers: &headers,
            })
        }),
        Command::Apply {
            docs,
            etcd,
            paths,
            expect_revision,
        } => etcd::apply(&docs, &etcd, &paths, expect_revision),
        Command::Get { etcd, what, full } => etcd::get(&etcd, what, full),
        Command::Ca { command } => ca::run(command).map(Outcome::Ok),
    };
    match result {
        Ok(Outcome::Ok(out)) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Ok(Outcome::Invalid(out)) => {
            eprint!("{out}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("mesh: {e}");
            ExitCode::from(2)
        }
    }
}
