//! `signals-feed PORT|ADDRESS:PORT [DOCUMENT.json]`: serve a simulated
//! signals feed (`GET /v1/signals`, any path) until interrupted or
//! terminated. `PUT` with a JSON body replaces the document it serves.

use anyhow::{bail, Context as _, Result};

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (at, document) = match args.as_slice() {
        [at] if at != "-h" && at != "--help" => (at, None),
        [at, document] => (at, Some(document)),
        _ => bail!("usage: signals-feed PORT|ADDRESS:PORT [DOCUMENT.json]"),
    };
    let feed = celroute_sim::serve_feed(celroute_sim::parse_address(at)?).await?;
    if let Some(path) = document {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        serde_json::from_str::<serde_json::Value>(&text)
            .with_context(|| format!("{path} is not JSON"))?;
        feed.set(200, &text);
    }
    println!("signals feed listening on http://{}", feed.address);
    celroute_sim::until_stopped().await
}
