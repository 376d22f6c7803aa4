//! The command line: `nanolet agent|ps|logs|images|pull|rmi|version`, and the hidden child
//! modes the agent runs itself as (`internal-sandbox`, `internal-import`, `internal-pull`,
//! `internal-unpack`, `internal-nft-commit`).
//!
//! `internal-pull REF` speaks to its parent in JSON lines on stdout, one object per line:
//! `{"layer":"sha256:…","done":n,"total":m}` while layers download, then exactly one of
//! `{"image":{…the store's Image record…}}` (exit 0) or `{"error":"…"}` (exit 1).
//! `internal-unpack DIGEST` unpacks the rootfs of an image already in the store (named by
//! its manifest digest) and ends with the same `{"image":…}` or `{"error":…}` line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use lexopt::prelude::*;

use crate::config;
use crate::ctl;

const USAGE: &str = "usage: nanolet <command> [--config-dir DIR]

commands:
  agent                       run the node agent (default config dir /etc/nanolet)
  ps [-o table|json]          pods and containers, from the running agent's status
  logs POD [-c CONTAINER] [-n NAMESPACE] [-f] [--tail N] [-p|--previous]
                              a container's logs
  images                      images in the store
  pull IMAGE                  pull an image from its registry into the store
  rmi IMAGE                   remove an image (a name; the image goes with its last name)
  shutdown                    node shutdown: the agent stops every pod gracefully, then exits
  proxy dump [--mode iptables]
                              the Services' nftables ruleset as nft text (from proxy.servicesPath),
                              or the iptables fallback's iptables-restore input
  version                     print the version
";

/// Default configuration directory.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/nanolet";

/// A parsed command line.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Agent,
    Ps {
        json: bool,
    },
    Logs(ctl::logs::Options),
    Images,
    /// `proxy dump`: the desired nftables ruleset.
    ProxyDump,
    /// `proxy dump --mode iptables`: the iptables fallback's restore input.
    ProxyDumpIptables,
    Version,
    Shutdown,
    Help,
    Sandbox {
        dir: PathBuf,
        hostname: String,
        host_network: bool,
        /// Bridge mode: the veth pair to make (`net::bridge::PodLink`).
        link: Option<String>,
    },
    Import,
    /// `internal-nft-commit`: one nf_tables batch from stdin into the kernel, for the proxy.
    NftCommit,
    /// `pull REF`: progress for a person.
    Pull {
        reference: String,
    },
    /// `internal-pull REF`: progress as JSON lines, for the agent.
    InternalPull {
        reference: String,
        /// `--credentials-stdin`: `{"username":…,"password":…}` on stdin (a pod's
        /// imagePullSecrets), used before `config.json`.
        credentials_stdin: bool,
    },
    /// `internal-unpack DIGEST`: unpack a stored image's rootfs, for the agent.
    InternalUnpack {
        reference: String,
    },
    Rmi {
        reference: String,
    },
}

