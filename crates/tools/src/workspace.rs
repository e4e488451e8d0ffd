//! Traversal-safe resolution of user-supplied paths under a project root.
//!
//! A user path is checked lexically first (no `..`, no backslashes, no absolute or drive
//! paths, no NUL bytes, no percent escapes that decode to `.`, `/`, `\`, `%` or NUL), then
//! walked component by component from the canonicalized root: every symlink met on the way
//! is canonicalized and must stay under the root. Anything that would leave the root answers
//! [`PathError::Forbidden`] and reads nothing; a missing path answers [`PathError::NotFound`].
//!
//! All filesystem work of the async helpers runs on `spawn_blocking`.

use gathering_domain::codes;
use gathering_domain::{ErrorCode, ErrorKind};
use serde::Serialize;
use std::collections::VecDeque;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

/// Longest user path accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest single path component accepted, in bytes.
pub const MAX_COMPONENT_BYTES: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// The path would leave the project root (or tries to); nothing was read.
    #[error("path not allowed: {0}")]
    Forbidden(&'static str),
    #[error("no such file or directory")]
    NotFound,
    #[error("path is a directory, not a file")]
    NotAFile,
    #[error("path is not a directory")]
    NotADirectory,
    /// A FIFO, socket or device: never opened for reading (a FIFO would block forever).
    #[error("path is not a regular file")]
    NotRegularFile,
    #[error("file is {size} bytes, larger than the limit of {max} bytes")]
    TooLarge { size: u64, max: u64 },
    #[error("file is not UTF-8 text")]
    NotText,
    #[error("invalid path: {0}")]
    Invalid(&'static str),
    #[error("filesystem error")]
    Io(#[from] io::Error),
}

impl ErrorCode for PathError {
    fn kind(&self) -> ErrorKind {
        match self {
            PathError::Forbidden(_) => ErrorKind::Forbidden,
            PathError::NotFound => ErrorKind::NotFound,
            PathError::NotAFile
            | PathError::NotADirectory
            | PathError::NotRegularFile
            | PathError::TooLarge { .. }
            | PathError::NotText
            | PathError::Invalid(_) => ErrorKind::Validation,
            PathError::Io(_) => ErrorKind::Internal,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            PathError::Forbidden(_) => codes::PATH_FORBIDDEN,
            PathError::NotFound => codes::NOT_FOUND,
            PathError::NotAFile => codes::NOT_A_FILE,
            PathError::NotADirectory => codes::NOT_A_DIRECTORY,
            PathError::NotRegularFile => codes::NOT_A_REGULAR_FILE,
            PathError::TooLarge { .. } => codes::FILE_TOO_LARGE,
            PathError::NotText => codes::NOT_TEXT,
            PathError::Invalid(_) => codes::INVALID_PATH,
            PathError::Io(_) => codes::INTERNAL,
        }
    }
}

/// Decodes the hex digit `b`.
fn hex(b: u8) -> Option<u32> {
    (b as char).to_digit(16)
}

/// True when `s` holds a percent escape (`%2e`, `%u002e`) that decodes to a character that
/// could change how the path is split or resolved once someone decodes it again.
fn has_dangerous_escape(s: &str) -> bool {
    let b = s.as_bytes();
    let dangerous = |c: u32| matches!(c, 0x2e | 0x2f | 0x5c | 0x25 | 0x00);
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) && dangerous(h * 16 + l)
            {
                return true;
            }
            if matches!(b.get(i + 1), Some(b'u' | b'U')) && b.len() >= i + 6 {
                let code = b[i + 2..i + 6]
                    .iter()
                    .try_fold(0u32, |acc, &d| hex(d).map(|v| acc * 16 + v));
                if code.is_some_and(dangerous) {
                    return true;
                }
            }
        }
        i += 1;
    }
    false
}

