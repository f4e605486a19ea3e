//! `celroute-ext-proc --listen 127.0.0.1:PORT --policy FILE [--threads N]`:
//! serves celroute's decision as an Envoy external processor (see the
//! library's documentation). Prints `listening on ADDRESS` once ready.

use anyhow::{bail, Context as _, Result};
use celroute_ext_proc::Processor;

fn main() -> Result<()> {
    let mut listen = None;
    let mut policy = None;
    let mut threads = 1usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--listen" => listen = Some(value()?),
            "--policy" => policy = Some(value()?),
            "--threads" => threads = value()?.parse().context("--threads: a count")?,
            "-h" | "--help" => {
                println!("celroute-ext-proc --listen ADDRESS:PORT --policy FILE [--threads N=1]");
                return Ok(());
            }
            other => bail!("unknown argument '{other}' (see --help)"),
        }
    }
    let (Some(listen), Some(policy)) = (listen, policy) else {
        bail!("--listen and --policy are required (see --help)");
    };
    if threads == 0 {
        bail!("--threads must be at least 1");
    }
    let text = std::fs::read_to_string(&policy).with_context(|| format!("reading {policy}"))?;
    let processor = Processor::new(&text).with_context(|| format!("loading {policy}"))?;
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        println!("listening on {}", listener.local_addr()?);
        processor.serve(listener).await
    })
}
