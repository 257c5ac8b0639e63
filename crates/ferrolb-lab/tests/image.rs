//! The container image, built and run here (root; skips otherwise): `scripts/image.sh` builds it
//! (once per run of this file), and its entrypoint runs from the image's own root filesystem with
//! runc — the OCI runtime containerd uses under Kubernetes — configured from the security context
//! in our manifests (`deploy/controller.yaml`, `deploy/agent.yaml`; tests/ship.rs checks the
//! chart renders the same): user, capabilities, read-only root, no privilege escalation.
//!
//! - the CLI (`--help` as the image's default command, `--version`, `crds`, `plan`) as the
//!   controller's non-root user with no capabilities;
//! - an agent with the DaemonSet's context (uid 0, only NET_RAW and NET_ADMIN, host network = a
//!   node namespace) answering ARP for a held address, seen by the kernel's `arping` in a client
//!   namespace;
//! - the Dockerfile describes the same image (entrypoint, cmd, user, labels, files) and its build
//!   context holds every file the build reads.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use ferrolb_lab::harness::{arping_macs, scenario, AgentSpec, Proc, TestCluster};
use ferrolb_lab::netns;
use serde::Deserialize as _;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_ferrolb");
const VIP4: &str = "198.51.100.10";
/// A CA certificate for the agent's kubeconfig (never used: the stand-in speaks plain HTTP). In
/// a cluster the client trusts the CA Kubernetes mounts with the service-account token; the
/// image has no system CA bundle, and without a configured CA the client refuses to start
/// ("No CA certificates were loaded from the system") even for an http:// server.
const KUBECONFIG_CA: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBwjCCAWegAwIBAgIUbFTx/HGUgDbR59WVsOrJoBh0APIwCgYIKoZIzj0EAwIw\n\
NTEzMDEGA1UEAwwqZmVycm9sYiBpbWFnZSB0ZXN0IENBIChuZXZlciB1c2VkIGZv\n\
ciBUTFMpMCAXDTI2MTIwNDE4MjkyMVoYDzIxMjYxMTEwMTgyOTIxWjA1MTMwMQYD\n\
VQQDDCpmZXJyb2xiIGltYWdlIHRlc3QgQ0EgKG5ldmVyIHVzZWQgZm9yIFRMUykw\n\
WTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAASpBG2zBrbsHRRRIITDRBB4zroH7GZd\n\
UgbeBzVYWUWIhQ/3u2BiY2VpAzWMeVdiTQutEi6gUQ/7PgG2jgJeL4QFo1MwUTAd\n\
BgNVHQ4EFgQUwZVTtB5vZdJ0uO6dOt6SgMw5HsUwHwYDVR0jBBgwFoAUwZVTtB5v\n\
ZdJ0uO6dOt6SgMw5HsUwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNJADBG\n\
AiEAvcuvYv+eC1jaDxheFzkoqG+m12gzJbhRbf8OdIfnflUCIQDo+4nO4xjGKo8Y\n\
XhnHHyPbHWQAmhjg4CtEAzY2YIAmTg==\n\
-----END CERTIFICATE-----\n\
";

/// The issue's limit for the image (the OCI archive, layers compressed).
const MAX_IMAGE_BYTES: u64 = 40 * 1000 * 1000;

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .canonicalize()
        .expect("repository root")
}

fn skip() -> bool {
    if !netns::is_root() {
        eprintln!("skipped: needs root (buildah, runc and network namespaces)");
        return true;
    }
    if Command::new("runc").arg("--version").output().is_err() {
        eprintln!("skipped: no runc (apt-get install runc; scripts/test.sh installs it)");
        return true;
    }
    false
}

fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

fn stdout(cmd: &mut Command) -> anyhow::Result<String> {
    Ok(String::from_utf8(run(cmd)?.stdout)?.trim().to_string())
}

/// What `scripts/image.sh` produced.
#[derive(Debug, Clone)]
struct Built {
    archive: PathBuf,
    digest: String,
    /// The static binary that went into the image.
    binary: PathBuf,
}

/// Builds the image once per run of this test file (the other tests wait for it).
fn built() -> anyhow::Result<Built> {
    static BUILT: OnceLock<Result<Built, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!("scripts/image.sh: {e}"))
}