/// Checks `user_path` lexically and splits it into plain components (empty and `.` segments
/// dropped). The empty path (or `.`) names the root itself.
pub fn components(user_path: &str) -> Result<Vec<&str>, PathError> {
    if user_path.len() > MAX_PATH_BYTES {
        return Err(PathError::Invalid("path is too long"));
    }
    if user_path.contains('\0') {
        return Err(PathError::Forbidden("NUL byte in path"));
    }
    if user_path.contains('\\') {
        return Err(PathError::Forbidden("backslash in path"));
    }
    if user_path.starts_with('/') {
        return Err(PathError::Forbidden("absolute path"));
    }
    let b = user_path.as_bytes();
    if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
        return Err(PathError::Forbidden("absolute path"));
    }
    if has_dangerous_escape(user_path) {
        return Err(PathError::Forbidden("encoded separator or dot in path"));
    }
    let mut out = Vec::new();
    for seg in user_path.split('/') {
        match seg {
            "" | "." => {}
            ".." => return Err(PathError::Forbidden("parent directory reference")),
            s if s.len() > MAX_COMPONENT_BYTES => {
                return Err(PathError::Invalid("path component is too long"));
            }
            s => out.push(s),
        }
    }
    Ok(out)
}

fn canonical_root(root: &Path) -> Result<PathBuf, PathError> {
    match fs::canonicalize(root) {
        Ok(r) if r.is_dir() => Ok(r),
        Ok(_) => Err(PathError::NotFound),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(PathError::NotFound),
        Err(e) => Err(PathError::Io(e)),
    }
}

/// Lexically normalizes `p` (which is absolute): `.` dropped, `..` pops.
fn lexical_normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// `next` is a symlink inside the canonical directory `cur`; returns its canonical target if
/// that stays under `root`.
fn follow_symlink(root: &Path, cur: &Path, next: &Path) -> Result<PathBuf, PathError> {
    match fs::canonicalize(next) {
        Ok(t) if t.starts_with(root) => Ok(t),
        Ok(_) => Err(PathError::Forbidden("symlink leaves the project root")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Dangling: say "not found" only when its target would stay inside the root.
            let target = fs::read_link(next)?;
            let full = lexical_normalize(&cur.join(target));
            if full.starts_with(root) {
                Err(PathError::NotFound)
            } else {
                Err(PathError::Forbidden("symlink leaves the project root"))
            }
        }
        // Loops and other failures to follow the link: refuse.
        Err(_) => Err(PathError::Forbidden("symlink cannot be resolved")),
    }
}

/// Walks `comps` from the canonical `root`, following (and checking) symlinks. When
/// `create_dirs` is set, missing directories are created on the way.
fn walk(root: &Path, comps: &[&str], create_dirs: bool) -> Result<PathBuf, PathError> {
    let mut cur = root.to_path_buf();
    for comp in comps {
        let next = cur.join(comp);
        match fs::symlink_metadata(&next) {
            Ok(m) if m.file_type().is_symlink() => cur = follow_symlink(root, &cur, &next)?,
            Ok(_) => cur = next,
            Err(e) if e.kind() == io::ErrorKind::NotFound && create_dirs => {
                match fs::create_dir(&next) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        // Raced with someone else; check what is there now.
                        let m = fs::symlink_metadata(&next)?;
                        if m.file_type().is_symlink() {
                            cur = follow_symlink(root, &cur, &next)?;
                            continue;
                        }
                    }
                    Err(e) => return Err(PathError::Io(e)),
                }
                cur = next;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Err(PathError::NotFound);
            }
            Err(e) => return Err(PathError::Io(e)),
        }
    }
    Ok(cur)
}

/// Resolves an existing `user_path` under `root` to its canonical path, which is guaranteed
/// to lie under the canonicalized root. Blocking: call from `spawn_blocking`.
pub fn resolve(root: &Path, user_path: &str) -> Result<PathBuf, PathError> {
    let comps = components(user_path)?;
    let root = canonical_root(root)?;
    walk(&root, &comps, false)
}

