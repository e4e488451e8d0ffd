//! The cluster itself: finding the programs, `initdb`, start/reuse, stop, the database.

use crate::error::ClusterError;
use std::ffi::OsStr;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Name of the application database created in the cluster.
pub const DATABASE_NAME: &str = "gathering";
/// Superuser created by `initdb` (trust authentication, 127.0.0.1 only).
pub const SUPERUSER: &str = "postgres";
/// System user that runs PostgreSQL when GatheRing runs as root.
pub const SYSTEM_USER: &str = "postgres";
/// Where Debian/Ubuntu install versioned server binaries (`<root>/<version>/bin`).
pub const DEFAULT_VERSIONED_ROOT: &str = "/usr/lib/postgresql";

const CLUSTER_DIR: &str = "postgres";
const INITDB_TMP_DIR: &str = "postgres.initdb-tmp";
const PORT_FILE: &str = "postgres.port";
const START_LOCK_FILE: &str = "postgres.lock";
const LOG_FILE: &str = "server.log";
/// The server log is moved aside at start once it grows past this.
const LOG_ROTATE_BYTES: u64 = 10 * 1024 * 1024;
/// Unix socket paths are limited to 107 bytes; beyond, the cluster gets no Unix socket.
const MAX_SOCKET_DIR_BYTES: usize = 90;
const START_ATTEMPTS: usize = 3;
const PG_CTL_TIMEOUT_SECS: &str = "60";

fn err(msg: impl Into<String>) -> ClusterError {
    ClusterError::Operation(msg.into())
}

/// The three server programs, all from one directory (one PostgreSQL version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    pub dir: PathBuf,
    pub initdb: PathBuf,
    pub pg_ctl: PathBuf,
    pub postgres: PathBuf,
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn binaries_in(dir: &Path) -> Option<PgBinaries> {
    let b = PgBinaries {
        dir: dir.to_path_buf(),
        initdb: dir.join("initdb"),
        pg_ctl: dir.join("pg_ctl"),
        postgres: dir.join("postgres"),
    };
    (is_executable(&b.initdb) && is_executable(&b.pg_ctl) && is_executable(&b.postgres))
        .then_some(b)
}

/// `<root>/<version>/bin` directories, highest version first (`16` > `15` > `9.6`).
fn versioned_bin_dirs(root: &Path) -> Vec<(Vec<u32>, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut dirs: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let version: Option<Vec<u32>> = name
                .to_str()?
                .split('.')
                .map(|p| p.parse::<u32>().ok())
                .collect();
            Some((version?, e.path().join("bin")))
        })
        .collect();
    dirs.sort_by(|a, b| b.0.cmp(&a.0));
    dirs
}

/// Finds `initdb`, `pg_ctl` and `postgres` together in one directory. Candidates, in order:
/// `<root>/<prefer_version>/bin` (the version an existing cluster was made with), the
/// directories of `path_var` (a `PATH`-style list), then `<root>/<version>/bin` of every root,
/// highest version first. Nothing found → one error naming the package and `DATABASE_URL`.
pub fn find_binaries(
    path_var: Option<&OsStr>,
    versioned_roots: &[PathBuf],
    prefer_version: Option<&str>,
) -> Result<PgBinaries, ClusterError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(v) = prefer_version.filter(|v| !v.is_empty() && !v.contains('/')) {
        candidates.extend(versioned_roots.iter().map(|r| r.join(v).join("bin")));
    }
    if let Some(path) = path_var {
        candidates.extend(std::env::split_paths(path).filter(|p| p.is_absolute()));
    }
    for root in versioned_roots {
        candidates.extend(versioned_bin_dirs(root).into_iter().map(|(_, d)| d));
    }
    if let Some(found) = candidates.iter().find_map(|d| binaries_in(d)) {
        return Ok(found);
    }
    let roots: Vec<String> = versioned_roots
        .iter()
        .map(|r| format!("{}/*/bin", r.display()))
        .collect();
    Err(err(format!(
        "the PostgreSQL server programs (initdb, pg_ctl, postgres) were not found on PATH or \
         under {}; install the `postgresql` package (e.g. `apt-get install postgresql`) or set \
         DATABASE_URL to use an existing PostgreSQL server",
        if roots.is_empty() {
            "the versioned install directories".to_owned()
        } else {
            roots.join(", ")
        }
    )))
}