/// Parses `args` (without the program name) into a command and the config dir.
pub fn parse(args: Vec<String>) -> Result<(Command, PathBuf), lexopt::Error> {
    let mut parser = lexopt::Parser::from_args(args);
    let mut config_dir = PathBuf::from(DEFAULT_CONFIG_DIR);
    let mut verb: Option<String> = None;
    let mut positional: Vec<String> = Vec::new();
    let mut json = false;
    let mut logs = ctl::logs::Options::default();
    let mut host_network = false;
    let mut credentials_stdin = false;
    let mut sandbox_link: Option<String> = None;
    let mut mode: Option<String> = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Long("config-dir") => config_dir = parser.value()?.into(),
            Short('h') | Long("help") => return Ok((Command::Help, config_dir)),
            Short('o') | Long("output") => {
                let v: String = parser.value()?.string()?;
                json = match v.as_str() {
                    "json" => true,
                    "table" | "wide" => false,
                    _ => return Err(format!("-o {v}: expected table or json").into()),
                }
            }
            Short('c') | Long("container") => logs.container = Some(parser.value()?.string()?),
            Short('n') | Long("namespace") => logs.namespace = Some(parser.value()?.string()?),
            Short('f') | Long("follow") => logs.follow = true,
            Short('p') | Long("previous") => logs.previous = true,
            Long("tail") => logs.tail = Some(parser.value()?.parse()?),
            Long("host-network") => host_network = true,
            Long("credentials-stdin") => credentials_stdin = true,
            Long("link") => sandbox_link = Some(parser.value()?.string()?),
            Long("mode") => mode = Some(parser.value()?.string()?),
            Value(v) if verb.is_none() => verb = Some(v.string()?),
            Value(v) => positional.push(v.string()?),
            _ => return Err(arg.unexpected()),
        }
    }
    let command = match verb.as_deref() {
        Some("agent") => Command::Agent,
        Some("ps") => Command::Ps { json },
        Some("logs") => {
            logs.pod = positional
                .pop()
                .ok_or("logs: which pod? usage: nanolet logs POD")?;
            Command::Logs(logs)
        }
        Some("images") => Command::Images,
        Some("proxy") if positional == ["dump"] => match mode.as_deref() {
            None | Some("nftables") => Command::ProxyDump,
            Some("iptables") => Command::ProxyDumpIptables,
            Some(m) => return Err(format!("--mode {m}: expected nftables or iptables").into()),
        },
        Some("proxy") => return Err("usage: nanolet proxy dump [--mode iptables]".into()),
        Some("version") => Command::Version,
        Some("shutdown") => Command::Shutdown,
        Some("internal-sandbox") if positional.len() == 2 => Command::Sandbox {
            dir: PathBuf::from(&positional[0]),
            hostname: positional[1].clone(),
            host_network,
            link: sandbox_link,
        },
        Some("internal-import") => Command::Import,
        Some(crate::proxy::apply::CHILD_VERB) => Command::NftCommit,
        Some(verb @ ("pull" | "rmi" | "internal-pull" | "internal-unpack")) => {
            let [reference] = <[String; 1]>::try_from(positional)
                .map_err(|_| format!("{verb}: want one image. usage: nanolet {verb} IMAGE"))?;
            match verb {
                "pull" => Command::Pull { reference },
                "rmi" => Command::Rmi { reference },
                "internal-unpack" => Command::InternalUnpack { reference },
                _ => Command::InternalPull {
                    reference,
                    credentials_stdin,
                },
            }
        }
        None => Command::Help,
        Some(other) => return Err(format!("unknown command {other:?}").into()),
    };
    Ok((command, config_dir))
}