/// Resolves a path that may not exist yet (a file about to be written): the parent must exist
/// (or is created when `create_dirs`), the final component must not be a directory, and when
/// it is a symlink its target must stay under the root (the returned path is then the target).
/// Blocking: call from `spawn_blocking`.
pub fn resolve_for_write(
    root: &Path,
    user_path: &str,
    create_dirs: bool,
) -> Result<PathBuf, PathError> {
    let comps = components(user_path)?;
    let Some((name, parents)) = comps.split_last() else {
        return Err(PathError::Invalid("path names no file"));
    };
    let root = canonical_root(root)?;
    let parent = walk(&root, parents, create_dirs)?;
    if !parent.is_dir() {
        return Err(PathError::NotADirectory);
    }
    let target = parent.join(name);
    match fs::symlink_metadata(&target) {
        Ok(m) if m.file_type().is_symlink() => {
            let t = follow_symlink(&root, &parent, &target).map_err(|e| match e {
                // Writing through a dangling link would create its target: refuse.
                PathError::NotFound => PathError::Forbidden("dangling symlink"),
                other => other,
            })?;
            if t.is_dir() {
                return Err(PathError::NotAFile);
            }
            Ok(t)
        }
        Ok(m) if m.is_dir() => Err(PathError::NotAFile),
        Ok(_) => Ok(target),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(target),
        Err(e) => Err(PathError::Io(e)),
    }
}

/// After opening, checks where the descriptor really points (defeats a symlink swapped in
/// between resolution and open).
#[cfg(target_os = "linux")]
fn verify_opened(file: &fs::File, root: &Path) -> Result<(), PathError> {
    use std::os::fd::AsRawFd;
    match fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) {
        Ok(real) if real.starts_with(root) => Ok(()),
        Ok(_) => Err(PathError::Forbidden("path leaves the project root")),
        // No /proc: the component-wise check already ran.
        Err(_) => Ok(()),
    }
}

#[cfg(not(target_os = "linux"))]
fn verify_opened(_file: &fs::File, _root: &Path) -> Result<(), PathError> {
    Ok(())
}

/// Opens `path` for reading without ever blocking in `open` (`O_NONBLOCK`: a FIFO with no
/// writer would otherwise wait forever) and without following a final symlink swapped in
/// since resolution (`O_NOFOLLOW`), then requires a regular file by `fstat` on the opened
/// descriptor itself (no check-then-open race on the path).
pub fn open_regular(path: &Path) -> Result<fs::File, PathError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => PathError::Forbidden("path changed to a symlink"),
            // A socket (or a device without a driver) cannot be opened as a file.
            Some(libc::ENXIO | libc::ENODEV) => PathError::NotRegularFile,
            _ if e.kind() == io::ErrorKind::NotFound => PathError::NotFound,
            _ => PathError::Io(e),
        })?;
    let ft = file.metadata()?.file_type();
    if ft.is_dir() {
        return Err(PathError::NotAFile);
    }
    if !ft.is_file() {
        return Err(PathError::NotRegularFile);
    }
    Ok(file)
}

/// Joins components with `/` for display (the normalized relative path).
fn display_path(comps: &[&str]) -> String {
    comps.join("/")
}

fn relative_display(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .unwrap_or(p)
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PathError> + Send + 'static,
) -> Result<T, PathError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PathError::Io(io::Error::other(e)))?
}

/// A text file read from a workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileContent {
    /// The normalized path relative to the root.
    pub path: String,
    pub size: u64,
    pub content: String,
}

/// Reads `user_path` under `root` as UTF-8 text of at most `max_bytes`. Binary content (NUL
/// bytes or invalid UTF-8) answers [`PathError::NotText`].
pub fn read_text_blocking(
    root: &Path,
    user_path: &str,
    max_bytes: u64,
) -> Result<FileContent, PathError> {
    let comps = components(user_path)?;
    let croot = canonical_root(root)?;
    let path = walk(&croot, &comps, false)?;
    let file = open_regular(&path)?;
    verify_opened(&file, &croot)?;
    let meta = file.metadata()?;
    if meta.len() > max_bytes {
        return Err(PathError::TooLarge {
            size: meta.len(),
            max: max_bytes,
        });
    }
    let mut buf = Vec::new();
    // The file may grow after the size check: read at most one byte past the limit.
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut buf)?;
    let size = buf.len() as u64;
    if size > max_bytes {
        return Err(PathError::TooLarge {
            size,
            max: max_bytes,
        });
    }
    if buf.contains(&0) {
        return Err(PathError::NotText);
    }
    let content = String::from_utf8(buf).map_err(|_| PathError::NotText)?;
    Ok(FileContent {
        path: display_path(&comps),
        size,
        content,
    })
}