/// The machine's search: `$PATH` and `/usr/lib/postgresql/<version>/bin`.
pub fn find_system_binaries(prefer_version: Option<&str>) -> Result<PgBinaries, ClusterError> {
    let path = std::env::var_os("PATH");
    find_binaries(
        path.as_deref(),
        &[PathBuf::from(DEFAULT_VERSIONED_ROOT)],
        prefer_version,
    )
}

/// Effective uid from a `/proc/<pid>/status` text (`Uid: real effective saved fs`).
fn parse_effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Effective uid of this process, without unsafe code.
pub fn effective_uid() -> Result<u32, ClusterError> {
    if let Some(uid) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .as_deref()
        .and_then(parse_effective_uid)
    {
        return Ok(uid);
    }
    let out = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| err(format!("cannot determine the current user (`id -u`): {e}")))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| err("cannot determine the current user (`id -u` gave no number)"))
}

/// Quotes one word for `sh` (used only for the `su -c` fallback).
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

fn find_program(name: &str, extra_dirs: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra_dirs.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// How PostgreSQL programs are run: directly, or as the `postgres` user when we are root.
#[derive(Debug, Clone)]
enum Runner {
    Direct,
    RunUser {
        runuser: PathBuf,
        uid: u32,
        gid: u32,
    },
    Su {
        su: PathBuf,
        uid: u32,
        gid: u32,
    },
}

impl Runner {
    fn detect() -> Result<Runner, ClusterError> {
        if effective_uid()? != 0 {
            return Ok(Runner::Direct);
        }
        let id = |flag: &str| -> Option<u32> {
            let out = Command::new("id")
                .arg(flag)
                .arg(SYSTEM_USER)
                .output()
                .ok()?;
            if !out.status.success() {
                return None;
            }
            String::from_utf8_lossy(&out.stdout).trim().parse().ok()
        };
        let (Some(uid), Some(gid)) = (id("-u"), id("-g")) else {
            return Err(err(format!(
                "running as root, and PostgreSQL refuses to run as root, but there is no \
                 `{SYSTEM_USER}` system user to run it as; install the `postgresql` package \
                 (it creates that user), run GatheRing as an unprivileged user, or set \
                 DATABASE_URL to use an existing PostgreSQL server"
            )));
        };
        if uid == 0 {
            return Err(err(format!(
                "the `{SYSTEM_USER}` user has uid 0; PostgreSQL refuses to run as root"
            )));
        }
        let sbin = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];
        if let Some(runuser) = find_program("runuser", &sbin) {
            return Ok(Runner::RunUser { runuser, uid, gid });
        }
        if let Some(su) = find_program("su", &sbin) {
            return Ok(Runner::Su { su, uid, gid });
        }
        Err(err(
            "running as root, but neither `runuser` nor `su` is available to run PostgreSQL as \
             the `postgres` user; install util-linux, or set DATABASE_URL",
        ))
    }

    /// The owner PostgreSQL files must have, when we are root.
    fn owner(&self) -> Option<(u32, u32)> {
        match self {
            Runner::Direct => None,
            Runner::RunUser { uid, gid, .. } | Runner::Su { uid, gid, .. } => Some((*uid, *gid)),
        }
    }

    fn command(&self, program: &Path, args: &[&OsStr]) -> Result<Command, ClusterError> {
        let mut cmd = match self {
            Runner::Direct => {
                let mut c = Command::new(program);
                c.args(args);
                c
            }
            Runner::RunUser { runuser, .. } => {
                let mut c = Command::new(runuser);
                c.arg("-u")
                    .arg(SYSTEM_USER)
                    .arg("--")
                    .arg(program)
                    .args(args);
                c
            }
            Runner::Su { su, .. } => {
                let mut line = String::new();
                for word in std::iter::once(program.as_os_str()).chain(args.iter().copied()) {
                    let word = word
                        .to_str()
                        .ok_or_else(|| err("non-UTF-8 path cannot be passed through `su`"))?;
                    if !line.is_empty() {
                        line.push(' ');
                    }
                    line.push_str(&shell_quote(word));
                }
                let mut c = Command::new(su);
                c.arg("-s")
                    .arg("/bin/sh")
                    .arg(SYSTEM_USER)
                    .arg("-c")
                    .arg(line);
                c
            }
        };
        // The postgres user may not be able to enter our working directory.
        cmd.current_dir("/");
        Ok(cmd)
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<Output, ClusterError> {
    let out = cmd
        .output()
        .map_err(|e| err(format!("cannot run {what}: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        return Err(err(format!(
            "{what} failed ({}): {}",
            out.status,
            tail(&format!("{stdout}{stderr}"), 1500).trim()
        )));
    }
    Ok(out)
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Last bytes of the server log, for error messages.
fn log_tail(log: &Path) -> String {
    let mut f = match std::fs::File::open(log) {
        Ok(f) => f,
        Err(_) => return String::new(),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(2000)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).trim().to_owned()
}

/// `pg_ctl` pastes `-D`, `-l` and `-o` into a shell command line inside double quotes, so paths
/// with shell-special characters would break (or be interpreted).
fn check_path_is_shell_safe(p: &Path) -> Result<(), ClusterError> {
    let bad = p
        .as_os_str()
        .as_bytes()
        .iter()
        .any(|b| matches!(b, b'"' | b'\'' | b'\\' | b'$' | b'`' | b'\n' | b'\r' | 0));
    if bad {
        return Err(err(format!(
            "data dir {} contains a quote, backslash, `$`, backquote or newline, which \
             pg_ctl cannot handle; choose another GATHERING__DATA_DIR",
            p.display()
        )));
    }
    Ok(())
}

/// `create_dir_all` that reports which directories it created (outermost first).
fn create_dir_all_tracked(dir: &Path) -> Result<Vec<PathBuf>, ClusterError> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.as_os_str().is_empty() || d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        cur = d.parent();
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| err(format!("cannot create data dir {}: {e}", dir.display())))?;
    missing.reverse();
    Ok(missing)
}

