//! `clouds NAME=PORT...`: serve simulated inference clouds on 127.0.0.1 until interrupted.

use anyhow::{bail, Result};

#[tokio::main]
async fn main() -> Result<()> {
    let specs: Vec<String> = std::env::args().skip(1).collect();
    if specs.is_empty() || specs.iter().any(|s| s == "-h" || s == "--help") {
        bail!("usage: clouds NAME=PORT [NAME=PORT...]   (e.g. clouds aws-us-east-1=18001 onprem-fra=18004)");
    }
    let clouds =
        celroute_tests::clouds::serve(&celroute_tests::clouds::parse_specs(&specs)?).await?;
    for cloud in &clouds {
        println!("cloud {} listening on http://{}", cloud.name, cloud.address);
    }
    tokio::signal::ctrl_c().await?;
    Ok(())
}
