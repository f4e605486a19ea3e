//! `clouds NAME=PORT|NAME=ADDRESS:PORT...`: serve simulated inference clouds
//! (on 127.0.0.1 for a bare port) until interrupted or terminated.

use anyhow::{bail, Result};

#[tokio::main]
async fn main() -> Result<()> {
    let specs: Vec<String> = std::env::args().skip(1).collect();
    if specs.is_empty() || specs.iter().any(|s| s == "-h" || s == "--help") {
        bail!("usage: clouds NAME=PORT|NAME=ADDRESS:PORT...   (e.g. clouds aws-us-east-1=18001 onprem-fra=0.0.0.0:8000)");
    }
    let clouds = celroute_sim::serve(&celroute_sim::parse_specs(&specs)?).await?;
    for cloud in &clouds {
        println!("cloud {} listening on http://{}", cloud.name, cloud.address);
    }
    celroute_sim::until_stopped().await
}