/// `chown -R` without following symlinks.
fn chown_recursive(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_recursive(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

fn add_mode(path: &Path, bits: u32) -> Result<(), ClusterError> {
    let meta =
        std::fs::metadata(path).map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
    let mut perms = meta.permissions();
    perms.set_mode(perms.mode() | bits);
    std::fs::set_permissions(path, perms).map_err(|e| {
        err(format!(
            "cannot change permissions of {}: {e}",
            path.display()
        ))
    })
}

/// What `postmaster.pid` says about the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PidFile {
    Absent,
    /// A live postgres process serving this cluster, on this port.
    Running(u16),
    /// Left by a dead server: its pid is gone, or now belongs to a process that is not
    /// postgres (pids are reused after a crash or a reboot). Safe to remove.
    Stale,
    /// A live postgres process whose command line does not name this cluster. Left alone:
    /// PostgreSQL itself decides whether it may start (removing the file could let two servers
    /// share one data directory).
    Unclear,
}

fn read_pid_file(cluster: &Path) -> PidFile {
    let Ok(text) = std::fs::read_to_string(cluster.join("postmaster.pid")) else {
        return PidFile::Absent;
    };
    let mut lines = text.lines();
    let Some(pid) = lines.next().and_then(|l| l.trim().parse::<u32>().ok()) else {
        // Truncated by a crash while being written.
        return PidFile::Stale;
    };
    let port = lines.nth(2).and_then(|l| l.trim().parse::<u16>().ok());
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let Ok(comm) = std::fs::read_to_string(proc_dir.join("comm")) else {
        return PidFile::Stale;
    };
    if comm.trim() != "postgres" {
        return PidFile::Stale;
    }
    let cmdline = std::fs::read(proc_dir.join("cmdline")).unwrap_or_default();
    let target = cluster.as_os_str().as_bytes();
    match port {
        Some(port) if cmdline.split(|b| *b == 0).any(|arg| arg == target) => PidFile::Running(port),
        _ => PidFile::Unclear,
    }
}

fn running_postmaster(cluster: &Path) -> Option<u16> {
    match read_pid_file(cluster) {
        PidFile::Running(port) => Some(port),
        _ => None,
    }
}

/// Removes the lock files of a dead server (with a reused pid they would block the next start).
fn remove_stale_locks(cluster: &Path) {
    if read_pid_file(cluster) != PidFile::Stale {
        return;
    }
    tracing::info!(cluster = %cluster.display(), "removing the stale postmaster.pid of a server that is gone");
    let _ = std::fs::remove_file(cluster.join("postmaster.pid"));
    if let Ok(entries) = std::fs::read_dir(cluster) {
        for e in entries.flatten() {
            if e.file_name().as_bytes().starts_with(b".s.PGSQL.") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_ok()
}

fn pick_free_port() -> Result<u16, ClusterError> {
    let l = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .map_err(|e| err(format!("cannot find a free port on 127.0.0.1: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| err(format!("cannot find a free port on 127.0.0.1: {e}")))
}

/// The remembered port if it is still free, otherwise a new free one (remembered from now on).
fn choose_port(data_dir: &Path, avoid: Option<u16>) -> Result<u16, ClusterError> {
    let file = data_dir.join(PORT_FILE);
    let remembered: Option<u16> = std::fs::read_to_string(&file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|p| *p != 0);
    if let Some(p) = remembered
        && Some(p) != avoid
        && port_is_free(p)
    {
        return Ok(p);
    }
    let port = pick_free_port()?;
    std::fs::write(&file, format!("{port}\n"))
        .map_err(|e| err(format!("cannot write {}: {e}", file.display())))?;
    if let Some(old) = remembered {
        tracing::info!(
            old,
            new = port,
            "local PostgreSQL port was taken; using a new one"
        );
    }
    Ok(port)
}

fn rotate_log(log: &Path) {
    if std::fs::metadata(log)
        .map(|m| m.len() > LOG_ROTATE_BYTES)
        .unwrap_or(false)
    {
        let _ = std::fs::rename(log, log.with_extension("log.old"));
    }
}

/// What the blocking part of start-up produced.
#[derive(Debug, Clone)]
struct Started {
    cluster_dir: PathBuf,
    port: u16,
    started_here: bool,
    binaries: PgBinaries,
    runner: Runner,
}

fn init_cluster(
    data_dir: &Path,
    cluster: &Path,
    runner: &Runner,
) -> Result<PgBinaries, ClusterError> {
    if cluster.exists() {
        let empty = std::fs::read_dir(cluster)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty {
            return Err(err(format!(
                "{} exists but is not a PostgreSQL cluster (no PG_VERSION); move it away \
                 or remove it so a new cluster can be created there",
                cluster.display()
            )));
        }
        std::fs::remove_dir(cluster)
            .map_err(|e| err(format!("cannot remove empty {}: {e}", cluster.display())))?;
    }
    let binaries = find_system_binaries(None)?;
    // initdb into a side directory and rename when complete: an interrupted first start leaves
    // no half-made cluster behind.
    let tmp = data_dir.join(INITDB_TMP_DIR);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .map_err(|e| err(format!("cannot remove leftover {}: {e}", tmp.display())))?;
    }
    std::fs::create_dir(&tmp).map_err(|e| err(format!("cannot create {}: {e}", tmp.display())))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| err(format!("cannot set permissions of {}: {e}", tmp.display())))?;
    if let Some((uid, gid)) = runner.owner() {
        std::os::unix::fs::chown(&tmp, Some(uid), Some(gid))
            .map_err(|e| err(format!("cannot give {} to postgres: {e}", tmp.display())))?;
    }
    tracing::info!(cluster = %cluster.display(), initdb = %binaries.initdb.display(), "creating the local PostgreSQL cluster");
    let args: [&OsStr; 9] = [
        OsStr::new("-D"),
        tmp.as_os_str(),
        OsStr::new("-U"),
        OsStr::new(SUPERUSER),
        OsStr::new("--auth-local=trust"),
        OsStr::new("--auth-host=trust"),
        OsStr::new("-E"),
        OsStr::new("UTF8"),
        OsStr::new("--locale=C"),
    ];
    run(&mut runner.command(&binaries.initdb, &args)?, "initdb")?;
    std::fs::rename(&tmp, cluster).map_err(|e| {
        err(format!(
            "cannot move the new cluster {} to {}: {e}",
            tmp.display(),
            cluster.display()
        ))
    })?;
    Ok(binaries)
}

fn pg_ctl_start(
    binaries: &PgBinaries,
    runner: &Runner,
    cluster: &Path,
    port: u16,
) -> Result<(), ClusterError> {
    let log = cluster.join(LOG_FILE);
    rotate_log(&log);
    let socket_dir = if cluster.as_os_str().len() <= MAX_SOCKET_DIR_BYTES {
        cluster.display().to_string()
    } else {
        // Too long for a Unix socket path: TCP only.
        String::new()
    };
    // Paths were checked to hold no shell-special characters (pg_ctl runs this through sh).
    let options = format!("-p {port} -h 127.0.0.1 -k \"{socket_dir}\"");
    let args: [&OsStr; 10] = [
        OsStr::new("-D"),
        cluster.as_os_str(),
        OsStr::new("-l"),
        log.as_os_str(),
        OsStr::new("-w"),
        OsStr::new("-t"),
        OsStr::new(PG_CTL_TIMEOUT_SECS),
        OsStr::new("-o"),
        OsStr::new(&options),
        OsStr::new("start"),
    ];
    run(
        &mut runner.command(&binaries.pg_ctl, &args)?,
        "pg_ctl start",
    )
    .map_err(|e| {
        let log = log_tail(&log);
        if log.is_empty() {
            e
        } else {
            err(format!("{e}; server log ends with:\n{log}"))
        }
    })?;
    Ok(())
}

fn start_blocking(data_dir: &Path) -> Result<Started, ClusterError> {
    let runner = Runner::detect()?;
    let created = create_dir_all_tracked(data_dir)?;
    let data_dir = data_dir.canonicalize().map_err(|e| {
        err(format!(
            "cannot resolve data dir {}: {e}",
            data_dir.display()
        ))
    })?;
    check_path_is_shell_safe(&data_dir)?;
    // Instances starting at once on one data dir take turns: the first creates and starts the
    // cluster, the others then find it running and reuse it. Released when this returns.
    let lock_path = data_dir.join(START_LOCK_FILE);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| err(format!("cannot open {}: {e}", lock_path.display())))?;
    lock.lock()
        .map_err(|e| err(format!("cannot lock {}: {e}", lock_path.display())))?;
    if let Some((uid, _)) = runner.owner() {
        // The postgres user must be able to walk into the data dir: open the directories we
        // created for traversal (o+x), and check the whole path as that user.
        for d in &created {
            let d = d.canonicalize().unwrap_or_else(|_| d.clone());
            add_mode(&d, 0o001)?;
        }
        let ok = runner
            .command(Path::new("test"), &[OsStr::new("-x"), data_dir.as_os_str()])?
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return Err(err(format!(
                "running as root, PostgreSQL runs as the `{SYSTEM_USER}` user (uid {uid}), which \
                 cannot reach {}; make every parent directory traversable (chmod o+x), choose a \
                 data dir such as /var/lib/gathering, or set DATABASE_URL",
                data_dir.display()
            )));
        }
    }

    let cluster = data_dir.join(CLUSTER_DIR);
    let binaries = if cluster.join("PG_VERSION").is_file() {
        let version = std::fs::read_to_string(cluster.join("PG_VERSION")).unwrap_or_default();
        find_system_binaries(Some(version.trim()))?
    } else {
        init_cluster(&data_dir, &cluster, &runner)?
    };
    if let Some((uid, gid)) = runner.owner() {
        let owner = std::fs::metadata(&cluster).map(|m| m.uid()).ok();
        if owner != Some(uid) {
            chown_recursive(&cluster, uid, gid).map_err(|e| {
                err(format!(
                    "cannot give {} to the `{SYSTEM_USER}` user: {e}",
                    cluster.display()
                ))
            })?;
        }
    }

    if let Some(port) = running_postmaster(&cluster) {
        tracing::info!(cluster = %cluster.display(), port, "local PostgreSQL cluster already running; reusing it");
        return Ok(Started {
            cluster_dir: cluster,
            port,
            started_here: false,
            binaries,
            runner,
        });
    }
    remove_stale_locks(&cluster);

    let mut avoid = None;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let port = choose_port(&data_dir, avoid)?;
        match pg_ctl_start(&binaries, &runner, &cluster, port) {
            Ok(()) => {
                tracing::info!(cluster = %cluster.display(), port, "local PostgreSQL cluster started");
                return Ok(Started {
                    cluster_dir: cluster,
                    port,
                    started_here: true,
                    binaries,
                    runner,
                });
            }
            // Someone took the port between our check and the server's bind: pick another.
            Err(ClusterError::Operation(msg))
                if attempt < START_ATTEMPTS && msg.contains("Address already in use") =>
            {
                tracing::warn!(port, "port taken while starting PostgreSQL; retrying");
                remove_stale_locks(&cluster);
                avoid = Some(port);
            }
            Err(e) => return Err(e),
        }
    }
}

fn stop_blocking(started: &Started) -> Result<(), ClusterError> {
    let args: [&OsStr; 8] = [
        OsStr::new("-D"),
        started.cluster_dir.as_os_str(),
        OsStr::new("-m"),
        OsStr::new("fast"),
        OsStr::new("-w"),
        OsStr::new("-t"),
        OsStr::new(PG_CTL_TIMEOUT_SECS),
        OsStr::new("stop"),
    ];
    let result = run(
        &mut started.runner.command(&started.binaries.pg_ctl, &args)?,
        "pg_ctl stop",
    );
    match result {
        Ok(_) => {
            tracing::info!(cluster = %started.cluster_dir.display(), "local PostgreSQL cluster stopped");
            Ok(())
        }
        // Already gone (stopped by hand, or crashed): nothing to stop.
        Err(_) if running_postmaster(&started.cluster_dir).is_none() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Connects to the cluster's `postgres` database and creates [`DATABASE_NAME`] if missing.
async fn ensure_database(port: u16) -> Result<(), ClusterError> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(SUPERUSER)
        .dbname("postgres")
        .application_name("gathering-local-cluster")
        .connect_timeout(Duration::from_secs(5));
    // A reused cluster may still be starting up (or recovering after a crash).
    let mut delay = Duration::from_millis(100);
    let mut waited = Duration::ZERO;
    let client = loop {
        match config.connect(tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "local cluster admin connection ended");
                    }
                });
                break client;
            }
            Err(e) if waited < Duration::from_secs(30) => {
                tracing::debug!(error = %e, "local cluster not accepting connections yet");
                tokio::time::sleep(delay).await;
                waited += delay;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(ClusterError::Connect(e)),
        }
    };
    let exists = |client: tokio_postgres::Client| async move {
        let found = client
            .query_opt(
                "SELECT 1 FROM pg_database WHERE datname = $1",
                &[&DATABASE_NAME],
            )
            .await?
            .is_some();
        Ok::<_, tokio_postgres::Error>((client, found))
    };
    let (client, found) = exists(client).await.map_err(ClusterError::Database)?;
    if !found {
        // A constant name: identifiers cannot be bind parameters.
        match client.batch_execute("CREATE DATABASE gathering").await {
            Ok(()) => tracing::info!(database = DATABASE_NAME, "database created"),
            Err(e) => {
                // Another instance may have created it at the same moment (PostgreSQL reports
                // that as duplicate_database or as a unique violation on pg_database).
                let (_, found) = exists(client).await.map_err(ClusterError::Database)?;
                if !found {
                    return Err(ClusterError::Database(e));
                }
            }
        }
    }
    Ok(())
}

