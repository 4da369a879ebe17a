//! Real reverse proxies in front of the gateway, for `tests/edge_proxies.rs`: nginx and HAProxy (Debian's
//! packages, `scripts/install-test-deps.sh`) started on loopback from the configurations in `docs/deployment/`
//! with their placeholders filled in, a self-signed certificate made with `openssl` for TLS at the proxy (or, for
//! the TCP pass-through configurations, at the gateway), and a client stream that is plain TCP or rustls over it.
//!
//! Each [`Proxy`] lives in its own temporary directory (configuration, certificate, logs, pid file, nginx's
//! temporary files), is stopped on drop, and prints its logs when the owning test panics. Nothing here
//! reaches beyond loopback. It does not start the gateway (`common::Gateway` does).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::common::raw::TimedRead;
use crate::common::{self, IO_TIMEOUT};

/// How long a proxy may take to accept connections on its listeners.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// The configuration templates the deployment guide shows verbatim (`docs/deployment.md`).
pub const NGINX_TEMPLATE: &str = "docs/deployment/nginx-wsgate.conf";
pub const HAPROXY_TEMPLATE: &str = "docs/deployment/haproxy-wsgate.cfg";
/// TLS at the gateway: the proxies forward TCP with a PROXY protocol header.
pub const NGINX_PASSTHROUGH_TEMPLATE: &str = "docs/deployment/nginx-wsgate-stream.conf";
pub const HAPROXY_PASSTHROUGH_TEMPLATE: &str = "docs/deployment/haproxy-wsgate-passthrough.cfg";
/// Where Debian's libnginx-mod-stream puts nginx's stream module.
const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// Which proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Nginx,
    Haproxy,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
        }
    }
}

/// What a proxy is started with.
#[derive(Debug, Clone)]
pub struct Options {
    /// The gateways it balances over (one `server` line each).
    pub gateways: Vec<SocketAddr>,
    /// The proxy's idle timeout (nginx `proxy_read_timeout`, HAProxy `timeout client/server/tunnel`).
    pub timeout: Duration,
    /// HAProxy only: send a PROXY protocol v2 header to the gateway (`send-proxy-v2`).
    pub send_proxy: bool,
}

/// A running nginx or HAProxy on loopback: a plain and a TLS listener, or one TCP pass-through listener.
pub struct Proxy {
    pub kind: Kind,
    child: Option<Child>,
    dir: PathBuf,
    entries: Vec<Entry>,
}

/// A self-signed certificate for `localhost` and 127.0.0.1 (made with openssl), its files, and a client that
/// trusts it: the proxy's, or (pass-through) the gateway's.
pub struct TestCertificate {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Certificate and key in one PEM file, as HAProxy wants them.
    pub pem: PathBuf,
    pub client: Arc<rustls::ClientConfig>,
}

impl TestCertificate {
    /// Made in `dir`, which must exist.
    pub fn make(dir: &Path) -> TestCertificate {
        let (cert, key, pem) = make_certificate(dir);
        let client = client_config(&cert);
        TestCertificate { cert, key, pem, client }
    }

    /// `--tls-cert FILE --tls-key FILE` for a gateway.
    pub fn gateway_args(&self) -> Vec<String> {
        vec!["--tls-cert".into(), self.cert.display().to_string(), "--tls-key".into(), self.key.display().to_string()]
    }
}

/// Absolute path of `name`, looked up in `PATH`, then in the sbin directories Debian installs daemons to.
/// Panics with the fix when it is missing: these tests never skip.
pub fn binary(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("`{name}` is not installed: run scripts/install-test-deps.sh (it installs nginx, haproxy and openssl)");
}

/// A loopback port that was free a moment ago (for a configuration written before the process starts).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port").local_addr().unwrap().port()
}

/// `template` (a path relative to the repository) with every `{{name}}` replaced, and each line holding
/// `{{gateway}}` repeated once per gateway (with `{{n}}` its number, from 1); panics on a placeholder left over
/// or a value the template does not use, so the file and the tests cannot drift apart.
pub fn fill(template: &str, gateways: &[SocketAddr], values: &[(&str, String)]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(template);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(text.contains("{{gateway}}"), "{template} has no placeholder {{{{gateway}}}}");
    let mut text: String = text
        .split_inclusive('\n')
        .flat_map(|line| -> Vec<String> {
            if !line.contains("{{gateway}}") {
                return vec![line.to_string()];
            }
            let each = |(i, gw): (usize, &SocketAddr)| {
                line.replace("{{gateway}}", &gw.to_string()).replace("{{n}}", &(i + 1).to_string())
            };
            gateways.iter().enumerate().map(each).collect()
        })
        .collect();
    for (name, value) in values {
        let key = format!("{{{{{name}}}}}");
        assert!(text.contains(&key), "{template} has no placeholder {key}");
        text = text.replace(&key, value);
    }
    if let Some(at) = text.find("{{").filter(|&at| text[at + 2..].starts_with(|c: char| c.is_ascii_lowercase())) {
        panic!("{template}: placeholder left unfilled at {:?}", &text[at..text.len().min(at + 30)]);
    }
    text
}