fn build() -> anyhow::Result<Built> {
    let archive = repo().join("target/image/ferrolb-oci.tar");
    let out = run(Command::new(repo().join("scripts/image.sh"))
        .arg("--out")
        .arg(&archive)
        .current_dir(repo()))?;
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    let triple = stdout(Command::new("rustc").arg("-vV"))?
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .context("rustc host triple")?;
    Ok(Built {
        digest: std::fs::read_to_string(archive.with_extension("tar.digest"))?
            .trim()
            .to_string(),
        binary: repo().join(format!("target/image/{triple}/image/ferrolb")),
        archive,
    })
}

/// The image, imported from the OCI archive into a buildah working container and mounted: its
/// root filesystem at `rootfs`. Unmounted and removed on drop.
struct Mounted {
    ctr: String,
    rootfs: PathBuf,
    /// The image's OCI config (`config` of the image configuration).
    config: Value,
}

impl Mounted {
    fn new(b: &Built) -> anyhow::Result<Mounted> {
        let image = format!("oci-archive:{}", b.archive.display());
        let ctr =
            stdout(Command::new("buildah").args(["from", "--quiet", "--pull-always", &image]))?;
        let mut m = Mounted {
            ctr,
            rootfs: PathBuf::new(),
            config: Value::Null,
        };
        m.rootfs = PathBuf::from(stdout(Command::new("buildah").args(["mount", &m.ctr]))?);
        let inspect: Value = serde_json::from_str(&stdout(Command::new("buildah").args([
            "inspect",
            "--type",
            "container",
            &m.ctr,
        ]))?)?;
        m.config = inspect["OCIv1"]["config"].clone();
        ensure!(m.config.is_object(), "no OCI config in {inspect}");
        Ok(m)
    }

    /// The image's entrypoint followed by `args` (or by its default command when empty).
    fn argv(&self, args: &[&str]) -> Vec<String> {
        let list = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        };
        let mut v = list(&self.config["Entrypoint"]);
        if args.is_empty() {
            v.extend(list(&self.config["Cmd"]));
        } else {
            v.extend(args.iter().map(|s| s.to_string()));
        }
        v
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("buildah").args(["umount", &self.ctr]).output();
        let _ = Command::new("buildah").args(["rm", &self.ctr]).output();
    }
}

/// The parts of a Kubernetes security context that decide how the process runs.
#[derive(Debug, Clone)]
struct SecurityContext {
    uid: u32,
    gid: Option<u32>,
    /// Capabilities added after `drop: [ALL]`, as `CAP_…`.
    caps: Vec<String>,
    read_only_root: bool,
    no_new_privs: bool,
    /// `seccompProfile: {type: RuntimeDefault}`.
    seccomp_runtime_default: bool,
}

