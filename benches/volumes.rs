//! What volumes cost at pod start: the same busybox pod started through the agent with and
//! without five volumes (a configMap with three keys, a secret on tmpfs, a downwardAPI volume,
//! an emptyDir and a subPath mount into it), interleaved, as a ratio measured in the same run.
//!
//! `cargo bench --bench volumes` (root, runc). It reuses the foundation bench's lab (its own
//! folder, `/tmp/nanolet-volumes-bench` unless `NANOLET_BENCH_DIR` says otherwise).

#[allow(dead_code)]
#[path = "../tests/common/busybox.rs"]
mod busybox;
#[allow(dead_code)]
#[path = "foundation/lab.rs"]
mod lab;
#[allow(dead_code)]
#[path = "foundation/procfs.rs"]
mod procfs;
#[allow(dead_code)]
#[path = "foundation/report.rs"]
mod report;

use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use lab::{Error, Lab};
use report::{Row, median, millis};

const ITERATIONS: usize = 10;
const COMMAND: &str = "echo started; exec sleep 1000";

fn main() -> ExitCode {
    // `cargo test --benches` runs benches with `--bench`-less arguments: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return ExitCode::SUCCESS;
    }
    if !rustix::process::geteuid().is_root() {
        println!("not root: the volumes bench needs root and runc; nothing measured");
        return ExitCode::SUCCESS;
    }
    match bench() {
        Ok(row) => {
            println!("{}", report::table(std::slice::from_ref(&row)));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("volumes bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn manifest(name: &str, with_volumes: bool) -> String {
    let volumes = if with_volumes {
        "  volumes:\n    - {name: cfg, configMap: {name: bench-config}}\n    - {name: sec, secret: {secretName: bench-secret}}\n    - name: info\n      downwardAPI:\n        items: [{path: labels, fieldRef: {fieldPath: metadata.labels}}]\n    - {name: scratch, emptyDir: {}}\n"
    } else {
        ""
    };
    let mounts = if with_volumes {
        "      volumeMounts:\n        - {name: cfg, mountPath: /cfg}\n        - {name: sec, mountPath: /sec}\n        - {name: info, mountPath: /info}\n        - {name: scratch, mountPath: /scratch}\n        - {name: scratch, mountPath: /logs, subPath: logs}\n"
    } else {
        ""
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: bench}}\nspec:\n  terminationGracePeriodSeconds: 0\n{volumes}  containers:\n    - name: app\n      image: busybox:latest\n      imagePullPolicy: IfNotPresent\n      command: [\"sh\", \"-c\", {COMMAND:?}]\n{mounts}"
    )
}

fn start_and_stop(lab: &Lab, name: &str, with_volumes: bool) -> Result<Duration, Error> {
    lab.start_and_stop(name, &manifest(name, with_volumes))
}

fn bench() -> Result<Row, Error> {
    let agent_exe = std::env::var_os("NANOLET_BENCH_AGENT")
        .map_or(PathBuf::from(env!("CARGO_BIN_EXE_nanolet")), PathBuf::from);
    let base = std::env::var_os("NANOLET_BENCH_DIR")
        .map_or(PathBuf::from("/tmp/nanolet-volumes-bench"), PathBuf::from);
    let mut lab = Lab::create(&base, &agent_exe, None)?;
    for (dir, file, text) in [
        (
            "cfg/configmaps",
            "bench-config.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bench-config}\ndata: {a: one, b: two, c: three}\n",
        ),
        (
            "cfg/secrets",
            "bench-secret.yaml",
            "apiVersion: v1\nkind: Secret\nmetadata: {name: bench-secret}\ndata: {password: aHVudGVyMg==}\n",
        ),
    ] {
        let dir = base.join(dir);
        fs::create_dir_all(&dir).map_err(lab::io_err(format!("creating {}", dir.display())))?;
        fs::write(dir.join(file), text).map_err(lab::io_err(format!("writing {file}")))?;
    }
    lab.start_agent()?;
    start_and_stop(&lab, "warmup", true)?;
    let (mut plain, mut with) = (Vec::new(), Vec::new());
    for i in 1..=ITERATIONS {
        let p = start_and_stop(&lab, &format!("plain-{i}"), false)?;
        let v = start_and_stop(&lab, &format!("volumes-{i}"), true)?;
        eprintln!(
            "start {i}/{ITERATIONS}: without volumes {}, with five {}",
            millis(p),
            millis(v)
        );
        plain.push(p);
        with.push(v);
    }
    drop(lab);
    let (v, p) = (median(&with), median(&plain));
    Ok(Row {
        metric: format!("pod start with five volumes (median of {ITERATIONS})"),
        nanolet: v.map_or("-".to_string(), millis),
        baseline: format!("without volumes {}", p.map_or("-".to_string(), millis)),
        ratio: v
            .zip(p)
            .filter(|(_, p)| !p.is_zero())
            .map(|(v, p)| v.as_secs_f64() / p.as_secs_f64()),
        target: 1.2,
        note: "configMap, secret (tmpfs), downwardAPI, emptyDir and a subPath bind".to_string(),
    })
}