/// A self-signed ECDSA P-256 certificate for `localhost` and 127.0.0.1, made with `openssl` in `dir`:
/// (certificate, key, both in one PEM file as HAProxy wants it).
fn make_certificate(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (cert, key, both) = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("cert+key.pem"));
    let out = Command::new(binary("openssl"))
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        // A server certificate, not a CA (openssl's default for -x509), or webpki refuses it as an end entity.
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl req failed: {}", String::from_utf8_lossy(&out.stderr));
    let pem = [std::fs::read(&cert).unwrap(), std::fs::read(&key).unwrap()].concat();
    std::fs::write(&both, pem).unwrap();
    (cert, key, both)
}

/// A rustls client configuration that trusts only `cert` and offers ALPN `http/1.1`.
fn client_config(cert: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_file_iter(cert).expect("read the test certificate") {
        roots.add(der.expect("parse the test certificate")).expect("trust the test certificate");
    }
    // rustls 0.23.48 deprecates ring's provider for lacking post-quantum key exchange, which a test client on
    // loopback does not need; ring builds with cc alone (aws-lc-rs would add a long C build to every test run).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// The `nginx.conf` around the template: what a distribution's main file does (workers, logs, temporary
/// files), here all inside `dir`.
fn nginx_main(dir: &Path) -> String {
    let d = dir.display();
    // `user` matters only when started as root; nginx ignores it with a warning otherwise.
    format!(
        "user root;\nworker_processes 1;\nerror_log {d}/error.log info;\npid {d}/nginx.pid;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n    access_log {d}/access.log;\n    client_body_temp_path {d}/body;\n    \
         proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    \
         scgi_temp_path {d}/scgi;\n    include {d}/wsgate.conf;\n}}\n"
    )
}

/// The `nginx.conf` around the stream template: the module loaded, the block in the main context.
fn nginx_stream_main(dir: &Path) -> String {
    let d = dir.display();
    assert!(
        Path::new(NGINX_STREAM_MODULE).is_file(),
        "nginx's stream module is not installed ({NGINX_STREAM_MODULE}): run scripts/install-test-deps.sh"
    );
    format!(
        "load_module {NGINX_STREAM_MODULE};\nuser root;\nworker_processes 1;\nerror_log {d}/error.log info;\n\
         pid {d}/nginx.pid;\nevents {{ worker_connections 4096; }}\ninclude {d}/wsgate-stream.conf;\n"
    )
}

/// nginx in the foreground with `main` as its nginx.conf, everything inside `dir`.
fn nginx_command(dir: &Path, main: &str) -> Command {
    std::fs::write(dir.join("nginx.conf"), main).unwrap();
    let mut c = Command::new(binary("nginx"));
    c.arg("-c").arg(dir.join("nginx.conf")).arg("-p").arg(dir).args(["-g", "daemon off;"]);
    c
}

/// HAProxy in the foreground with a minimal `global` section and `cfg`.
fn haproxy_command(dir: &Path, cfg: &str) -> Command {
    std::fs::write(dir.join("global.cfg"), "global\n    maxconn 4096\n").unwrap();
    std::fs::write(dir.join("wsgate.cfg"), cfg).unwrap();
    let mut c = Command::new(binary("haproxy"));
    c.arg("-f").arg(dir.join("global.cfg")).arg("-f").arg(dir.join("wsgate.cfg")).arg("-db");
    c
}

/// Seconds as both proxies write them (`3s`).
fn secs(d: Duration) -> String {
    assert!(d.subsec_nanos() == 0 && d.as_secs() > 0, "proxy timeouts here are whole seconds: {d:?}");
    format!("{}s", d.as_secs())
}

impl Proxy {
    /// Starts `kind` from its template in `docs/deployment/`, listening on two free loopback ports (plain, TLS),
    /// and waits until both accept connections.
    pub fn start(kind: Kind, opts: &Options) -> Proxy {
        let dir = common::unique_temp_path(kind.name());
        std::fs::create_dir_all(&dir).unwrap();
        let certificate = TestCertificate::make(&dir);
        let plain = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let tls = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let command = match kind {
            Kind::Nginx => {
                let conf = fill(
                    NGINX_TEMPLATE,
                    &opts.gateways,
                    &[
                        ("listen", plain.to_string()),
                        ("listen_tls", tls.to_string()),
                        ("cert", certificate.cert.display().to_string()),
                        ("key", certificate.key.display().to_string()),
                        ("timeout", secs(opts.timeout)),
                    ],
                );
                assert!(!opts.send_proxy, "nginx here forwards X-Forwarded-For, not the PROXY protocol");
                std::fs::write(dir.join("wsgate.conf"), conf).unwrap();
                nginx_command(&dir, &nginx_main(&dir))
            }
            Kind::Haproxy => {
                let cfg = fill(
                    HAPROXY_TEMPLATE,
                    &opts.gateways,
                    &[
                        ("listen", plain.to_string()),
                        ("listen_tls", tls.to_string()),
                        ("pem", certificate.pem.display().to_string()),
                        ("timeout", secs(opts.timeout)),
                        ("send_proxy", if opts.send_proxy { "send-proxy-v2".into() } else { String::new() }),
                    ],
                );
                haproxy_command(&dir, &cfg)
            }
        };
        let entries = vec![Entry { addr: plain, tls: None }, Entry { addr: tls, tls: Some(certificate.client) }];
        Proxy::spawn(kind, command, dir, entries)
    }

    /// Starts `kind` from its TCP pass-through template (`docs/deployment/`): one loopback listener whose bytes
    /// go unread to the gateways, after a PROXY protocol header (v2 from HAProxy, v1 from nginx). The gateways
    /// terminate TLS with `gateway_certificate`, which the entry's clients (and HAProxy's health checks) trust.
    pub fn start_passthrough(
        kind: Kind,
        gateways: &[SocketAddr],
        timeout: Duration,
        gateway_certificate: &TestCertificate,
    ) -> Proxy {
        let dir = common::unique_temp_path(kind.name());
        std::fs::create_dir_all(&dir).unwrap();
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let command = match kind {
            Kind::Nginx => {
                let values = [("listen", listen.to_string()), ("timeout", secs(timeout))];
                let conf = fill(NGINX_PASSTHROUGH_TEMPLATE, gateways, &values);
                std::fs::write(dir.join("wsgate-stream.conf"), conf).unwrap();
                nginx_command(&dir, &nginx_stream_main(&dir))
            }
            Kind::Haproxy => {
                let values = [
                    ("listen", listen.to_string()),
                    ("timeout", secs(timeout)),
                    ("ca", gateway_certificate.cert.display().to_string()),
                ];
                haproxy_command(&dir, &fill(HAPROXY_PASSTHROUGH_TEMPLATE, gateways, &values))
            }
        };
        let entries = vec![Entry { addr: listen, tls: Some(gateway_certificate.client.clone()) }];
        Proxy::spawn(kind, command, dir, entries)
    }

    /// Runs `command` in `dir` with its output in `stderr.log`, and waits until every entry accepts connections.
    fn spawn(kind: Kind, mut command: Command, dir: PathBuf, entries: Vec<Entry>) -> Proxy {
        let log = std::fs::File::create(dir.join("stderr.log")).unwrap();
        let child = command
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", kind.name()));
        let mut proxy = Proxy { kind, child: Some(child), dir, entries };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        for addr in proxy.entries.iter().map(|e| e.addr).collect::<Vec<_>>() {
            while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                if let Some(status) = proxy.child.as_mut().unwrap().try_wait().unwrap() {
                    proxy.child = None;
                    panic!("{} exited ({status}) before listening on {addr}\n{}", kind.name(), proxy.logs());
                }
                assert!(Instant::now() < deadline, "{} not listening on {addr}\n{}", kind.name(), proxy.logs());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        proxy
    }

    /// The proxy's stderr and error log.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["stderr.log", "error.log"] {
            if let Ok(text) = std::fs::read_to_string(self.dir.join(name)) {
                out.push_str(&format!("--- {} {name} ---\n{text}", self.kind.name()));
            }
        }
        out
    }

    /// The entry points: plain and TLS (at the proxy), or the one pass-through listener (TLS at the gateway).
    pub fn entries(&self) -> Vec<Entry> {
        self.entries.clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own unreaped child; SIGTERM is a fast shutdown for both proxies.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One way into a proxy: its plain or its TLS listener.
#[derive(Clone)]
pub struct Entry {
    pub addr: SocketAddr,
    /// Set for the TLS listener.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", if self.tls.is_some() { "https" } else { "http" }, self.addr)
    }
}

impl Entry {
    /// `ws` or `wss`.
    pub fn ws_scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "wss"
        } else {
            "ws"
        }
    }

    /// A connection from `source` (a loopback address to bind first, e.g. 127.0.0.2; `None`: any), through TLS
    /// for the TLS listener; read and write timeouts set.
    pub fn connect_from(&self, source: Option<[u8; 4]>) -> std::io::Result<Stream> {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        if let Some(ip) = source {
            sock.bind(&SocketAddr::from((ip, 0)).into())?;
        }
        sock.connect_timeout(&self.addr.into(), IO_TIMEOUT)?;
        let tcp: TcpStream = sock.into();
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))?;
        tcp.set_nodelay(true)?;
        Ok(match &self.tls {
            None => Stream::Plain(tcp),
            Some(config) => {
                let name = ServerName::try_from("localhost").unwrap();
                let conn = rustls::ClientConnection::new(config.clone(), name).map_err(std::io::Error::other)?;
                Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp)))
            }
        })
    }

    /// [`Entry::connect_from`] any address; panics on failure.
    pub fn connect(&self) -> Stream {
        self.connect_from(None).unwrap_or_else(|e| panic!("connect to {self:?}: {e}"))
    }
}

/// A client connection: plain TCP or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    /// The TCP socket underneath (for timeouts).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }
}

impl TimedRead for Stream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.tcp().set_read_timeout(timeout)
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}