/// The security context of the first container of the workload in `deploy/<file>` (the pod's
/// merged with the container's, the container's winning, as Kubernetes does).
fn security_context(file: &str) -> anyhow::Result<SecurityContext> {
    let text = std::fs::read_to_string(repo().join("deploy").join(file))?;
    let obj: Value = serde_yaml::from_str(&text)?;
    let pod = &obj["spec"]["template"]["spec"]["securityContext"];
    let c = &obj["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    let field = |k: &str| -> &Value {
        if c[k].is_null() {
            &pod[k]
        } else {
            &c[k]
        }
    };
    let uid = field("runAsUser")
        .as_u64()
        .context("runAsUser is set in the manifest")? as u32;
    let gid = field("runAsGroup").as_u64().map(|g| g as u32);
    let drop: Vec<&str> = c["capabilities"]["drop"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    ensure!(
        drop == ["ALL"],
        "{file}: capabilities.drop is {drop:?}, not [ALL]"
    );
    let caps = c["capabilities"]["add"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|s| format!("CAP_{s}"))
        .collect();
    Ok(SecurityContext {
        uid,
        gid,
        caps,
        read_only_root: c["readOnlyRootFilesystem"] == true,
        no_new_privs: c["allowPrivilegeEscalation"] == false,
        seccomp_runtime_default: field("seccompProfile")["type"] == "RuntimeDefault",
    })
}

/// The container runtime's default seccomp profile (what `RuntimeDefault` means): the one of
/// Debian's containers-common (a buildah dependency; Docker's and Podman's default, which
/// containerd's is derived from), turned from its own format into the OCI runtime spec's for a
/// process with `caps` — rules apply by the capabilities and architecture they include/exclude.
fn runtime_default_seccomp(caps: &[String]) -> anyhow::Result<Value> {
    const PROFILE: &str = "/usr/share/containers/seccomp.json";
    let p: Value = serde_json::from_str(
        &std::fs::read_to_string(PROFILE).with_context(|| format!("reading {PROFILE}"))?,
    )?;
    let (goarch, scmp) = match std::env::consts::ARCH {
        "x86_64" => ("amd64", "SCMP_ARCH_X86_64"),
        "aarch64" => ("arm64", "SCMP_ARCH_AARCH64"),
        other => bail!("no seccomp architecture for {other}"),
    };
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    };
    let mut arches = vec![scmp.to_string()];
    for m in p["archMap"].as_array().into_iter().flatten() {
        if m["architecture"] == scmp {
            arches.extend(strs(&m["subArchitectures"]));
        }
    }
    let mut rules = Vec::new();
    for r in p["syscalls"].as_array().context("syscalls")? {
        let (inc, exc) = (&r["includes"], &r["excludes"]);
        let inc_arches = strs(&inc["arches"]);
        let applies = strs(&inc["caps"]).iter().all(|c| caps.contains(c))
            && (inc_arches.is_empty() || inc_arches.iter().any(|a| a == goarch))
            && !strs(&exc["caps"]).iter().any(|c| caps.contains(c))
            && !strs(&exc["arches"]).iter().any(|a| a == goarch);
        if !applies {
            continue;
        }
        let mut rule = json!({"names": r["names"], "action": r["action"],
                              "args": if r["args"].is_array() { r["args"].clone() } else { json!([]) }});
        if let Some(e) = r["errnoRet"].as_u64() {
            rule["errnoRet"] = json!(e);
        }
        rules.push(rule);
    }
    ensure!(
        rules.len() > 10,
        "{PROFILE}: only {} rules apply",
        rules.len()
    );
    let mut profile = json!({"defaultAction": p["defaultAction"], "architectures": arches,
                             "syscalls": rules});
    if let Some(e) = p["defaultErrnoRet"].as_u64() {
        profile["defaultErrnoRet"] = json!(e);
    }
    Ok(profile)
}

/// The primary group the runtime gives `uid` when the manifest sets none: the image's
/// /etc/passwd entry (containerd does the same), else 0.
fn passwd_gid(rootfs: &Path, uid: u32) -> u32 {
    std::fs::read_to_string(rootfs.join("etc/passwd"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && f[2] == uid.to_string()).then(|| f[3].parse().ok())?
        })
        .unwrap_or(0)
}

/// A runc bundle for one process from the mounted image: `runc spec`'s defaults (the usual
/// container mounts, masked paths, namespaces) with the security context applied. With
/// `host_netns` (a path) the container joins that network namespace instead of getting its own,
/// as a `hostNetwork: true` pod joins the node's.
/// `binds`: host paths mounted read-only at the same path.
fn bundle(
    dir: &Path,
    m: &Mounted,
    argv: &[String],
    sc: &SecurityContext,
    host_netns: Option<&Path>,
    binds: &[&Path],
) -> anyhow::Result<PathBuf> {
    static N: AtomicU32 = AtomicU32::new(0);
    let b = dir.join(format!("bundle-{}", N.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&b)?;
    run(Command::new("runc").arg("spec").arg("--bundle").arg(&b))?;
    let path = b.join("config.json");
    let mut spec: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let p = &mut spec["process"];
    p["terminal"] = json!(false);
    p["args"] = json!(argv);
    let mut env = vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()];
    env.extend(
        m.config["Env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(String::from)),
    );
    p["env"] = json!(env);
    p["cwd"] = json!("/");
    p["user"] =
        json!({"uid": sc.uid, "gid": sc.gid.unwrap_or_else(|| passwd_gid(&m.rootfs, sc.uid))});
    // containerd (since 1.6.18) leaves the inheritable set empty; no ambient capabilities.
    p["capabilities"] = json!({"bounding": sc.caps, "effective": sc.caps, "permitted": sc.caps,
                               "inheritable": [], "ambient": []});
    p["noNewPrivileges"] = json!(sc.no_new_privs);
    spec["root"] = json!({"path": m.rootfs, "readonly": sc.read_only_root});
    if sc.seccomp_runtime_default {
        spec["linux"]["seccomp"] = runtime_default_seccomp(&sc.caps)?;
    }
    if let Some(path) = host_netns {
        if let Some(ns) = spec["linux"]["namespaces"].as_array_mut() {
            ns.retain(|n| n["type"] != "network");
            ns.push(json!({"type": "network", "path": path}));
        }
    }
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        for p in binds {
            mounts.push(json!({"destination": p, "type": "bind", "source": p,
                               "options": ["rbind", "ro"]}));
        }
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
    Ok(b)
}

/// A container id unique to this process.
fn container_id(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "flt{}-{what}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `runc run` to completion: (exit code, stdout, stderr).
fn run_to_end(bundle: &Path, id: &str) -> anyhow::Result<(Option<i32>, String, String)> {
    let out = Command::new("runc")
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .output()
        .context("runc run")?;
    let _ = Command::new("runc")
        .args(["delete", "--force", id])
        .output();
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `runc delete --force` on drop (a container outlives a killed `runc run`).
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .args(["delete", "--force", &self.0])
            .output();
    }
}

/// The ELF program header types of a file (PT_INTERP = 3 marks a dynamically linked program).
fn elf_program_headers(bytes: &[u8]) -> anyhow::Result<Vec<u32>> {
    ensure!(
        bytes.len() > 64 && &bytes[..4] == b"\x7fELF",
        "not an ELF file"
    );
    ensure!(
        bytes[4] == 2 && bytes[5] == 1,
        "not a little-endian 64-bit ELF"
    );
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into()?) as usize;
    let (size, num) = (u16_at(0x36), u16_at(0x38));
    (0..num)
        .map(|i| {
            let o = phoff + i * size;
            let t = bytes
                .get(o..o + 4)
                .context("program header out of bounds")?;
            Ok(u32::from_le_bytes(t.try_into()?))
        })
        .collect()
}