/// A private PostgreSQL cluster under the data dir. Call [`LocalCluster::stop`] on shutdown; a
/// cluster that was already running when we started (e.g. left up by a crashed run) is reused
/// and left running.
#[derive(Debug)]
pub struct LocalCluster {
    started: Started,
    stopped: AtomicBool,
}

impl LocalCluster {
    /// Creates the cluster under `<data_dir>/postgres` on first use, starts it (or reuses it if it
    /// is already running), and creates the `gathering` database. Blocking work runs on the
    /// blocking pool.
    pub async fn start(data_dir: &Path) -> Result<LocalCluster, ClusterError> {
        let dir = data_dir.to_path_buf();
        let started = tokio::task::spawn_blocking(move || start_blocking(&dir))
            .await
            .map_err(|e| err(format!("start-up task failed: {e}")))??;
        let cluster = LocalCluster {
            started,
            stopped: AtomicBool::new(false),
        };
        if let Err(e) = ensure_database(cluster.port()).await {
            if let Err(stop) = cluster.stop().await {
                tracing::warn!(error = %stop, "stopping the local cluster after a failed start-up failed");
            }
            return Err(e);
        }
        Ok(cluster)
    }

    /// `postgres://postgres@127.0.0.1:PORT/gathering` (trust authentication, no password).
    pub fn url(&self) -> String {
        format!(
            "postgres://{SUPERUSER}@127.0.0.1:{}/{DATABASE_NAME}",
            self.started.port
        )
    }