/// Async [`read_text_blocking`] on the blocking pool.
pub async fn read_text(
    root: impl Into<PathBuf>,
    user_path: &str,
    max_bytes: u64,
) -> Result<FileContent, PathError> {
    let root = root.into();
    let user_path = user_path.to_owned();
    blocking(move || read_text_blocking(&root, &user_path, max_bytes)).await
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WriteOutcome {
    pub path: String,
    pub size: u64,
    pub created: bool,
}

/// Writes `content` to `user_path` under `root` atomically (temporary file in the same
/// directory, then rename, which replaces a symlink rather than following it). Missing parent
/// directories are created when `create_dirs`.
pub fn write_text_blocking(
    root: &Path,
    user_path: &str,
    content: &str,
    max_bytes: u64,
    create_dirs: bool,
) -> Result<WriteOutcome, PathError> {
    let size = content.len() as u64;
    if size > max_bytes {
        return Err(PathError::TooLarge {
            size,
            max: max_bytes,
        });
    }
    let comps = components(user_path)?;
    let croot = canonical_root(root)?;
    let target = resolve_for_write(&croot, user_path, create_dirs)?;
    let created = !target.exists();
    let parent = target
        .parent()
        .ok_or(PathError::Invalid("path names no file"))?;
    let tmp = parent.join(format!(".gathering-write-{}", uuid::Uuid::now_v7()));
    let result = (|| -> Result<(), PathError> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        verify_opened(&f, &croot)?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &target)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    Ok(WriteOutcome {
        path: display_path(&comps),
        size,
        created,
    })
}

/// Async [`write_text_blocking`] on the blocking pool.
pub async fn write_text(
    root: impl Into<PathBuf>,
    user_path: &str,
    content: String,
    max_bytes: u64,
    create_dirs: bool,
) -> Result<WriteOutcome, PathError> {
    let root = root.into();
    let user_path = user_path.to_owned();
    blocking(move || write_text_blocking(&root, &user_path, &content, max_bytes, create_dirs)).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TreeEntry {
    /// Relative to the project root, `/`-separated.
    pub path: String,
    pub name: String,
    pub kind: EntryKind,
    /// Size in bytes for files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// 1 for the listed directory's own children.
    pub depth: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tree {
    pub path: String,
    pub entries: Vec<TreeEntry>,
    /// True when `max_entries` cut the listing short.
    pub truncated: bool,
}

/// Lists the directory `user_path` breadth-first, at most `max_depth` levels deep and at most
/// `max_entries` entries. Symlinks are reported, never followed.
pub fn list_tree_blocking(
    root: &Path,
    user_path: &str,
    max_depth: usize,
    max_entries: usize,
) -> Result<Tree, PathError> {
    let comps = components(user_path)?;
    let croot = canonical_root(root)?;
    let start = walk(&croot, &comps, false)?;
    if !fs::metadata(&start)?.is_dir() {
        return Err(PathError::NotADirectory);
    }
    let mut entries = Vec::new();
    let mut truncated = false;
    let mut queue = VecDeque::from([(start, 1usize)]);
    'outer: while let Some((dir, depth)) = queue.pop_front() {
        if depth > max_depth {
            continue;
        }
        // A directory swapped for a symlink since it was listed is not entered.
        // Subdirectories that vanished meanwhile are skipped.
        if depth > 1
            && fs::symlink_metadata(&dir)
                .map(|m| m.file_type().is_symlink())
                .unwrap_or(true)
        {
            continue;
        }
        let items = match fs::read_dir(&dir) {
            Ok(items) => items,
            Err(_) if depth > 1 => continue,
            Err(e) => return Err(PathError::Io(e)),
        };
        let mut batch = Vec::new();
        let room = max_entries.saturating_sub(entries.len());
        for item in items {
            let item = item?;
            if batch.len() == room {
                truncated = true;
                break;
            }
            batch.push(item);
        }
        batch.sort_by_key(|e| e.file_name());
        for item in batch {
            let ft = item.file_type()?;
            let path = item.path();
            let kind = if ft.is_symlink() {
                EntryKind::Symlink
            } else if ft.is_dir() {
                EntryKind::Dir
            } else if ft.is_file() {
                EntryKind::File
            } else {
                EntryKind::Other
            };
            let size = match kind {
                EntryKind::File => Some(item.metadata()?.len()),
                _ => None,
            };
            if kind == EntryKind::Dir {
                queue.push_back((path.clone(), depth + 1));
            }
            entries.push(TreeEntry {
                path: relative_display(&croot, &path),
                name: item.file_name().to_string_lossy().into_owned(),
                kind,
                size,
                depth,
            });
        }
        if truncated {
            break 'outer;
        }
    }
    Ok(Tree {
        path: display_path(&comps),
        entries,
        truncated,
    })
}

/// Async [`list_tree_blocking`] on the blocking pool.
pub async fn list_tree(
    root: impl Into<PathBuf>,
    user_path: &str,
    max_depth: usize,
    max_entries: usize,
) -> Result<Tree, PathError> {
    let root = root.into();
    let user_path = user_path.to_owned();
    blocking(move || list_tree_blocking(&root, &user_path, max_depth, max_entries)).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A temp dir holding `root/` (the project) and `outside/` (must never be reachable).
    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
        outside: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        fs::create_dir_all(root.join("src/nested")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(root.join("src/main.rs"), "fn main() {}\n").unwrap();
        fs::write(root.join("src/nested/deep.txt"), "deep").unwrap();
        fs::write(root.join("README.md"), "hello").unwrap();
        fs::write(outside.join("secret.txt"), "secret").unwrap();
        Fixture {
            _dir: dir,
            root,
            outside,
        }
    }

    fn forbidden(r: Result<PathBuf, PathError>) -> bool {
        matches!(r, Err(PathError::Forbidden(_)))
    }

    #[test]
    fn plain_relative_paths_resolve_under_the_root() {
        let f = fixture();
        let croot = fs::canonicalize(&f.root).unwrap();
        assert_eq!(
            resolve(&f.root, "src/main.rs").unwrap(),
            croot.join("src/main.rs")
        );
        assert_eq!(
            resolve(&f.root, "./src//nested/deep.txt").unwrap(),
            croot.join("src/nested/deep.txt")
        );
        assert_eq!(resolve(&f.root, "").unwrap(), croot);
        assert_eq!(resolve(&f.root, "src/").unwrap(), croot.join("src"));
    }

    #[test]
    fn parent_references_in_any_form_are_forbidden() {
        let f = fixture();
        for p in [
            "..",
            "../outside/secret.txt",
            "a/../..",
            "src/../README.md",
            "src/nested/../../..",
            "./..",
            "src/..",
        ] {
            assert!(forbidden(resolve(&f.root, p)), "{p} must be forbidden");
        }
    }

    #[test]
    fn backslashes_are_forbidden() {
        let f = fixture();
        for p in [
            "..\\",
            "..\\outside\\secret.txt",
            "src\\main.rs",
            "\\\\server\\share",
        ] {
            assert!(forbidden(resolve(&f.root, p)), "{p} must be forbidden");
        }
    }

    #[test]
    fn encoded_and_double_encoded_separators_and_dots_are_forbidden() {
        let f = fixture();
        for p in [
            "%2e%2e%2f",
            "%2E%2E%2Fsecret",
            "%252e%252e%252f",
            "src%2Fmain.rs",
            "src%2fmain.rs",
            "src%5Cmain.rs",
            "%2e%2e/outside",
            "..%2f",
            "%25",
            "a%00b",
            "%u002e%u002e/",
            "%c0%ae%2e",
        ] {
            assert!(forbidden(resolve(&f.root, p)), "{p} must be forbidden");
        }
    }

    #[test]
    fn harmless_percent_sequences_are_plain_names() {
        let f = fixture();
        fs::write(f.root.join("100%20done.txt"), "x").unwrap();
        assert!(resolve(&f.root, "100%20done.txt").is_ok());
        assert!(matches!(
            resolve(&f.root, "50%off"),
            Err(PathError::NotFound)
        ));
    }

    #[test]
    fn absolute_paths_are_forbidden() {
        let f = fixture();
        let abs = f.outside.join("secret.txt");
        for p in [
            "/etc/passwd",
            "C:\\Windows",
            "C:/Windows",
            "c:",
            abs.to_str().unwrap(),
        ] {
            assert!(forbidden(resolve(&f.root, p)), "{p} must be forbidden");
        }
    }

    #[test]
    fn nul_bytes_are_forbidden() {
        let f = fixture();
        assert!(forbidden(resolve(&f.root, "README.md\0.txt")));
        assert!(forbidden(resolve(&f.root, "\0")));
    }

    #[test]
    fn missing_paths_are_not_found() {
        let f = fixture();
        assert!(matches!(
            resolve(&f.root, "nope.txt"),
            Err(PathError::NotFound)
        ));
        assert!(matches!(
            resolve(&f.root, "src/main.rs/below"),
            Err(PathError::NotFound)
        ));
        assert!(matches!(
            resolve(&f.root, "missing/dir/file"),
            Err(PathError::NotFound)
        ));
    }

    #[test]
    fn symlink_to_a_file_outside_the_root_is_forbidden() {
        let f = fixture();
        symlink(f.outside.join("secret.txt"), f.root.join("escape.txt")).unwrap();
        assert!(forbidden(resolve(&f.root, "escape.txt")));
    }

    #[test]
    fn symlinked_directory_leaving_the_root_is_forbidden_for_paths_below_it() {
        let f = fixture();
        symlink(&f.outside, f.root.join("src/out")).unwrap();
        assert!(forbidden(resolve(&f.root, "src/out")));
        assert!(forbidden(resolve(&f.root, "src/out/secret.txt")));
        assert!(forbidden(resolve(&f.root, "src/out/missing.txt")));
    }

    #[test]
    fn relative_symlink_climbing_out_is_forbidden() {
        let f = fixture();
        symlink("../../outside", f.root.join("src/up")).unwrap();
        assert!(forbidden(resolve(&f.root, "src/up/secret.txt")));
    }

    #[test]
    fn dangling_symlink_pointing_outside_is_forbidden_and_inside_is_not_found() {
        let f = fixture();
        symlink(f.outside.join("ghost"), f.root.join("ghost_out")).unwrap();
        symlink("ghost_target", f.root.join("ghost_in")).unwrap();
        assert!(forbidden(resolve(&f.root, "ghost_out")));
        assert!(matches!(
            resolve(&f.root, "ghost_in"),
            Err(PathError::NotFound)
        ));
    }

    #[test]
    fn symlink_loops_are_forbidden() {
        let f = fixture();
        symlink("loop_b", f.root.join("loop_a")).unwrap();
        symlink("loop_a", f.root.join("loop_b")).unwrap();
        assert!(forbidden(resolve(&f.root, "loop_a")));
    }

    #[test]
    fn symlinks_that_stay_inside_the_root_resolve_to_their_target() {
        let f = fixture();
        symlink("src/main.rs", f.root.join("main_link")).unwrap();
        symlink("nested", f.root.join("src/n")).unwrap();
        let croot = fs::canonicalize(&f.root).unwrap();
        assert_eq!(
            resolve(&f.root, "main_link").unwrap(),
            croot.join("src/main.rs")
        );
        assert_eq!(
            resolve(&f.root, "src/n/deep.txt").unwrap(),
            croot.join("src/nested/deep.txt")
        );
    }

    #[test]
    fn a_root_reached_through_a_symlink_still_confines_paths() {
        let f = fixture();
        let link_root = f.root.parent().unwrap().join("root_link");
        symlink(&f.root, &link_root).unwrap();
        assert!(resolve(&link_root, "src/main.rs").is_ok());
        symlink(f.outside.join("secret.txt"), f.root.join("esc")).unwrap();
        assert!(forbidden(resolve(&link_root, "esc")));
    }

    #[test]
    fn missing_root_is_not_found() {
        let f = fixture();
        assert!(matches!(
            resolve(&f.root.join("no_such_root"), "a"),
            Err(PathError::NotFound)
        ));
    }

    #[test]
    fn write_resolution_refuses_a_final_symlink_leaving_the_root() {
        let f = fixture();
        symlink(f.outside.join("secret.txt"), f.root.join("out.txt")).unwrap();
        symlink(f.outside.join("new.txt"), f.root.join("dangling.txt")).unwrap();
        assert!(forbidden(resolve_for_write(&f.root, "out.txt", false)));
        assert!(forbidden(resolve_for_write(&f.root, "dangling.txt", false)));
        assert!(forbidden(resolve_for_write(&f.root, "../x.txt", true)));
        assert!(forbidden(resolve_for_write(&f.root, "%2e%2e%2fx", true)));
    }

    #[test]
    fn write_resolution_accepts_new_files_and_refuses_directories() {
        let f = fixture();
        let croot = fs::canonicalize(&f.root).unwrap();
        assert_eq!(
            resolve_for_write(&f.root, "src/new.rs", false).unwrap(),
            croot.join("src/new.rs")
        );
        assert!(matches!(
            resolve_for_write(&f.root, "src", false),
            Err(PathError::NotAFile)
        ));
        assert!(matches!(
            resolve_for_write(&f.root, "", false),
            Err(PathError::Invalid(_))
        ));
        assert!(matches!(
            resolve_for_write(&f.root, "a/b/c.txt", false),
            Err(PathError::NotFound)
        ));
    }

    #[tokio::test]
    async fn write_text_creates_parents_and_replaces_atomically() {
        let f = fixture();
        let out = write_text(f.root.clone(), "gen/sub/out.txt", "one".into(), 100, true)
            .await
            .unwrap();
        assert!(out.created);
        assert_eq!(out.path, "gen/sub/out.txt");
        let out = write_text(f.root.clone(), "gen/sub/out.txt", "two".into(), 100, true)
            .await
            .unwrap();
        assert!(!out.created);
        assert_eq!(
            fs::read_to_string(f.root.join("gen/sub/out.txt")).unwrap(),
            "two"
        );
        let leftovers: Vec<_> = fs::read_dir(f.root.join("gen/sub")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary files left behind");
    }

    #[tokio::test]
    async fn write_text_never_writes_outside_through_symlinked_dirs() {
        let f = fixture();
        symlink(&f.outside, f.root.join("out")).unwrap();
        let r = write_text(f.root.clone(), "out/planted.txt", "x".into(), 100, true).await;
        assert!(matches!(r, Err(PathError::Forbidden(_))));
        assert!(!f.outside.join("planted.txt").exists());
        let r = write_text(f.root.clone(), "big.txt", "x".repeat(101), 100, true).await;
        assert!(matches!(r, Err(PathError::TooLarge { .. })));
    }

    #[tokio::test]
    async fn read_text_returns_path_size_and_content() {
        let f = fixture();
        let c = read_text(f.root.clone(), "./src/main.rs", 1024)
            .await
            .unwrap();
        assert_eq!(
            c,
            FileContent {
                path: "src/main.rs".into(),
                size: 13,
                content: "fn main() {}\n".into()
            }
        );
    }

    #[tokio::test]
    async fn read_text_refuses_binary_large_and_directories() {
        let f = fixture();
        fs::write(f.root.join("bin.dat"), [0x89, b'P', b'N', b'G', 0, 1]).unwrap();
        fs::write(f.root.join("latin1.txt"), [b'c', b'a', 0xe9]).unwrap();
        fs::write(f.root.join("big.txt"), "x".repeat(2000)).unwrap();
        assert!(matches!(
            read_text(f.root.clone(), "bin.dat", 1024).await,
            Err(PathError::NotText)
        ));
        assert!(matches!(
            read_text(f.root.clone(), "latin1.txt", 1024).await,
            Err(PathError::NotText)
        ));
        assert!(matches!(
            read_text(f.root.clone(), "big.txt", 1024).await,
            Err(PathError::TooLarge {
                size: 2000,
                max: 1024
            })
        ));
        assert!(matches!(
            read_text(f.root.clone(), "src", 1024).await,
            Err(PathError::NotAFile)
        ));
    }

    #[tokio::test]
    async fn read_text_through_an_escaping_symlink_reads_nothing() {
        let f = fixture();
        symlink(f.outside.join("secret.txt"), f.root.join("s")).unwrap();
        assert!(matches!(
            read_text(f.root.clone(), "s", 1024).await,
            Err(PathError::Forbidden(_))
        ));
    }

    #[tokio::test]
    async fn list_tree_is_bounded_and_never_follows_symlinks() {
        let f = fixture();
        symlink(&f.outside, f.root.join("zz_out")).unwrap();
        let t = list_tree(f.root.clone(), "", 5, 100).await.unwrap();
        let paths: Vec<_> = t.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "README.md",
                "src",
                "zz_out",
                "src/main.rs",
                "src/nested",
                "src/nested/deep.txt"
            ]
        );
        assert!(!t.truncated);
        assert_eq!(t.entries[2].kind, EntryKind::Symlink);
        assert!(!paths.iter().any(|p| p.contains("secret")));

        let shallow = list_tree(f.root.clone(), "", 1, 100).await.unwrap();
        assert_eq!(shallow.entries.len(), 3);
        let capped = list_tree(f.root.clone(), "", 5, 2).await.unwrap();
        assert_eq!(capped.entries.len(), 2);
        assert!(capped.truncated);
        let sub = list_tree(f.root.clone(), "src", 1, 100).await.unwrap();
        assert_eq!(sub.entries.len(), 2);
        assert!(matches!(
            list_tree(f.root.clone(), "zz_out", 5, 100).await,
            Err(PathError::Forbidden(_))
        ));
        assert!(matches!(
            list_tree(f.root.clone(), "README.md", 5, 100).await,
            Err(PathError::NotADirectory)
        ));
    }

    fn mkfifo(path: &Path) {
        let ok = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mkfifo {}", path.display());
    }

    /// Runs `f` on its own thread and fails the test if it has not answered within `secs`
    /// (a blocked `open` would otherwise hang the test forever).
    fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(std::time::Duration::from_secs(secs))
            .expect("answered in time")
    }

    #[test]
    fn a_fifo_is_refused_at_once_and_never_blocks_reading_or_listing() {
        let f = fixture();
        mkfifo(&f.root.join("pipe"));
        mkfifo(&f.root.join("src/nested/pipe2"));
        let root = f.root.clone();
        let read = within(10, move || read_text_blocking(&root, "pipe", 1024));
        assert!(matches!(read, Err(PathError::NotRegularFile)), "{read:?}");
        assert_eq!(PathError::NotRegularFile.code(), "not_a_regular_file");
        assert_eq!(PathError::NotRegularFile.kind(), ErrorKind::Validation);
        // Through a symlink that stays inside the root: the same.
        symlink("src/nested/pipe2", f.root.join("pipe_link")).unwrap();
        let root = f.root.clone();
        let read = within(10, move || read_text_blocking(&root, "pipe_link", 1024));
        assert!(matches!(read, Err(PathError::NotRegularFile)), "{read:?}");
        let root = f.root.clone();
        let tree = within(10, move || list_tree_blocking(&root, "", 5, 100)).unwrap();
        let pipe = tree.entries.iter().find(|e| e.path == "pipe").unwrap();
        assert_eq!(pipe.kind, EntryKind::Other);
        assert!(tree.entries.iter().any(|e| e.path == "src/nested/pipe2"));
        // Writing over a FIFO replaces it (rename), it never opens it.
        let root = f.root.clone();
        within(10, move || {
            write_text_blocking(&root, "pipe", "x", 100, false)
        })
        .unwrap();
        assert_eq!(fs::read_to_string(f.root.join("pipe")).unwrap(), "x");
    }

    #[test]
    fn a_unix_socket_is_not_a_regular_file() {
        let f = fixture();
        let _sock = std::os::unix::net::UnixListener::bind(f.root.join("sock")).unwrap();
        let root = f.root.clone();
        let read = within(10, move || read_text_blocking(&root, "sock", 1024));
        assert!(matches!(read, Err(PathError::NotRegularFile)), "{read:?}");
    }

    #[test]
    fn path_errors_map_to_their_codes() {
        assert_eq!(PathError::Forbidden("x").code(), "path_forbidden");
        assert_eq!(PathError::Forbidden("x").kind(), ErrorKind::Forbidden);
        assert_eq!(PathError::NotFound.kind(), ErrorKind::NotFound);
    }
}