/// Regular files under `root`: path (from `/`) → (mode bits, uid, gid).
fn files(root: &Path) -> anyhow::Result<BTreeMap<String, (u32, u32, u32)>> {
    fn walk(
        root: &Path,
        dir: &Path,
        out: &mut BTreeMap<String, (u32, u32, u32)>,
    ) -> anyhow::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let md = std::fs::symlink_metadata(e.path())?;
            if md.is_dir() {
                walk(root, &e.path(), out)?;
            } else {
                let rel = e.path().strip_prefix(root)?.to_string_lossy().into_owned();
                out.insert(format!("/{rel}"), (md.mode() & 0o7777, md.uid(), md.gid()));
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

#[test]
fn image_is_static_small_labelled_and_needs_only_its_files() -> anyhow::Result<()> {
    if skip() {
        return Ok(());
    }
    let b = built()?;
    let size = std::fs::metadata(&b.archive)?.len();
    eprintln!("image: {} bytes (OCI archive), digest {}", size, b.digest);
    assert!(size < MAX_IMAGE_BYTES, "image is {size} bytes");
    assert!(
        b.digest.starts_with("sha256:") && b.digest.len() == 71,
        "{}",
        b.digest
    );
    // The archive's index names the manifest whose digest image.sh printed.
    let listing = stdout(
        Command::new("tar")
            .arg("-xOf")
            .arg(&b.archive)
            .arg("index.json"),
    )?;
    let index: Value = serde_json::from_str(&listing)?;
    assert_eq!(index["manifests"][0]["digest"], json!(b.digest), "{index}");

    let m = Mounted::new(&b)?;
    // The binary in the image is the one image.sh built, and it is static: no program
    // interpreter (the image has no ld.so and no libc to load).
    let inside = std::fs::read(m.rootfs.join("usr/local/bin/ferrolb"))?;
    assert!(
        inside == std::fs::read(&b.binary)?,
        "the image holds another binary"
    );
    let headers = elf_program_headers(&inside)?;
    assert!(
        !headers.contains(&3),
        "PT_INTERP in {headers:?}: dynamically linked"
    );

    // Labels: version from the binary, revision from git, a source.
    let labels = &m.config["Labels"];
    let version = stdout(Command::new(BIN).arg("--version"))?;
    assert_eq!(
        format!(
            "ferrolb {}",
            labels["org.opencontainers.image.version"]
                .as_str()
                .unwrap_or("")
        ),
        version
    );
    let head = stdout(
        Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(repo()),
    )?;
    let revision = labels["org.opencontainers.image.revision"]
        .as_str()
        .unwrap_or_default();
    assert!(
        revision == head || revision == format!("{head}-dirty"),
        "revision label {revision:?}, HEAD {head}"
    );
    assert!(labels["org.opencontainers.image.source"]
        .as_str()
        .is_some_and(|s| s.starts_with("https://") || s.starts_with("git@")));

    // Nothing but the binary and the two /etc files: no shell, no CA bundle, no nsswitch.conf.
    let f = files(&m.rootfs)?;
    assert_eq!(
        f.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([
            "/etc/group".to_string(),
            "/etc/passwd".to_string(),
            "/usr/local/bin/ferrolb".to_string()
        ]),
        "{f:?}"
    );
    Ok(())
}

/// Instructions of the Dockerfile's last stage, continuation lines joined, comments dropped.
fn dockerfile_final_stage(text: &str) -> Vec<(String, String)> {
    let mut joined: Vec<String> = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        if let Some(body) = t.strip_suffix('\\') {
            cur.push_str(body);
            cur.push(' ');
        } else {
            cur.push_str(t);
            joined.push(std::mem::take(&mut cur));
        }
    }
    let start = joined
        .iter()
        .rposition(|l| l.to_ascii_uppercase().starts_with("FROM "))
        .unwrap_or(0);
    joined[start..]
        .iter()
        .filter_map(|l| {
            let (i, rest) = l.split_once(char::is_whitespace)?;
            Some((i.to_ascii_uppercase(), rest.trim().to_string()))
        })
        .collect()
}

/// Shell-like words: whitespace-separated, double quotes grouping (and removed).
fn words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut any) = (false, false);
    for ch in s.chars() {
        match ch {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

#[test]
fn dockerfile_describes_the_image_image_sh_builds() -> anyhow::Result<()> {
    if skip() {
        return Ok(());
    }
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile"))?;
    let stage = dockerfile_final_stage(&dockerfile);
    assert_eq!(stage[0], ("FROM".into(), "scratch".into()), "{stage:?}");
    let one = |i: &str| -> Option<&String> {
        let v: Vec<_> = stage.iter().filter(|(k, _)| k == i).collect();
        assert!(v.len() <= 1, "several {i} in the final stage");
        v.first().map(|(_, v)| v)
    };
    let args: BTreeMap<String, String> = stage
        .iter()
        .filter(|(k, _)| k == "ARG")
        .filter_map(|(_, v)| v.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut labels = BTreeMap::new();
    for (_, v) in stage.iter().filter(|(k, _)| k == "LABEL") {
        for w in words(v) {
            let (k, v) = w.split_once('=').context("LABEL key=value")?;
            labels.insert(k.to_string(), v.to_string());
        }
    }
    // Files: COPY [--from=…] [--chown=U:G] [--chmod=MODE] SRC DEST.
    let mut copied = BTreeMap::new();
    for (_, v) in stage.iter().filter(|(k, _)| k == "COPY") {
        let w = words(v);
        let flag = |f: &str| {
            w.iter()
                .find_map(|x| x.strip_prefix(&format!("--{f}=")).map(String::from))
        };
        let chown = flag("chown").context("COPY without --chown")?;
        let (u, g) = chown.split_once(':').context("chown U:G")?;
        let mode = u32::from_str_radix(&flag("chmod").context("COPY without --chmod")?, 8)?;
        let plain: Vec<&String> = w.iter().filter(|x| !x.starts_with("--")).collect();
        ensure!(plain.len() == 2, "COPY {v}: one source, one destination");
        if flag("from").is_none() {
            // A file from the build context: the same one image.sh copies.
            let script = std::fs::read_to_string(repo().join("scripts/image.sh"))?;
            ensure!(
                script.contains(&format!("{} {}", plain[0], plain[1])),
                "image.sh does not copy {} to {}",
                plain[0],
                plain[1]
            );
        }
        copied.insert(
            plain[1].clone(),
            (mode, u.parse::<u32>()?, g.parse::<u32>()?),
        );
    }

    let b = built()?;
    let m = Mounted::new(&b)?;
    let c = &m.config;
    let list = |v: &Value| serde_json::to_string(v).unwrap_or_default();
    assert_eq!(
        one("ENTRYPOINT").map(|s| s.replace(' ', "")),
        Some(list(&c["Entrypoint"]))
    );
    assert_eq!(
        one("CMD").map(|s| s.replace(' ', "")),
        Some(list(&c["Cmd"]))
    );
    assert_eq!(one("USER").map(String::as_str), c["User"].as_str());
    assert_eq!(files(&m.rootfs)?, copied, "files and their modes/owners");
    // Labels: the same keys; fixed values equal; ARG-valued ones only where the argument's
    // default must match (the version).
    let got: BTreeMap<String, String> = c["Labels"]
        .as_object()
        .context("labels")?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect();
    assert_eq!(
        labels.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>()
    );
    for (k, v) in &labels {
        match v.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
            Some("VERSION") => assert_eq!(args.get("VERSION"), got.get(k), "ARG VERSION default"),
            Some(arg) => assert!(
                args.contains_key(arg),
                "LABEL {k} uses undeclared ARG {arg}"
            ),
            None => assert_eq!(Some(v), got.get(k), "label {k}"),
        }
    }
    // Both recipes build the binary the same way.
    let script = std::fs::read_to_string(repo().join("scripts/image.sh"))?;
    for needle in [
        "RUSTFLAGS=\"-C target-feature=+crt-static\"",
        "--profile image",
        "--target-dir target/image",
        "-p ferrolb-lab --bin ferrolb",
    ] {
        assert!(dockerfile.contains(needle), "Dockerfile lacks {needle}");
        assert!(script.contains(needle), "image.sh lacks {needle}");
    }
    Ok(())
}

/// Whether `.dockerignore` (its simple forms: `dir/`, `dir/*`, `**/*suffix`, `!…`) leaves `path`
/// out of the build context; the last matching line wins, as in docker.
fn dockerignored(rules: &str, path: &str) -> bool {
    let mut ignored = false;
    for line in rules.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (neg, pat) = match line.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, line),
        };
        let hit = if let Some(suffix) = pat.strip_prefix("**/*") {
            path.ends_with(suffix)
        } else if let Some(dir) = pat.strip_suffix("/*").or(pat.strip_suffix('/')) {
            path.starts_with(&format!("{dir}/"))
        } else {
            path == pat
        };
        if hit {
            ignored = !neg;
        }
    }
    ignored
}