/// Entry point called by `main`.
pub fn main() -> ExitCode {
    crate::logger::init("info");
    let args = std::env::args().skip(1).collect();
    let (command, config_dir) = match parse(args) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("nanolet: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(command, &config_dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nanolet: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command, config_dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        Command::Help => print!("{USAGE}"),
        Command::Shutdown => {
            let cfg = config::load(config_dir)?;
            shutdown(&cfg)?
        }
        Command::Version => println!(
            "nanolet {} ({})",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::ARCH
        ),
        Command::Agent => crate::agent::run(config_dir)?,
        Command::ProxyDump => proxy_dump(config_dir, false)?,
        Command::ProxyDumpIptables => proxy_dump(config_dir, true)?,
        Command::Ps { json } => {
            let cfg = config::load(config_dir)?;
            let snapshot = ctl::ps::read_snapshot(&cfg.run_dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&snapshot)?);
            } else {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                let alive = crate::sys::reaper::is_alive(snapshot.agent_pid);
                print!("{}", ctl::ps::render_table(&snapshot, now, alive));
            }
        }
        Command::Logs(options) => {
            let cfg = config::load(config_dir)?;
            ctl::logs::run(&cfg, &options, &mut std::io::stdout().lock())?;
        }
        Command::Images => {
            let cfg = config::load(config_dir)?;
            let store = open_store(&cfg)?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{:<48} {:<20} {:>10}", "IMAGE", "ID", "SIZE")?;
            for image in store.list()? {
                let id = image.config_digest.to_string();
                let short = id
                    .trim_start_matches("sha256:")
                    .get(..12)
                    .unwrap_or("")
                    .to_string();
                let names = if image.names.is_empty() {
                    vec!["<none>".to_string()]
                } else {
                    image.names.clone()
                };
                for name in names {
                    writeln!(
                        out,
                        "{:<48} {:<20} {:>10}",
                        name,
                        short,
                        human_size(image.size)
                    )?;
                }
            }
        }
        Command::Sandbox {
            dir,
            hostname,
            host_network,
            link: None,
        } => crate::sys::sandbox::init_in_child(&dir, &hostname, host_network)?,
        Command::Sandbox {
            dir,
            hostname,
            link: Some(link),
            ..
        } => {
            let link: crate::net::bridge::PodLink = link.parse()?;
            crate::net::bridge::sandbox_child(&dir, &hostname, &link)?
        }
        Command::NftCommit => crate::proxy::apply::commit_child()?,
        Command::Import => {
            // The agent logs this child's results; its own progress lines would repeat them.
            log::set_max_level(log::LevelFilter::Warn);
            import(config_dir)?
        }
        Command::Pull { reference } => {
            let cfg = config::load(config_dir)?;
            let store = open_store(&cfg)?;
            let options = pull_options(config_dir, &cfg, &reference)?;
            let is_terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
            // Layers download together (from several threads): on a terminal one line per
            // layer, redrawn in place; otherwise one plain line as each layer completes.
            let board = std::sync::Mutex::new(ProgressBoard::default());
            let show = |digest: &crate::image::digest::Digest, done: u64, total: u64| {
                let mut out = std::io::stdout().lock();
                // Progress is a courtesy: a closed stdout must not fail the pull.
                let _ = if is_terminal {
                    let mut board = board.lock().unwrap_or_else(|e| e.into_inner());
                    let text = board.update(digest, done, total);
                    write!(out, "{text}").and_then(|()| out.flush())
                } else if done == total {
                    writeln!(out, "{}", progress_line(digest, done, total))
                } else {
                    Ok(())
                };
            };
            let image = crate::image::pull::pull(&store, &reference, &options, &show)?;
            println!(
                "{}: pulled {} ({})",
                image.names.join(", "),
                image.manifest_digest,
                human_size(image.size)
            );
        }
        Command::InternalPull {
            reference,
            credentials_stdin,
        } => {
            // The agent reads the JSON lines on stdout; log lines would repeat them.
            log::set_max_level(log::LevelFilter::Warn);
            report_result((|| {
                let cfg = config::load(config_dir)?;
                let store = open_store(&cfg)?;
                let mut options = pull_options(config_dir, &cfg, &reference)?;
                if credentials_stdin {
                    options.credentials = Some(credentials_from_stdin()?);
                    options.credentials_origin = "the pod's imagePullSecrets";
                }
                let report = |digest: &crate::image::digest::Digest, done: u64, total: u64| {
                    let layer = digest.clone();
                    let event = crate::image::pull::Event::Layer { layer, done, total };
                    println!("{}", event.to_line());
                };
                Ok(crate::image::pull::pull(
                    &store, &reference, &options, &report,
                )?)
            })())?
        }
        Command::InternalUnpack { reference } => {
            log::set_max_level(log::LevelFilter::Warn);
            report_result((|| {
                let cfg = config::load(config_dir)?;
                let store = open_store(&cfg)?;
                let image = store
                    .resolve(&reference)?
                    .ok_or(crate::image::Error::NotFound { reference })?;
                store.rootfs(&image)?;
                Ok(image)
            })())?
        }
        Command::Rmi { reference } => {
            let cfg = config::load(config_dir)?;
            let store = open_store(&cfg)?;
            store.remove(&reference)?;
            println!("{reference}: removed");
        }
    }
    Ok(())
}

/// The node's image store, with the unpack limits of `nanolet.yaml`.
fn open_store(cfg: &config::NodeConfig) -> Result<crate::image::ImageStore, crate::image::Error> {
    let l = cfg.image_unpack_limits;
    let limits = crate::image::Limits {
        max_bytes: l.max_size,
        max_entries: l.max_files,
        max_path_len: l.max_path_length,
    };
    Ok(crate::image::ImageStore::open(&cfg.data_dir.join("images"))?.with_limits(limits))
}

/// The last line of `internal-pull` and `internal-unpack`: `{"image":…}` or `{"error":…}`.
fn report_result(
    result: Result<crate::image::Image, Box<dyn std::error::Error>>,
) -> Result<(), Box<dyn std::error::Error>> {
    use crate::image::pull::Event;
    match result {
        Ok(image) => {
            println!("{}", Event::Image { image }.to_line());
            Ok(())
        }
        Err(e) => {
            let error = e.to_string();
            println!("{}", Event::Error { error }.to_line());
            Err(e)
        }
    }
}

/// Pull options from the node config and `<config-dir>/config.json`.
/// The credentials the agent hands to `internal-pull --credentials-stdin`.
fn credentials_from_stdin() -> Result<crate::image::auth::Credentials, Box<dyn std::error::Error>> {
    use std::io::Read;
    let mut text = String::new();
    std::io::stdin().take(64 * 1024).read_to_string(&mut text)?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("--credentials-stdin: invalid json: {e}"))?;
    let field = |k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("--credentials-stdin: no {k:?}"))
    };
    Ok(crate::image::auth::Credentials {
        username: field("username")?,
        password: field("password")?,
    })
}

