//! Certificates made for a test (a CA, Envoy's server certificate for
//! 127.0.0.1, client certificates carrying SPIFFE IDs), with the `openssl`
//! command, and an HTTPS client presenting one of them (`curl`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::http::Reply;

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A test CA in a directory, with Envoy's server certificate.
pub struct Pki {
    dir: PathBuf,
    pub ca: PathBuf,
    pub server: Identity,
    issued: usize,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .context("running openssl (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

const KEY: &[&str] = &[
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

impl Pki {
    /// A new CA and server certificate (for 127.0.0.1 and celroute.test) in `dir`.
    pub fn new(dir: &Path) -> Result<Pki> {
        let mut args = vec!["req", "-x509"];
        args.extend(KEY);
        args.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=celroute test CA",
        ]);
        openssl(dir, &args)?;
        let mut pki = Pki {
            dir: dir.to_path_buf(),
            ca: dir.join("ca.pem"),
            server: Identity {
                cert: PathBuf::new(),
                key: PathBuf::new(),
            },
            issued: 0,
        };
        pki.server = pki.issue(
            "/CN=celroute.test",
            "subjectAltName=IP:127.0.0.1,DNS:celroute.test\nextendedKeyUsage=serverAuth\n",
        )?;
        Ok(pki)
    }

    /// A client certificate with this subject and, if given, this URI SAN
    /// (a SPIFFE ID).
    pub fn client(&mut self, subject: &str, uri_san: Option<&str>) -> Result<Identity> {
        let san = uri_san
            .map(|uri| format!("subjectAltName=URI:{uri}\n"))
            .unwrap_or_default();
        self.issue(subject, &format!("{san}extendedKeyUsage=clientAuth\n"))
    }

    fn issue(&mut self, subject: &str, extensions: &str) -> Result<Identity> {
        self.issued += 1;
        let name = format!("cert{}", self.issued);
        let (key, csr, cert, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        std::fs::write(
            self.dir.join(&ext),
            format!("basicConstraints=CA:FALSE\n{extensions}"),
        )?;
        let mut args = vec!["req"];
        args.extend(KEY);
        args.extend(["-keyout", &key, "-out", &csr, "-subj", subject]);
        openssl(&self.dir, &args)?;
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &cert,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        )?;
        Ok(Identity {
            cert: self.dir.join(cert),
            key: self.dir.join(key),
        })
    }
}

/// One HTTPS request to `address`, trusting `ca`, presenting `identity`
/// (or no client certificate).
pub fn https(
    address: SocketAddr,
    ca: &Path,
    identity: Option<&Identity>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply> {
    let mut curl = Command::new("curl");
    curl.args(["-s", "-S", "--max-time", "10", "-D", "-", "--cacert"])
        .arg(ca);
    if let Some(identity) = identity {
        curl.arg("--cert").arg(&identity.cert);
        curl.arg("--key").arg(&identity.key);
    }
    for (name, value) in headers {
        curl.args(["-H", &format!("{name}: {value}")]);
    }
    curl.arg(format!("https://{address}{path}"));
    let out = curl.output().context("running curl (is it installed?)")?;
    if !out.status.success() {
        bail!("curl: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .context("no status line")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Reply {
        status,
        headers,
        body: body.to_string(),
    })
}