#[test]
fn docker_build_context_holds_what_the_build_reads() -> anyhow::Result<()> {
    let rules = std::fs::read_to_string(repo().join(".dockerignore"))?;
    assert!(dockerignored(&rules, "target/debug/ferrolb"));
    assert!(dockerignored(&rules, "examples/apps/apps.yaml"));
    // Files pulled into the binary by include_str!/include_bytes!, the Dockerfile's COPY
    // sources and the workspace manifests must all be in the context.
    let mut needed = vec![
        "Cargo.toml".to_string(),
        "Cargo.lock".to_string(),
        "scripts/image-rootfs/etc/passwd".to_string(),
        "scripts/image-rootfs/etc/group".to_string(),
    ];
    let re = regex::Regex::new(r#"include_(?:str|bytes)!\(\s*"([^"]+)"\s*\)"#)?;
    let mut stack = vec![repo().join("crates")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                if !p.ends_with("tests") {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p)?;
                for cap in re.captures_iter(&text) {
                    let target = p.parent().context("parent")?.join(&cap[1]).canonicalize()?;
                    needed.push(target.strip_prefix(repo())?.to_string_lossy().into_owned());
                }
            }
        }
    }
    assert!(needed.len() > 4, "found no include_str! at all: {needed:?}");
    for n in &needed {
        assert!(repo().join(n).exists(), "{n}");
        assert!(!dockerignored(&rules, n), ".dockerignore leaves out {n}");
    }
    Ok(())
}