fn pull_options(
    config_dir: &Path,
    cfg: &config::NodeConfig,
    reference: &str,
) -> Result<crate::image::pull::Options, Box<dyn std::error::Error>> {
    let r = crate::image::reference::Reference::parse(reference)?;
    Ok(crate::image::pull::Options {
        platform: crate::image::Platform::host(),
        insecure_registries: cfg.insecure_registries.clone(),
        credentials: crate::image::pull::credentials_in(config_dir, &r.domain)?,
        credentials_origin: "config.json",
        retry: Default::default(),
    })
}

/// The per-layer lines of `nanolet pull` on a terminal.
#[derive(Default)]
struct ProgressBoard {
    /// Each layer reported so far, in order of first report: (digest, done, total).
    layers: Vec<(crate::image::digest::Digest, u64, u64)>,
    /// Lines drawn last time (the cursor is below them).
    drawn: usize,
}

impl ProgressBoard {
    /// Records a report; returns the text that redraws every layer's line in place.
    fn update(&mut self, digest: &crate::image::digest::Digest, done: u64, total: u64) -> String {
        match self.layers.iter_mut().find(|(d, _, _)| d == digest) {
            Some(layer) => (layer.1, layer.2) = (done, total),
            None => self.layers.push((digest.clone(), done, total)),
        }
        let mut text = match self.drawn {
            0 => String::new(),
            n => format!("\x1b[{n}A"),
        };
        for (d, done, total) in &self.layers {
            text += &format!("\r{}\x1b[K\n", progress_line(d, *done, *total));
        }
        self.drawn = self.layers.len();
        text
    }
}

/// `sha256:0123456789ab: 1.5MiB / 2.0MiB`, or `…: done 2.0MiB` once complete.
fn progress_line(digest: &crate::image::digest::Digest, done: u64, total: u64) -> String {
    if done == total {
        format!("{}: done {}", digest.short(), human_size(total))
    } else {
        format!(
            "{}: {} / {}",
            digest.short(),
            human_size(done),
            human_size(total)
        )
    }
}

/// The `internal-import` child: imports every archive and layout in `images/`, unpacks each
/// image's rootfs, and prints one line per result (the agent logs them).
fn import(config_dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let cfg = config::load(config_dir)?;
    let store = open_store(&cfg)?;
    let platform = crate::image::Platform::host();
    for (path, result) in store.import_dir(&cfg.images_path, &platform) {
        match result {
            Ok(images) => {
                for image in images {
                    match store.rootfs(&image) {
                        Ok(_) => println!(
                            "{}: imported {} ({})",
                            path.display(),
                            image.names.join(", "),
                            image.config_digest
                        ),
                        Err(e) => eprintln!("{}: {e}", path.display()),
                    }
                }
            }
            Err(e) => eprintln!("{}: {e}", path.display()),
        }
    }
    Ok(())
}