    pub fn port(&self) -> u16 {
        self.started.port
    }

    /// `<data_dir>/postgres`, canonical.
    pub fn cluster_dir(&self) -> &Path {
        &self.started.cluster_dir
    }

    /// Whether this value started the server (and so [`LocalCluster::stop`] stops it).
    pub fn started_here(&self) -> bool {
        self.started.started_here
    }

    /// Stops the server (`pg_ctl stop -m fast -w`) if this value started it; otherwise, and on
    /// every call after the first, does nothing.
    pub async fn stop(&self) -> Result<(), ClusterError> {
        if !self.started.started_here || self.stopped.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let started = self.started.clone();
        let result = tokio::task::spawn_blocking(move || stop_blocking(&started))
            .await
            .map_err(|e| err(format!("stop task failed: {e}")))?;
        if result.is_err() {
            // Let a later call try again.
            self.stopped.store(false, Ordering::SeqCst);
        }
        result
    }

    /// [`LocalCluster::stop`] for callers outside an async runtime.
    pub fn stop_blocking(&self) -> Result<(), ClusterError> {
        if !self.started.started_here || self.stopped.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let result = stop_blocking(&self.started);
        if result.is_err() {
            self.stopped.store(false, Ordering::SeqCst);
        }
        result
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn make_bins(dir: &Path, names: &[&str]) {
        std::fs::create_dir_all(dir).unwrap();
        for n in names {
            let p = dir.join(n);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    #[test]
    fn missing_binaries_give_one_error_naming_the_package_and_database_url() {
        let empty = tempfile::tempdir().unwrap();
        let path = std::env::join_paths([empty.path().join("bin")]).unwrap();
        let e = find_binaries(Some(&path), &[empty.path().join("lib")], None).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ClusterError::Operation(_)));
        assert!(msg.contains("`postgresql` package"), "{msg}");
        assert!(msg.contains("DATABASE_URL"), "{msg}");
        assert!(msg.contains("initdb"), "{msg}");
    }

    #[test]
    fn a_directory_missing_one_program_is_skipped() {
        let t = tempfile::tempdir().unwrap();
        make_bins(&t.path().join("path1"), &["initdb", "pg_ctl"]);
        make_bins(&t.path().join("path2"), &["initdb", "pg_ctl", "postgres"]);
        let path = std::env::join_paths([t.path().join("path1"), t.path().join("path2")]).unwrap();
        let b = find_binaries(Some(&path), &[], None).unwrap();
        assert_eq!(b.dir, t.path().join("path2"));
        assert_eq!(b.pg_ctl, t.path().join("path2/pg_ctl"));
    }

    #[test]
    fn non_executable_files_do_not_count() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("bin");
        make_bins(&d, &["initdb", "pg_ctl", "postgres"]);
        std::fs::set_permissions(d.join("postgres"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let path = std::env::join_paths([&d]).unwrap();
        assert!(find_binaries(Some(&path), &[], None).is_err());
    }

    #[test]
    fn highest_complete_version_wins_and_an_existing_clusters_version_is_preferred() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("lib");
        let all = ["initdb", "pg_ctl", "postgres"];
        make_bins(&root.join("9.6/bin"), &all);
        make_bins(&root.join("15/bin"), &all);
        make_bins(&root.join("16/bin"), &["initdb"]); // incomplete
        std::fs::create_dir_all(root.join("notaversion/bin")).unwrap();
        let b = find_binaries(None, std::slice::from_ref(&root), None).unwrap();
        assert_eq!(b.dir, root.join("15/bin"));
        let b = find_binaries(None, std::slice::from_ref(&root), Some("9.6")).unwrap();
        assert_eq!(b.dir, root.join("9.6/bin"));
        // PATH comes before the versioned directories.
        make_bins(&t.path().join("onpath"), &all);
        let path = std::env::join_paths([t.path().join("onpath")]).unwrap();
        let b = find_binaries(Some(&path), std::slice::from_ref(&root), None).unwrap();
        assert_eq!(b.dir, t.path().join("onpath"));
    }

    #[test]
    fn effective_uid_is_the_second_uid_field() {
        let status = "Name:\tx\nUmask:\t0022\nUid:\t1000\t0\t1000\t1000\nGid:\t1\t1\t1\t1\n";
        assert_eq!(parse_effective_uid(status), Some(0));
        assert_eq!(parse_effective_uid("Name: x\n"), None);
    }

    #[test]
    fn shell_quoting_survives_quotes_and_spaces() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", shell_quote("x'; echo pwned '")))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "x'; echo pwned '");
    }