#[test]
fn cli_runs_from_the_image_as_the_controller_runs() -> anyhow::Result<()> {
    if skip() {
        return Ok(());
    }
    let b = built()?;
    let m = Mounted::new(&b)?;
    let sc = security_context("controller.yaml")?;
    assert_eq!(sc.uid, 65532);
    assert!(
        sc.caps.is_empty() && sc.read_only_root && sc.no_new_privs,
        "{sc:?}"
    );
    let dir = tempfile::tempdir()?;
    let examples = repo().join("examples");
    let cli = |args: &[&str]| -> anyhow::Result<String> {
        let argv = m.argv(args);
        let bun = bundle(dir.path(), &m, &argv, &sc, None, &[&examples])?;
        let (code, out, err) = run_to_end(&bun, &container_id("cli"))?;
        ensure!(code == Some(0), "{argv:?} exited {code:?}:\n{out}\n{err}");
        Ok(out)
    };
    // The image's default command (`--help`).
    let help = cli(&[])?;
    assert!(help.contains("Usage:") && help.contains("agent"), "{help}");
    // The same answers as the binary built by cargo for the tests.
    let host = |args: &[&str]| stdout(Command::new(BIN).args(args).current_dir(repo()));
    assert_eq!(cli(&["--version"])?.trim(), host(&["--version"])?);
    assert_eq!(cli(&["crds"])?.trim(), host(&["crds"])?);
    let ex = examples.join("dual-stack/dual-stack.yaml");
    let ex = ex.to_str().context("path")?;
    let plan = cli(&["plan", "-f", ex, "-o", "json"])?;
    let v: Value = serde_json::from_str(&plan).with_context(|| plan.clone())?;
    assert!(v.is_object() || v.is_array(), "{v}");
    assert_eq!(plan.trim(), host(&["plan", "-f", ex, "-o", "json"])?);
    Ok(())
}