/// `nanolet shutdown`: SIGUSR1 to the running agent, then wait until it has stopped every pod
/// and exited (it gives the pods `shutdownGracePeriod`).
fn shutdown(cfg: &config::NodeConfig) -> Result<(), Box<dyn std::error::Error>> {
    let snapshot = ctl::ps::read_snapshot(&cfg.run_dir)?;
    let pid = rustix::process::Pid::from_raw(snapshot.agent_pid)
        .filter(|_| crate::sys::reaper::is_alive(snapshot.agent_pid))
        .ok_or("the agent is not running")?;
    rustix::process::kill_process(pid, rustix::process::Signal::USR1)?;
    let deadline =
        std::time::Instant::now() + cfg.shutdown_grace_period + std::time::Duration::from_secs(30);
    while crate::sys::reaper::is_alive(snapshot.agent_pid) {
        if std::time::Instant::now() > deadline {
            return Err(format!("the agent (pid {}) is still running", snapshot.agent_pid).into());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let left = ctl::ps::read_snapshot(&cfg.run_dir)
        .map(|s| s.pods.len())
        .unwrap_or(0);
    println!("nanolet stopped; {left} pod(s) left");
    Ok(())
}

/// `nanolet proxy dump`: prints the ruleset; problems go to stderr, one per line.
fn proxy_dump(config_dir: &Path, iptables: bool) -> Result<(), Box<dyn std::error::Error>> {
    let cfg = config::load(config_dir)?;
    let Some(proxy) = cfg.proxy else {
        return Err(format!(
            "config {}: no proxy section: nanolet does not proxy Services here",
            config_dir.join(config::CONFIG_FILE_NAME).display()
        )
        .into());
    };
    let (services, slices, found) = crate::proxy::source::load_dir(&proxy.services_path);
    let format = if iptables {
        crate::proxy::DumpFormat::Iptables
    } else {
        crate::proxy::DumpFormat::Nft
    };
    let (text, problems) = crate::proxy::dump(&services, &slices, &proxy.node, format);
    for p in found.iter().chain(&problems) {
        eprintln!("{p}");
    }
    print!("{text}");
    Ok(())
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn commands_parse_with_their_options() {
        let (cmd, dir) = parse(args("agent --config-dir /tmp/x")).unwrap();
        assert_eq!((cmd, dir), (Command::Agent, PathBuf::from("/tmp/x")));
        assert_eq!(
            parse(args("ps -o json")).unwrap().0,
            Command::Ps { json: true }
        );
        let (cmd, dir) = parse(args("logs web -c app -f --tail 5")).unwrap();
        assert_eq!(dir, PathBuf::from(DEFAULT_CONFIG_DIR));
        let Command::Logs(o) = cmd else {
            panic!("{cmd:?}")
        };
        assert_eq!(
            (o.pod.as_str(), o.container.as_deref(), o.follow, o.tail),
            ("web", Some("app"), true, Some(5))
        );
    }

    #[test]
    fn proxy_dump_parses_and_other_proxy_verbs_are_errors() {
        assert_eq!(parse(args("proxy dump")).unwrap().0, Command::ProxyDump);
        assert_eq!(
            parse(args("proxy dump --mode iptables")).unwrap().0,
            Command::ProxyDumpIptables
        );
        assert!(parse(args("proxy dump --mode ipvs")).is_err());
        assert!(
            parse(args("proxy flush"))
                .unwrap_err()
                .to_string()
                .contains("proxy dump")
        );
    }

    #[test]
    fn bad_command_lines_are_errors_naming_the_problem() {
        assert!(
            parse(args("frobnicate"))
                .unwrap_err()
                .to_string()
                .contains("frobnicate")
        );
        assert!(
            parse(args("logs"))
                .unwrap_err()
                .to_string()
                .contains("which pod")
        );
        assert!(
            parse(args("ps -o yaml"))
                .unwrap_err()
                .to_string()
                .contains("yaml")
        );
        assert!(parse(args("logs web --tail x")).is_err());
        for verb in ["pull", "rmi", "internal-pull", "internal-unpack"] {
            for line in [verb.to_string(), format!("{verb} a b")] {
                let e = parse(args(&line)).unwrap_err().to_string();
                assert!(e.contains("want one image"), "{line}: {e}");
            }
        }
    }

    #[test]
    fn image_commands_take_one_reference() {
        let r = || "127.0.0.1:5000/busybox:latest".to_string();
        let cases = [
            ("pull", Command::Pull { reference: r() }),
            ("rmi", Command::Rmi { reference: r() }),
            (
                "internal-pull",
                Command::InternalPull {
                    reference: r(),
                    credentials_stdin: false,
                },
            ),
            (
                "internal-unpack",
                Command::InternalUnpack { reference: r() },
            ),
        ];
        for (verb, want) in cases {
            let (cmd, dir) = parse(args(&format!("{verb} --config-dir /c {}", r()))).unwrap();
            assert_eq!((cmd, dir), (want, PathBuf::from("/c")));
        }
    }

    #[test]
    fn terminal_progress_redraws_one_line_per_layer_in_place() {
        let (a, b) = (
            crate::image::digest::Digest::of(b"a"),
            crate::image::digest::Digest::of(b"b"),
        );
        let mut board = ProgressBoard::default();
        let line = |d: &crate::image::digest::Digest, done, total| {
            format!("\r{}\x1b[K\n", progress_line(d, done, total))
        };
        assert_eq!(board.update(&a, 1024, 4096), line(&a, 1024, 4096));
        // A second layer: the cursor goes up one line, both lines are drawn.
        assert_eq!(
            board.update(&b, 0, 2048),
            format!("\x1b[1A{}{}", line(&a, 1024, 4096), line(&b, 0, 2048))
        );
        // The first layer again: same two lines, its own updated, order kept.
        assert_eq!(
            board.update(&a, 4096, 4096),
            format!("\x1b[2A{}{}", line(&a, 4096, 4096), line(&b, 0, 2048))
        );
    }

    #[test]
    fn progress_lines_name_the_layer() {
        let d = crate::image::digest::Digest::of(b"layer");
        let short = d.short();
        assert_eq!(
            progress_line(&d, 1536, 2048),
            format!("{short}: 1.5KiB / 2.0KiB")
        );
        assert_eq!(
            progress_line(&d, 2048, 2048),
            format!("{short}: done 2.0KiB")
        );
    }
}