    #[test]
    fn shell_special_data_dirs_are_refused() {
        assert!(check_path_is_shell_safe(Path::new("/var/lib/gathering data")).is_ok());
        for bad in [
            "/tmp/a\"b",
            "/tmp/$HOME",
            "/tmp/a`b`",
            "/tmp/a'b",
            "/tmp/a\\b",
        ] {
            assert!(check_path_is_shell_safe(Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_remembered_port_is_reused_while_free_and_replaced_when_taken() {
        let t = tempfile::tempdir().unwrap();
        let first = choose_port(t.path(), None).unwrap();
        assert_eq!(
            std::fs::read_to_string(t.path().join(PORT_FILE))
                .unwrap()
                .trim(),
            first.to_string()
        );
        assert_eq!(choose_port(t.path(), None).unwrap(), first);
        let _hold = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, first))).unwrap();
        let second = choose_port(t.path(), None).unwrap();
        assert_ne!(second, first);
        assert_eq!(
            std::fs::read_to_string(t.path().join(PORT_FILE))
                .unwrap()
                .trim(),
            second.to_string()
        );
    }

    #[test]
    fn a_pid_file_naming_a_live_non_postgres_process_is_not_a_running_server() {
        let t = tempfile::tempdir().unwrap();
        let pid = std::process::id();
        std::fs::write(
            t.path().join("postmaster.pid"),
            format!("{pid}\n{}\n0\n5432\n", t.path().display()),
        )
        .unwrap();
        assert_eq!(read_pid_file(t.path()), PidFile::Stale);
        assert_eq!(running_postmaster(t.path()), None);
        remove_stale_locks(t.path());
        assert_eq!(read_pid_file(t.path()), PidFile::Absent);

        // A pid that is gone.
        let mut child = Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        std::fs::write(
            t.path().join("postmaster.pid"),
            format!("{gone}\n{}\n0\n5432\n", t.path().display()),
        )
        .unwrap();
        assert_eq!(read_pid_file(t.path()), PidFile::Stale);
    }

    #[test]
    fn tail_cuts_on_a_character_boundary() {
        assert_eq!(tail("abc", 10), "abc");
        assert_eq!(tail("ééé", 3), "é");
    }
}