/// Capability names as bits of /proc/PID/status's Cap* masks.
fn cap_mask(caps: &[String]) -> u64 {
    caps.iter()
        .map(|c| match c.as_str() {
            "CAP_NET_ADMIN" => 1u64 << 12,
            "CAP_NET_RAW" => 1 << 13,
            other => panic!("add {other} to cap_mask"),
        })
        .fold(0, |a, b| a | b)
}

#[test]
fn agent_from_the_image_with_the_daemonsets_security_context_answers_arp() -> anyhow::Result<()> {
    if skip() {
        return Ok(());
    }
    let b = built()?;
    let m = Mounted::new(&b)?;
    let sc = security_context("agent.yaml")?;
    assert_eq!(sc.uid, 0, "{sc:?}");
    let dir = tempfile::tempdir()?;
    let mut c = TestCluster::new(Path::new(BIN), dir.path(), "img", &[("n1", &[])])?;
    let id = container_id("agent");
    let _ctr = Container(id.clone());
    scenario(&mut c, |c| {
        c.policy("all", json!({"loadBalancerIPs": true}))?;
        c.service("web", &[VIP4])?;
        // The agent as the tests start it (AgentSpec), but from the image: runc puts it into the
        // node's network namespace (hostNetwork), the kubeconfig mounted read-only. (runc runs
        // in our own mount namespace: `ip netns exec` would hide the cgroup mounts it needs.)
        let kubeconfig = c.kubeconfig("n1")?;
        let ca = c.dir.join("ca.crt");
        std::fs::write(&ca, KUBECONFIG_CA)?;
        let text = std::fs::read_to_string(&kubeconfig)?;
        let server = format!("    server: {}\n", ferrolb_lab::harness::API_URL);
        ensure!(text.contains(&server), "{text}");
        std::fs::write(
            &kubeconfig,
            text.replace(
                &server,
                &format!("{server}    certificate-authority: {}\n", ca.display()),
            ),
        )?;
        let spec = AgentSpec::new("n1", &kubeconfig, &format!("{}:9464", c.node_addr("n1")));
        let argv = m.argv(&spec.args().iter().map(String::as_str).collect::<Vec<_>>());
        let netns = PathBuf::from("/run/netns").join(c.node_ns("n1").name());
        let bun = bundle(&c.dir, &m, &argv, &sc, Some(&netns), &[c.dir.as_path()])?;
        let mut p = Proc::spawn(
            "n1",
            None,
            Path::new("runc"),
            &[
                "run".into(),
                "--bundle".into(),
                bun.to_string_lossy().into_owned(),
                id.clone(),
            ],
            &[],
            &c.dir.join("n1.log"),
        )?;
        p.wait_log("agent ready", Duration::from_secs(30))?;
        c.agents.insert("n1".into(), p);

        // The process runs as the manifest says: uid 0, exactly NET_RAW + NET_ADMIN in every
        // set that matters, no privilege escalation, a read-only root.
        let state: Value =
            serde_json::from_str(&stdout(Command::new("runc").args(["state", &id]))?)?;
        let pid = state["pid"].as_u64().context("container pid")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |k: &str| -> String {
            status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{k}:")))
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        let want = cap_mask(&sc.caps);
        assert_eq!(want, 0x3000);
        for set in ["CapEff", "CapPrm", "CapBnd"] {
            assert_eq!(
                u64::from_str_radix(&field(set), 16)?,
                want,
                "{set}: {status}"
            );
        }
        for set in ["CapInh", "CapAmb"] {
            assert_eq!(u64::from_str_radix(&field(set), 16)?, 0, "{set}");
        }
        assert_eq!(field("NoNewPrivs"), "1");
        assert!(field("Uid").split_whitespace().all(|u| u == "0"));
        let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
        let root = mountinfo
            .lines()
            .rev()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.get(4) == Some(&"/"))
            .context("a / mount")?;
        assert!(
            root[5].split(',').any(|o| o == "ro"),
            "root mounted {}",
            root[5]
        );

        // And it answers ARP for the held address: only node n1's MAC, seen by the kernel's
        // arping from the client namespace.
        let macs = c.wait_arp_answer(VIP4, Duration::from_secs(20))?;
        assert_eq!(macs, BTreeSet::from([c.macs["n1"].clone()]));
        let again = arping_macs(c.client(), "eth0", VIP4, 2)?;
        assert_eq!(again, macs);
        let leases = c.leases()?;
        assert_eq!(leases.len(), 1, "{leases:#?}");
        assert_eq!(leases[0]["spec"]["holderIdentity"], "n1");
        Ok(())
    })
}

/// The images of the chart's (rendered with Helm's engine, charts/helm-template.py) workloads.
fn chart_images(values: Option<&Path>) -> anyhow::Result<BTreeSet<String>> {
    let mut cmd = Command::new("python3");
    cmd.arg("charts/helm-template.py")
        .arg("charts/ferrolb")
        .current_dir(repo());
    if let Some(v) = values {
        cmd.arg("-f").arg(v);
    }
    let out = cmd.output()?;
    ensure!(
        out.status.code() != Some(3),
        "helm-python-sdk is missing: `pip install helm-python-sdk==0.2.2` (scripts/test.sh installs it)"
    );
    ensure!(
        out.status.success(),
        "chart rendering failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let mut images = BTreeSet::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc)?;
        for c in v["spec"]["template"]["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            images.insert(format!(
                "{}/{}",
                v["kind"].as_str().unwrap_or(""),
                c["image"].as_str().unwrap_or("")
            ));
        }
    }
    Ok(images)
}

#[test]
fn chart_and_kustomize_name_one_image() -> anyhow::Result<()> {
    // deploy/: both workloads name the image `ferrolb`, which kustomization.yaml's one `images`
    // entry maps to the real reference.
    let k: Value = serde_yaml::from_str(&std::fs::read_to_string(
        repo().join("deploy/kustomization.yaml"),
    )?)?;
    let images = k["images"].as_array().context("images")?;
    assert_eq!(images.len(), 1, "{images:?}");
    assert_eq!(images[0]["name"], "ferrolb");
    for f in ["agent.yaml", "controller.yaml"] {
        let w: Value =
            serde_yaml::from_str(&std::fs::read_to_string(repo().join("deploy").join(f))?)?;
        assert_eq!(
            w["spec"]["template"]["spec"]["containers"][0]["image"], "ferrolb",
            "{f}"
        );
    }
    let kust = format!(
        "{}:{}",
        images[0]["newName"].as_str().context("newName")?,
        images[0]["newTag"].as_str().context("newTag")?
    );
    // The binary's version is the default tag of both.
    let version = stdout(Command::new(BIN).arg("--version"))?;
    assert_eq!(
        format!("ferrolb {}", images[0]["newTag"].as_str().unwrap_or("")),
        version
    );
    // The chart by default: the same reference for both workloads.
    assert_eq!(
        chart_images(None)?,
        BTreeSet::from([format!("Deployment/{kust}"), format!("DaemonSet/{kust}")])
    );
    // One value set changes both; a digest pins them.
    let dir = tempfile::tempdir()?;
    let digest = format!("sha256:{}", "ab".repeat(32));
    let values = dir.path().join("v.yaml");
    std::fs::write(
        &values,
        format!("image:\n  repository: registry.example/ferrolb\n  tag: t1\n  digest: {digest}\n"),
    )?;
    let want = format!("registry.example/ferrolb:t1@{digest}");
    assert_eq!(
        chart_images(Some(&values))?,
        BTreeSet::from([format!("Deployment/{want}"), format!("DaemonSet/{want}")])
    );
    std::fs::write(&values, "image:\n  digest: sha256:abc\n")?;
    let err = chart_images(Some(&values)).expect_err("a malformed digest is rejected");
    assert!(format!("{err:#}").contains("/image/digest"), "{err:#}");
    Ok(())
}
